"""Claim 12 (an extension): the paper's mechanism, judged from the runs' starvation counters, on run
directories whose counters are set by hand, so that each metric is known in closed form."""
import numpy as np
import pandas as pd
import pytest

from multirun_analysis.mechanism import BOUND_12B, MARGIN_12A, claim_12, run_mechanism

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
    table = claim_12(pd.DataFrame(runs, columns=["optimizer", "regularizer", "coefficient", "seed", "run_dir"]))
    verdicts = {(row.part, row.setting.split("optimizer=")[1].split(",")[0]): row for row in table.itertuples()}
    assert set(verdicts) == {("12a", "adam"), ("12a", "adamax"), ("12b", "sgd")}
    assert (table["scope"] == "extension").all() and (table["n"] == 3).all()
    adam, adamax, sgd = verdicts["12a", "adam"], verdicts["12a", "adamax"], verdicts["12b", "sgd"]
    assert adam.estimate == pytest.approx(65.0) and adam.margin == MARGIN_12A and adam.verdict == "holds"
    assert adam.ci_low > MARGIN_12A
    assert adamax.estimate == pytest.approx(-45.0) and adamax.verdict == "contradicted" and adamax.ci_high < 0
    assert sgd.estimate == 0.0 and sgd.margin == BOUND_12B and sgd.verdict == "holds"


def test_a_cell_whose_features_never_die_is_not_applicable(tmp_path):
    runs = [("adam", "l2", 1e-4, 0, write_run(tmp_path / "adam", [3] * 4, [-1] * 4, [1] * 4))]
    table = claim_12(pd.DataFrame(runs, columns=["optimizer", "regularizer", "coefficient", "seed", "run_dir"]))
    assert table["verdict"].tolist() == ["not applicable"] and table["note"].tolist() == ["no feature died"]


def test_one_run_per_cell_has_no_interval(tmp_path):
    runs = [("adam", "l2", 1e-4, 0, dead_and_survivors(tmp_path / "adam", 0.8, 0.2))]
    row = claim_12(pd.DataFrame(runs, columns=["optimizer", "regularizer", "coefficient", "seed", "run_dir"])).iloc[0]
    assert row["verdict"] == "inconclusive" and row["estimate"] == pytest.approx(60.0) and np.isnan(row["ci_low"])
