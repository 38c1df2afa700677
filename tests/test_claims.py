"""`python -m multirun_analysis claims`: on a real smoke sweep every claim gets a row with a valid verdict; on
results.json files edited by hand, where the verdict is known, each branch of the rule and its boundaries
(exactly 2 points, exactly twice the pooled std, one seed, no seed in common, no runs)."""
import copy
import csv
import io
import json
import math
import subprocess
import sys

import pytest

from conftest import ROOT, SMOKE, cli
from multirun_analysis import claims
from multirun_analysis.__main__ import main
from multirun_analysis.load import load_runs

HOLDS, CONTRADICTED, INCONCLUSIVE, NO_RUNS = claims.HOLDS, claims.CONTRADICTED, claims.INCONCLUSIVE, claims.NO_RUNS
NUMBERS = [claim.number for claim in claims.CLAIMS]
TODAYS = ("adamw", "nadam", "radam", "adafactor")  # the optimizers after the paper's


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Adam and SGD with L2 1e-3 at smoke size: two real run directories."""
    root = tmp_path_factory.mktemp("claims")
    code, output = cli("sparsesweep", "-m", *SMOKE, "optimizer=adam,sgd", "regularizer.l2=1e-3",
                       f"hydra.sweep.dir={root}/sweep", cwd=root)
    assert code == 0, output
    return root / "sweep"


@pytest.fixture(scope="module")
def real(sweep):
    """{optimizer: its results.json}: the templates the hand-built runs are edited from."""
    return {path.parent.name.split("optimizer=")[1].split(",")[0]: json.loads(path.read_text())
            for path in sweep.rglob("results.json")}


def parse_csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


# ---- the real sweep --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_smoke_sweep_gets_one_row_or_more_per_claim_each_with_a_valid_verdict(sweep):
    code, output = cli("multirun_analysis", "claims", str(sweep), "--format", "csv", cwd=sweep)
    assert code == 0, output
    rows = parse_csv(output)
    assert {"claim", "statement", "setting", "cell_a", "a_mean", "a_std", "a_n", "cell_b", "b_mean", "b_n",
            "difference", "threshold", "verdict", "note"} <= set(rows[0])
    assert sorted({row["claim"] for row in rows}, key=NUMBERS.index) == NUMBERS
    assert all(row["verdict"] in claims.VERDICTS for row in rows)
    by_claim = {number: [row for row in rows if row["claim"] == number] for number in NUMBERS}
    # What the sweep holds decides which claims it speaks to, not what 60 steps of training gave.
    (first,) = by_claim["1"]
    assert (first["cell_a"], first["a_n"], first["cell_b"], first["b_n"]) == ("adam", "1", "sgd", "1")
    assert "0.001" in first["setting"] and first["verdict"] != NO_RUNS
    (selective,) = by_claim["10a"]
    assert (selective["cell_a"], selective["cell_b"]) == ("adam", "sgd")
    assert [row["verdict"] for row in by_claim["7"]] in ([HOLDS], [CONTRADICTED])
    assert [row["cell_a"] for row in by_claim["9"]] == ["C5–C7"]  # the SGD run is not adaptive
    for number in ("2", "3", "4", "5", "6", "8", "10b"):
        assert [row["verdict"] for row in by_claim[number]] == [NO_RUNS], number


@pytest.mark.slow
def test_terminal_and_markdown_formats_and_the_exit_codes(sweep, capsys):
    assert main(["claims", str(sweep)]) == 0
    terminal = capsys.readouterr().out
    assert "adam: " in terminal and "sgd: " in terminal and "no runs" in terminal
    assert main(["claims", str(sweep), "--format", "markdown"]) == 0
    markdown = capsys.readouterr().out.splitlines()
    assert markdown[0].startswith("| claim | statement | setting | a | b |") and markdown[1].startswith("|---|")
    assert len(markdown[2].split(" | ")) == len(markdown[0].split(" | "))  # no stray pipe in a cell
    assert main(["claims", str(sweep / "missing")]) == 2
    with pytest.raises(SystemExit) as bad_format:
        main(["claims", str(sweep), "--format", "latex"])
    assert bad_format.value.code == 2


def test_the_package_still_never_imports_torch_or_the_trainer():
    code = ("import sys, multirun_analysis.__main__, multirun_analysis.claims; "
            "assert not {'torch', 'sparsesweep'} & set(sys.modules), sorted(sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert done.returncode == 0, done.stderr


# ---- hand-built runs ------------------------------------------------------------------------------------

def put(tree: dict, dotted: str, value):
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


class Runs:
    """A folder of run directories, each a results.json copied from a real run and edited."""

    def __init__(self, root, real):
        self.root, self.real, self.count = root, real, 0

    def add(self, optimizer="adam", seed=0, sparsity=0.0, config=(), nested=(), **top):
        """A copy of the real `optimizer` run; `config`: {dotted key: value} in its config, `nested`: elsewhere
        in its results.json; `top`: its top-level keys (test_error, dataset, ...)."""
        results = copy.deepcopy(self.real[optimizer])
        self.count += 1
        results.update(run_id=f"hand-built-{self.count}", seed=seed, **top)
        for key, value in {"sparsity.by_gamma.total_pct": sparsity, "config.seed": seed,
                           **{f"config.{k}": v for k, v in dict(config).items()}, **dict(nested)}.items():
            put(results, key, value)
        run_dir = self.root / f"run{self.count}"
        run_dir.mkdir()
        (run_dir / "results.json").write_text(json.dumps(results))
        return results

    def pair(self, a, b, a_optimizer="adam", b_optimizer="sgd", **edits):
        """Side a and side b of claim 1 (L2 1e-3): one run per sparsity value, seeds 0, 1, ..."""
        for optimizer, values in ((a_optimizer, a), (b_optimizer, b)):
            for seed, sparsity in enumerate(values):
                self.add(optimizer, seed, sparsity, **edits)
        return self

    def rows(self, number):
        verdicts = claims.check(load_runs([self.root], completed_only=True))
        return verdicts[verdicts["claim"] == number].to_dict("records")


@pytest.fixture
def runs(tmp_path, real):
    return Runs(tmp_path, real)


def verdicts(rows):
    return [row["verdict"] for row in rows]


# Seeds of std exactly 1.5 (three values s apart: variance (s^2 + 0 + s^2) / 2 = s^2), so twice the pooled
# std is exactly 3; and values whose decimals make exactly 2 points.
@pytest.mark.parametrize("a, b, verdict", [
    ([14.0, 15.5, 17.0], [10.5, 12.0, 13.5], HOLDS),          # 3.5 > 2 x pooled std 1.5
    ([10.5, 12.0, 13.5], [14.0, 15.5, 17.0], CONTRADICTED),   # -3.5
    ([13.5, 15.0, 16.5], [10.5, 12.0, 13.5], INCONCLUSIVE),   # exactly 2 x pooled std: does not exceed it
    ([13.0, 14.5, 16.0], [10.5, 12.0, 13.5], INCONCLUSIVE),   # 2.5: over 2 points, within twice the std
    ([12.0, 12.5, 13.0], [10.0, 10.5, 11.0], INCONCLUSIVE),   # exactly 2 points, std 0.5: 2 points decide
    ([12.5, 13.0, 13.5], [10.0, 10.5, 11.0], HOLDS),          # 2.5 points, twice the std only 1
    ([12.1], [10.1], INCONCLUSIVE),                           # one seed: exactly 2 points (12.1 - 10.1)
    ([12.2], [10.1], HOLDS),                                  # one seed: 2.1 points
    ([8.0], [10.1], CONTRADICTED),                            # one seed: -2.1 points
])
@pytest.mark.slow
def test_the_verdict_rule_and_its_boundaries(runs, a, b, verdict):
    (row,) = runs.pair(a, b).rows("1")
    assert (row["cell_a"], row["cell_b"], row["a_n"], row["b_n"]) == ("adam", "sgd", len(a), len(b))
    assert row["verdict"] == verdict
    assert row["note"] == ("within noise" if verdict == INCONCLUSIVE else "")
    assert row["a_mean"] - row["b_mean"] == pytest.approx(row["difference"])


@pytest.mark.slow
def test_the_threshold_is_2_points_or_twice_the_pooled_std(runs):
    (row,) = runs.pair([13.0, 14.5, 16.0], [10.5, 12.0, 13.5]).rows("1")
    assert (row["threshold"], row["a_std"], row["b_std"]) == (3.0, 1.5, 1.5)
    other = Runs(runs.root / "one-seed", runs.real)
    other.root.mkdir()
    (row,) = other.pair([30.0], [10.0]).rows("1")
    assert row["threshold"] == 2.0 and math.isnan(row["a_std"])  # one seed: no std


@pytest.mark.slow
def test_sides_are_compared_over_the_seeds_both_ran(runs):
    (row,) = runs.pair([20.0, 22.0, 90.0], [10.0]).rows("1")
    assert (row["a_n"], row["b_n"], row["a_mean"], row["verdict"]) == (1, 1, 20.0, HOLDS)
    assert row["note"] == "left out: seed 1, 2 (adam only)"


@pytest.mark.slow
def test_no_seed_in_common_is_too_few_runs(runs):
    runs.add("adam", seed=0, sparsity=50.0)
    runs.add("sgd", seed=1, sparsity=0.0)
    (row,) = runs.rows("1")
    assert row["verdict"] == INCONCLUSIVE and row["note"].startswith("too few runs: no seed in common")


@pytest.mark.slow
def test_no_runs_when_nothing_can_be_compared(runs, tmp_path_factory):
    runs.add("adam", sparsity=50.0)
    runs.add("sgd", sparsity=0.0, config={"dataset.resolution": 32})  # not alike: another input size
    (row,) = runs.rows("1")
    assert row["verdict"] == NO_RUNS and "2 cell(s) here without a counterpart" in row["note"]
    empty = claims.check(load_runs([tmp_path_factory.mktemp("empty")], completed_only=True))
    assert list(empty["claim"]) == NUMBERS and set(empty["verdict"]) == {NO_RUNS}


@pytest.mark.slow
def test_claim_1_is_per_coefficient_and_names_cells_that_differ_only_in_the_lr(runs):
    runs.pair([40.0], [0.0])
    runs.pair([1.0], [30.0], coefficient=1e-4, config={"regularizer.l2": 1e-4})
    runs.add("adam", sparsity=10.0, config={"optimizer.lr": 3e-3})
    rows = runs.rows("1")
    assert rows[0]["setting"] == "shapes_clean, basicnet, l2 0.0001, batch 40, 60 steps"
    assert [(row["setting"].split(", ")[2], row["cell_a"], row["verdict"]) for row in rows] == [
        ("l2 0.0001", "adam", CONTRADICTED),
        ("l2 0.001", "adam optimizer.lr=0.001", HOLDS), ("l2 0.001", "adam optimizer.lr=0.003", HOLDS)]


@pytest.mark.slow
def test_skipped_runs_are_reported_as_the_tables_report_them(runs, capsys):
    runs.pair([40.0], [0.0])
    runs.add("adam", seed=3, sparsity=99.0, status="diverged")
    assert main(["claims", str(runs.root), "--format", "csv"]) == 0
    captured = capsys.readouterr()
    (first,) = [row for row in parse_csv(captured.out) if row["claim"] == "1"]
    assert first["a_n"] == "1" and "skipped 1 run(s): status diverged" in captured.err


NO_REGULARIZATION = {"regularizer": "none", "coefficient": 0, "config": {"regularizer": {"name": "none"}}}
LAYERS = ("C1", "C2", "C3", "C4", "C5", "C6", "C7")


@pytest.mark.parametrize("values, verdict", [
    ([1.0, 2.0, 3.0], HOLDS),          # mean exactly 2: no sparsity
    ([2.0], HOLDS),                    # one seed at the bound
    ([2.1], CONTRADICTED),             # one seed above it
    ([2.0, 2.5, 3.0], CONTRADICTED),   # 2.5 > 2 points and > twice the std (1)
    ([1.0, 2.5, 4.0], INCONCLUSIVE),   # 2.5: above 2, within twice the std (3)
])
@pytest.mark.slow
def test_claim_2_no_sparsity_without_regularization(runs, values, verdict):
    for seed, sparsity in enumerate(values):
        runs.add("sgd", seed, sparsity, **NO_REGULARIZATION)
    (row,) = runs.rows("2")
    assert (row["cell_b"], row["a_n"], row["verdict"]) == ("0 % (no sparsity)", len(values), verdict)
    assert "sgd, no regularization" in row["setting"]


@pytest.mark.parametrize("values, verdict", [
    ([3.5], HOLDS), ([9.5, 11.0, 12.5], HOLDS), ([2.0], CONTRADICTED), ([0.0, 1.0, 2.0], CONTRADICTED),
    ([1.0, 2.5, 4.0], INCONCLUSIVE),
])
@pytest.mark.slow
def test_claim_8_leaky_relu_still_sparse(runs, values, verdict):
    for seed, sparsity in enumerate(values):
        runs.add("adam", seed, sparsity, config={"model.negative_slope": 0.1})
    runs.add("adam", 0, 0.0)  # plain ReLU: not a leaky run
    (row,) = runs.rows("8")
    assert (row["cell_a"], row["verdict"]) == ("leaky ReLU 0.1", verdict)


@pytest.mark.parametrize("zeroed, verdict", [
    (10.0, HOLDS), (10.05, HOLDS), (10.0625, HOLDS),
    (10.1, CONTRADICTED),    # exactly 0.1 points (10.1 - 10.0 is 0.0999... in floats): not < 0.1
    (9.875, CONTRADICTED),
])
@pytest.mark.slow
def test_claim_7_zeroing_changes_no_test_error(runs, zeroed, verdict):
    runs.add("adam", test_error=10.0, zeroed_test_error=10.0)
    runs.add("sgd", test_error=10.0, zeroed_test_error=zeroed)
    (row,) = runs.rows("7")
    assert (row["a_n"], row["threshold"], row["verdict"]) == (2, 0.1, verdict)
    assert row["note"] == ("" if verdict == HOLDS else f"1 run(s) at >= 0.1, the most: {runs.root / 'run2'}")


def wd(coefficient):
    return {"regularizer": "wd", "config": {"regularizer": {"name": "wd", "wd": coefficient,
                                                            "exclude_bn_and_bias": False}}}


@pytest.mark.parametrize("l2, weight_decay, verdict", [(30.0, 10.0, HOLDS), (10.0, 30.0, CONTRADICTED),
                                                       (11.0, 10.0, INCONCLUSIVE)])
@pytest.mark.slow
def test_claim_3_l2_sparser_than_weight_decay(runs, l2, weight_decay, verdict):
    runs.add("adam", sparsity=l2)
    runs.add("adam", sparsity=weight_decay, **wd(1e-3))
    runs.add("adam", sparsity=0.0, coefficient=1e-4, **wd(1e-4))  # no L2 run at 1e-4
    (row,) = runs.rows("3")
    assert (row["cell_a"], row["cell_b"], row["verdict"]) == ("l2", "wd", verdict)
    assert "coefficient 0.001" in row["setting"]


def l2(coefficient):
    return {"coefficient": coefficient, "config": {"regularizer.l2": coefficient}}


@pytest.mark.slow
def test_claim_4_each_coefficient_against_the_next_smaller(runs):
    for coefficient, sparsity in ((1e-3, 40.0), (1e-4, 10.0), (1e-5, 9.0), (1e-6, 20.0)):
        runs.add("adam", sparsity=sparsity, **l2(coefficient))
    runs.add("sgd", sparsity=5.0)  # SGD at one coefficient: nothing to compare
    assert [(row["cell_a"], row["cell_b"], row["verdict"]) for row in runs.rows("4")] == [
        ("L2 1e-05", "L2 1e-06", CONTRADICTED), ("L2 0.0001", "L2 1e-05", INCONCLUSIVE),
        ("L2 0.001", "L2 0.0001", HOLDS)]


@pytest.mark.slow
def test_claim_5_smaller_batches_sparser_at_the_same_iterations(runs):
    for batch_size, sparsity in ((20, 30.0), (40, 20.0), (80, 25.0)):
        runs.add("adam", sparsity=sparsity, batch_size=batch_size, config={"batch_size": batch_size})
    runs.add("adam", sparsity=0.0, batch_size=160, iterations=120, config={"batch_size": 160})
    assert [(row["cell_a"], row["cell_b"], row["verdict"]) for row in runs.rows("5")] == [
        ("batch 20", "batch 40", HOLDS), ("batch 40", "batch 80", CONTRADICTED)]  # 160 ran other iterations


@pytest.mark.slow
@pytest.mark.parametrize("clean, cluttered, verdict", [(46.0, 29.0, HOLDS), (29.0, 46.0, CONTRADICTED)])
def test_claim_6_clean_background_sparser(runs, clean, cluttered, verdict):
    runs.add("adam", sparsity=clean)
    runs.add("adam", sparsity=cluttered, dataset="shapes_cluttered",
             config={"dataset.name": "shapes_cluttered", "dataset.background": "cluttered"})
    (row,) = runs.rows("6")
    assert (row["cell_a"], row["cell_b"], row["verdict"]) == ("clean", "cluttered", verdict)


@pytest.mark.parametrize("layers, verdict", [((0, 0, 0, 90, 10, 20, 30), HOLDS),
                                             ((30, 20, 10, 0, 0, 0, 0), CONTRADICTED),
                                             ((1, 1, 1, 50, 2, 2, 2), INCONCLUSIVE)])  # C4, the middle: in neither
@pytest.mark.slow
def test_claim_9_later_layers_sparser(runs, layers, verdict):
    for optimizer in ("adam", "sgd"):
        runs.add(optimizer, nested={"sparsity.by_gamma.per_layer_pct": dict(zip(LAYERS, layers))})
    (row,) = runs.rows("9")  # SGD is not adaptive
    assert (row["cell_a"], row["cell_b"], row["verdict"]) == ("C5–C7", "C1–C3", verdict)


@pytest.mark.slow
def test_claim_10a_adaptive_features_more_selective(runs):
    for optimizer, means in (("adam", (0.5, 0.5, 0.5, 0.5, 0.5, 0.5, None)), ("sgd", (0.25,) * 7)):
        runs.add(optimizer, nested={f"selectivity.per_layer.{layer}.mean_active": mean
                                    for layer, mean in zip(LAYERS, means)})
    (row,) = runs.rows("10a")  # the layer with no active feature (None) counts in no mean
    assert (row["cell_a"], row["a_mean"], row["cell_b"], row["b_mean"], row["verdict"]) == (
        "adam", 50.0, "sgd", 25.0, HOLDS)


@pytest.mark.slow
@pytest.mark.parametrize("wide, narrow, verdict", [(30.0, 10.0, HOLDS), (10.0, 30.0, CONTRADICTED)])
def test_claim_10b_narrower_network_less_sparse(runs, wide, narrow, verdict):
    runs.add("adam", sparsity=wide, config={"model.width_multiplier": 0.25})
    runs.add("adam", sparsity=narrow)  # the smoke width, 0.125
    (row,) = runs.rows("10b")
    assert (row["cell_a"], row["cell_b"], row["verdict"]) == ("width ×0.25", "width ×0.125", verdict)


@pytest.mark.slow
def test_todays_optimizers_train_in_a_smoke_sweep_and_are_extra_rows_of_claims_and_tables(tmp_path):
    sweep = tmp_path / "sweep"
    code, output = cli("sparsesweep", "-m", *SMOKE, "optimizer=sgd,adamw,nadam,radam,adafactor",
                       f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert code == 0 and "All 5 jobs ended: completed 5" in output, output
    code, output = cli("multirun_analysis", "claims", str(sweep), "--format", "csv", cwd=tmp_path)
    assert code == 0, output
    against_sgd = {(row["cell_a"], row["cell_b"]) for row in parse_csv(output) if row["claim"] == "1"}
    assert against_sgd == {(name, "sgd") for name in TODAYS}
    # Table 1 is of CIFAR: the same results, relabelled as CIFAR-10 runs, are its rows beyond the paper's.
    for number, path in enumerate(sorted(sweep.glob("*/results.json"))):
        results = json.loads(path.read_text())
        (tmp_path / "as_cifar" / str(number)).mkdir(parents=True)
        (tmp_path / "as_cifar" / str(number) / "results.json").write_text(json.dumps({**results, "dataset": "cifar10"}))
    code, table = cli("multirun_analysis", "table1", str(tmp_path / "as_cifar"), "--format", "csv", cwd=tmp_path)
    assert code == 0, table
    listed = {row.get("optimizer") for row in parse_csv(table)}
    assert set(TODAYS) <= listed, table
