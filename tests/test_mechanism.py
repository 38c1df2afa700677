"""Claim 12 (an extension): the paper's mechanism, judged from the runs' starvation counters, on run
directories whose counters are set by hand, so that each metric is known in closed form; and its rows in
`python -m multirun_analysis claims`, among the extensions, in every format."""
import csv
import io
import json

import numpy as np
import pandas as pd
import pytest

from conftest import cli
from multirun_analysis import claims
from multirun_analysis.__main__ import main
from multirun_analysis.mechanism import BOUND_12B, MARGIN_12A, NO_COUNTERS, claim_12, run_mechanism
from rundirs import run_id, without_counters
from test_collector_robustness import completed

COLUMNS = ["optimizer", "regularizer", "coefficient", "seed", "run_dir"]

STEPS, EPOCH_ENDS = 100, [0, 50, 100]


def write_run(run_dir, starved, death, starved_at_50):
    """A run of 100 steps in two epochs, one layer C1: final counters, and the starved steps at each epoch end."""
    run_dir.mkdir(parents=True)
    starved, death = np.array(starved), np.array(death)
    np.savez(run_dir / "features.npz", C1_starved_steps=starved, C1_longest_starved=starved, C1_death_step=death,
             C1_gamma=np.ones(len(starved)))
    np.savez(run_dir / "bn_history.npz", step=np.array(EPOCH_ENDS),
             C1_starved_steps=np.stack([np.zeros(len(starved), int), np.array(starved_at_50), starved]))
    return str(run_dir)


def dead_and_survivors(run_dir, dead_share, survivors_share):
    """Feature 0 dies at step 81, starved in `dead_share` of the 80 steps before; features 1-3 survive, starved
    in `survivors_share` of steps 1-50 and of 51-100."""
    before, surviving = round(80 * dead_share), round(50 * survivors_share)
    return write_run(run_dir, [before + 20] + [2 * surviving] * 3, [81, -1, -1, -1],
                     [min(before, 50)] + [surviving] * 3)


def test_a_runs_metrics_follow_from_its_counters(tmp_path):
    metrics = run_mechanism(dead_and_survivors(tmp_path / "run", 0.75, 0.2))
    assert metrics["dead"] == 1 and metrics["steps"] == STEPS
    assert metrics["dead_starved_pct"] == pytest.approx(75.0)
    assert metrics["survivors_starved_pct"] == pytest.approx(20.0)  # over steps 1-50, the last epoch end before 81
    assert metrics["difference_pts"] == pytest.approx(55.0)
    assert metrics["starved_features"] == 4 and metrics["starved_died_pct"] == pytest.approx(25.0)


def test_claim_12_is_judged_per_cell_with_the_claims_statistics(tmp_path):
    runs = []
    for seed, (adam, adamax) in enumerate([(0.80, 0.10), (0.85, 0.15), (0.90, 0.20)]):
        runs.append(("adam", "l2", 1e-4, seed, dead_and_survivors(tmp_path / f"adam{seed}", adam, 0.2)))
        runs.append(("adamax", "l2", 1e-4, seed, dead_and_survivors(tmp_path / f"adamax{seed}", adamax, 0.6)))
        # SGD: ten features starved now and then, none dies
        runs.append(("sgd", "l2", 1e-4, seed, write_run(tmp_path / f"sgd{seed}", [5 + seed] * 10, [-1] * 10,
                                                        [2] * 10)))
        # without L2: no part of claim 12
        runs.append(("sgd", "none", 0.0, seed, write_run(tmp_path / f"plain{seed}", [1] * 10, [-1] * 10, [0] * 10)))
    table = claim_12(pd.DataFrame(runs, columns=COLUMNS))
    verdicts = {(row.claim, row.setting.split("optimizer=")[1].split(",")[0]): row for row in table.itertuples()}
    assert set(verdicts) == {("12a", "adam"), ("12a", "adamax"), ("12b", "sgd")}
    assert (table["scope"] == "extension").all() and (table["n"] == 3).all()
    adam, adamax, sgd = verdicts["12a", "adam"], verdicts["12a", "adamax"], verdicts["12b", "sgd"]
    assert adam.estimate == pytest.approx(65.0) and adam.margin == MARGIN_12A and adam.verdict == "holds"
    assert adam.ci_low > MARGIN_12A
    assert adamax.estimate == pytest.approx(-45.0) and adamax.verdict == "contradicted" and adamax.ci_high < 0
    assert sgd.estimate == 0.0 and sgd.margin == BOUND_12B and sgd.verdict == "holds"


def test_a_cell_whose_features_never_die_is_not_applicable(tmp_path):
    runs = [("adam", "l2", 1e-4, 0, write_run(tmp_path / "adam", [3] * 4, [-1] * 4, [1] * 4))]
    table = claim_12(pd.DataFrame(runs, columns=COLUMNS))
    assert table["verdict"].tolist() == ["not applicable", "no runs"]  # 12b: no SGD run
    assert table["note"].tolist() == ["no feature died", "needs SGD + L2 runs with starvation counters"]


def test_one_run_per_cell_has_no_interval(tmp_path):
    runs = [("adam", "l2", 1e-4, 0, dead_and_survivors(tmp_path / "adam", 0.8, 0.2))]
    row = claim_12(pd.DataFrame(runs, columns=COLUMNS)).iloc[0]
    assert row["verdict"] == "inconclusive" and row["estimate"] == pytest.approx(60.0) and np.isnan(row["ci_low"])


def test_runs_from_before_the_counters_add_nothing_and_alone_give_no_runs(tmp_path):
    counted = [("adam", "l2", 1e-4, seed, dead_and_survivors(tmp_path / f"adam{seed}", 0.8, 0.2)) for seed in (0, 1)]
    older = [("adam", "l2", 1e-4, 2, str(without_counters(dead_and_survivors(tmp_path / "old", 0.1, 0.2)))),
             ("sgd", "l2", 1e-4, 0, str(without_counters(dead_and_survivors(tmp_path / "old_sgd", 0.1, 0.2))))]
    truncated = dead_and_survivors(tmp_path / "torn", 0.1, 0.2)
    (tmp_path / "torn" / "features.npz").write_bytes((tmp_path / "torn" / "features.npz").read_bytes()[:100])
    table = claim_12(pd.DataFrame(counted + older + [("adam", "l2", 1e-4, 3, truncated)], columns=COLUMNS))
    adam, sgd = table.to_dict("records")
    assert (adam["claim"], adam["n"], adam["estimate"]) == ("12a", 2, pytest.approx(60.0))  # seeds 2, 3 left out
    assert adam["note"].startswith(f"2 of 4 runs left out: {NO_COUNTERS}")
    assert (sgd["claim"], sgd["verdict"]) == ("12b", "no runs")
    assert sgd["note"] == f"needs SGD + L2 runs with starvation counters; 1 cell(s) here, their runs without " \
                          f"counters: {NO_COUNTERS}"
    assert claim_12(pd.DataFrame())[["claim", "verdict"]].values.tolist() == [["12a", "no runs"], ["12b", "no runs"]]


def sweep(root, runs):
    """Run directories with a completed results.json each (optimizer, coefficient, seed), counters by hand."""
    for name, optimizer, coefficient, seed, counters in runs:
        counters(root / name)
        results = completed(run_id(name), [f"optimizer={optimizer}", f"seed={seed}"], optimizer=optimizer,
                            coefficient=coefficient, regularizer="l2" if coefficient else "none", seed=seed)
        (root / name / "results.json").write_text(json.dumps(results))
    return root


def test_claims_shows_claim_12_among_the_extensions_in_every_format(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # a row, a line
    root = sweep(tmp_path / "sweep", [
        *((f"adam{seed}", "adam", 1e-4, seed, lambda d, s=share: dead_and_survivors(d, s, 0.2))
          for seed, share in enumerate((0.80, 0.85, 0.90))),                               # 12a: 65 [58.8, 71.2]
        ("sgd0", "sgd", 1e-4, 0, lambda d: write_run(d, [5] * 10, [-1] * 10, [2] * 10)),  # 12b: 0 %, one seed
        ("plain", "adam", 0, 0, lambda d: write_run(d, [1] * 4, [-1] * 4, [0] * 4))])     # no L2: neither part
    code, output = cli("multirun_analysis", "claims", str(root), "--format", "csv", cwd=tmp_path, stderr=False)
    assert code == 0, output
    rows = list(csv.DictReader(io.StringIO(output)))
    assert list(rows[0]) == list(claims.COLUMNS)
    twelve = {row["claim"]: row for row in rows if row["claim"].startswith("12")}
    assert {row["scope"] for row in twelve.values()} == {"extension"}
    assert (twelve["12a"]["cell_a"], twelve["12a"]["a_n"], twelve["12a"]["verdict"]) == ("adam", "3", "holds")
    assert float(twelve["12a"]["estimate"]) == pytest.approx(65.0) and float(twelve["12a"]["margin"]) == MARGIN_12A
    assert (twelve["12b"]["cells"], twelve["12b"]["verdict"]) == ("sgd: 0.0 (1)", "inconclusive")

    assert main(["claims", str(root)]) == 0
    terminal = capsys.readouterr().out
    paper, _, extensions = terminal.partition("Extensions: what the paper never claimed")
    assert "12a" not in paper and "12a. adaptive + L2: the features that die were starved more" in extensions
    assert "adam: 65.0 ±5.0 (3)" in extensions and "65.0 [52.6, 77.4]" in extensions
    counts = terminal.splitlines()[-1]
    # 12a holds; 12b: inconclusive; 11 (Adam vs SGD): not converged, these histories holding no γ to level off
    assert counts.endswith("; 3 of extensions: 1 holds, 1 inconclusive, 1 not converged")

    assert main(["claims", str(root), "--format", "markdown"]) == 0
    markdown = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 12")]
    assert [line.split(" | ")[0] for line in markdown] == ["| 12a", "| 12b"]
    assert all(len(line.split(" | ")) == 10 and " | extension | " in line for line in markdown)
    assert main(["claims", "--paper", "--format", "csv"]) == 0  # the paper's tables hold no counters
    paper_rows = [row for row in csv.DictReader(io.StringIO(capsys.readouterr().out)) if row["claim"].startswith("12")]
    assert [(row["claim"], row["verdict"]) for row in paper_rows] == [("12a", "no runs"), ("12b", "no runs")]
