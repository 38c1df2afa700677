"""`python -m multirun_analysis claims`: on a real smoke sweep every claim gets a row with a valid verdict; on
copies of one real run with results edited by hand, where the verdict is known, each branch of the rule and its
boundaries: the t-interval over seeds in closed form (df 1 and 2), an interval touching the threshold, one
seed (no interval), no seed in common, no runs."""
import csv
import io
import json
import math
import statistics
import subprocess
import sys

import pytest

from conftest import CONF, ROOT, SMOKE, cli
from multirun_analysis import claims
from multirun_analysis.__main__ import main
from multirun_analysis.load import load_runs
from rundirs import Sweep, train_smoke_run

HOLDS, CONTRADICTED, INCONCLUSIVE, NO_RUNS = claims.HOLDS, claims.CONTRADICTED, claims.INCONCLUSIVE, claims.NO_RUNS
NUMBERS = [claim.number for claim in claims.CLAIMS]
TODAYS = ("adamw", "nadam", "radam", "adafactor")  # the optimizers after the paper's
# Student's t quantiles at 0.975 in closed form: df 1 (Cauchy) tan(pi (p - 1/2)); df 2 (2p - 1) / sqrt(2p(1 - p)).
T1 = math.tan(math.pi * (0.975 - 0.5))
T2 = (2 * 0.975 - 1) / math.sqrt(2 * 0.975 * (1 - 0.975))


@pytest.fixture(autouse=True)
def columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """One real run: Adam, L2 1e-3, at smoke size, trained in this process."""
    return train_smoke_run(tmp_path_factory.mktemp("claims") / "template")


def parse_csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


class Runs(Sweep):
    """Hand-edited copies of the template run; rows(number): that claim's verdict rows."""

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
def runs(tmp_path, template):
    return Runs(tmp_path / "runs", template)


# ---- the rule: paired over seeds, a t-interval against the threshold -----------------------------------------

SIDE_B = [10.0, 20.0, 30.0]  # far apart: only pairing by seed makes a difference of a few points visible


@pytest.mark.parametrize("differences, verdict, half_width", [
    ([6.0, 7.0, 8.0], HOLDS, T2 / math.sqrt(3)),             # [4.52, 9.48]: above 2
    ([-8.0, -7.0, -6.0], CONTRADICTED, T2 / math.sqrt(3)),   # [-9.48, -4.52]: below 2
    ([0.0, 0.5, 1.0], CONTRADICTED, T2 * 0.5 / math.sqrt(3)),  # [-0.74, 1.74]: surely less than 2 points
    ([3.0, 4.0, 5.0], INCONCLUSIVE, T2 / math.sqrt(3)),      # [1.52, 6.48] contains 2
    ([2.0, 2.0, 2.0], INCONCLUSIVE, 0.0),                     # [2, 2]: touches the threshold, does not exceed it
    ([2.1, 2.1, 2.1], HOLDS, 0.0),                            # [2.1, 2.1]
    ([1.9, 1.9, 1.9], CONTRADICTED, 0.0),                     # [1.9, 1.9]
    ([20.0, 20.5], HOLDS, T1 * 0.25),                         # two seeds: s = 0.5 / sqrt 2, half = T1 s / sqrt 2
    ([3.0, 5.0], INCONCLUSIVE, T1 * 1.0),                     # two seeds: [-8.7, 16.7]
])
def test_the_verdict_is_the_t_interval_of_the_paired_differences_against_2_points(runs, differences, verdict,
                                                                                   half_width):
    b = SIDE_B[:len(differences)]
    (row,) = runs.pair([x + d for x, d in zip(b, differences)], b).rows("1")
    mean = sum(differences) / len(differences)
    assert (row["cell_a"], row["cell_b"], row["seeds"], row["threshold"]) == ("adam", "sgd", len(differences), 2.0)
    assert row["difference"] == pytest.approx(mean)
    assert row["ci_low"] == pytest.approx(mean - half_width) and row["ci_high"] == pytest.approx(mean + half_width)
    assert row["verdict"] == verdict
    assert row["note"] == ("the interval contains the threshold" if verdict == INCONCLUSIVE else "")


def test_bounds_are_compared_as_their_decimals_say(runs):
    # 2.3 - 0.3 is 1.9999999999999998 in floats: exactly 2 points, so the interval [2, 2] touches the threshold.
    (row,) = runs.pair([2.3] * 3, [0.3] * 3).rows("1")
    assert row["ci_high"] < 2.0 and row["verdict"] == INCONCLUSIVE


def test_one_seed_in_common_gives_no_interval_and_no_verdict(runs):
    (row,) = runs.pair([30.0, 31.0], [10.0]).rows("1")
    assert (row["seeds"], row["difference"], row["verdict"]) == (1, 20.0, INCONCLUSIVE)
    assert math.isnan(row["ci_low"]) and math.isnan(row["ci_high"])
    assert row["note"] == "1 seed: no interval (needs 2 seeds or more); left out: seed 1 (adam only)"


def test_sides_are_paired_over_the_seeds_both_ran(runs):
    (row,) = runs.pair([20.0, 22.0, 90.0], [10.0, 11.0]).rows("1")
    assert (row["a_n"], row["b_n"], row["a_mean"], row["seeds"]) == (2, 2, 21.0, 2)
    assert row["difference"] == 10.5 and row["ci_low"] == pytest.approx(10.5 - T1 * 0.5)
    assert row["note"] == "left out: seed 2 (adam only)"


def test_no_seed_in_common_is_inconclusive(runs):
    runs.add("adam", seed=0, sparsity=50.0)
    runs.add("sgd", seed=1, sparsity=0.0)
    (row,) = runs.rows("1")
    assert row["verdict"] == INCONCLUSIVE and row["note"] == "no seed in common (adam: 0; sgd: 1)"


def test_no_runs_when_nothing_can_be_compared(runs, tmp_path):
    runs.add("adam", sparsity=50.0)
    runs.add("sgd", sparsity=0.0, config={"dataset.resolution": 32})  # not alike: another input size
    (row,) = runs.rows("1")
    assert row["verdict"] == NO_RUNS and "2 cell(s) here without a counterpart" in row["note"]
    (tmp_path / "empty").mkdir()
    empty = claims.check(load_runs([tmp_path / "empty"], completed_only=True))
    assert list(empty["claim"]) == NUMBERS and set(empty["verdict"]) == {NO_RUNS}


def test_a_setting_leaves_out_what_its_optimizer_option_fixes_and_keeps_what_varies_within_one(runs):
    def add(optimizer, seed, lr):
        runs.add(optimizer, seed, 0.0, regularizer="none", coefficient=0,
                 config={"regularizer": {"name": "none"}, "optimizer.lr": lr})

    for seed in (0, 1):
        add("adam", seed, 1e-3)
        add("sgd", seed, 0.1)
    assert [row["setting"] for row in runs.rows("2")] == [
        "shapes_clean, basicnet, adam, no regularization, batch 40, 60 steps",
        "shapes_clean, basicnet, sgd, no regularization, batch 40, 60 steps"]
    for seed in (0, 1):  # now Adam runs at two learning rates: the rate no longer follows from the option
        add("adam", seed, 3e-3)
    assert sorted(row["setting"].rpartition(", ")[2] for row in runs.rows("2")) == [
        "optimizer.lr=0.001", "optimizer.lr=0.003", "optimizer.lr=0.1"]


def test_claim_1_is_per_coefficient_and_names_cells_that_differ_only_in_the_lr(runs):
    runs.pair([40.0, 41.0], [0.0, 0.0])
    runs.pair([1.0, 1.0], [30.0, 31.0], coefficient=1e-4, config={"regularizer.l2": 1e-4})
    for seed in (0, 1):
        runs.add("adam", seed, sparsity=10.0 + seed, config={"optimizer.lr": 3e-3})
    rows = runs.rows("1")
    assert rows[0]["setting"] == "shapes_clean, basicnet, l2 0.0001, batch 40, 60 steps"
    assert [(row["setting"].split(", ")[2], row["cell_a"], row["verdict"]) for row in rows] == [
        ("l2 0.0001", "adam", CONTRADICTED),
        ("l2 0.001", "adam optimizer.lr=0.001", HOLDS), ("l2 0.001", "adam optimizer.lr=0.003", HOLDS)]


def test_skipped_runs_are_reported_as_the_tables_report_them(runs, capsys):
    runs.pair([40.0], [0.0])
    runs.add("adam", seed=3, sparsity=99.0, status="diverged")
    assert main(["claims", str(runs.root), "--format", "csv"]) == 0
    captured = capsys.readouterr()
    (first,) = [row for row in parse_csv(captured.out) if row["claim"] == "1"]
    assert first["a_n"] == "1" and captured.err == "skipped 1 run(s): status diverged\n"


# ---- each claim: which cells it compares ------------------------------------------------------------------------

NO_REGULARIZATION = {"regularizer": "none", "coefficient": 0, "config": {"regularizer": {"name": "none"}}}
LAYERS = ("C1", "C2", "C3", "C4", "C5", "C6", "C7")


@pytest.mark.parametrize("values, verdict", [
    ([0.0, 0.0, 0.0], HOLDS),          # [0, 0]: below 2
    ([1.0, 2.0, 3.0], INCONCLUSIVE),   # [-0.48, 4.48]
    ([5.0, 6.0, 7.0], CONTRADICTED),   # [3.52, 8.48]: above 2
    ([0.0], INCONCLUSIVE),             # one seed: no interval
])
def test_claim_2_no_sparsity_without_regularization(runs, values, verdict):
    for seed, sparsity in enumerate(values):
        runs.add("sgd", seed, sparsity, **NO_REGULARIZATION)
    (row,) = runs.rows("2")
    assert (row["cell_b"], row["a_n"], row["verdict"]) == ("2 %", len(values), verdict)
    assert "sgd, no regularization" in row["setting"]
    if len(values) == 3:  # the cell's own t-interval
        half = T2 * statistics.stdev(values) / math.sqrt(3)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((statistics.mean(values) - half,
                                                                 statistics.mean(values) + half))


@pytest.mark.parametrize("values, verdict", [
    ([9.5, 11.0, 12.5], HOLDS),        # [7.27, 14.73]
    ([0.0, 0.5, 1.0], CONTRADICTED),   # [-0.74, 1.74]
    ([1.0, 2.5, 4.0], INCONCLUSIVE),   # [-1.23, 6.23]
    ([0.5, 0.5, 0.5], CONTRADICTED),   # [0.5, 0.5]
])
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
def test_claim_7_zeroing_changes_no_test_error(runs, zeroed, verdict):
    runs.add("adam", test_error=10.0, zeroed_test_error=10.0)
    second = runs.add("sgd", test_error=10.0, zeroed_test_error=zeroed)
    (row,) = runs.rows("7")
    assert (row["a_n"], row["threshold"], row["verdict"]) == (2, 0.1, verdict)
    assert row["note"] == ("" if verdict == HOLDS else f"1 run(s) at >= 0.1, the most: {second}")


def wd(coefficient):
    return {"regularizer": "wd", "config": {"regularizer": {"name": "wd", "wd": coefficient,
                                                            "exclude_bn_and_bias": False}}}


@pytest.mark.parametrize("l2, weight_decay, verdict", [((30.0, 31.0), (10.0, 10.5), HOLDS),
                                                       ((10.0, 10.5), (30.0, 31.0), CONTRADICTED),
                                                       ((11.0, 13.0), (10.0, 10.0), INCONCLUSIVE)])
def test_claim_3_l2_sparser_than_weight_decay(runs, l2, weight_decay, verdict):
    for seed in (0, 1):
        runs.add("adam", seed, sparsity=l2[seed])
        runs.add("adam", seed, sparsity=weight_decay[seed], **wd(1e-3))
    runs.add("adam", sparsity=0.0, coefficient=1e-4, **wd(1e-4))  # no L2 run at 1e-4
    (row,) = runs.rows("3")
    assert (row["cell_a"], row["cell_b"], row["verdict"]) == ("l2", "wd", verdict)
    assert "coefficient 0.001" in row["setting"]


def l2(coefficient):
    return {"coefficient": coefficient, "config": {"regularizer.l2": coefficient}}


def test_claim_4_each_coefficient_against_the_next_smaller(runs):
    for coefficient, sparsity in ((1e-3, 40.0), (1e-4, 10.0), (1e-5, 9.0), (1e-6, 20.0)):
        for seed in (0, 1):
            runs.add("adam", seed, sparsity=sparsity + seed, **l2(coefficient))
    runs.add("sgd", sparsity=5.0)  # SGD at one coefficient: nothing to compare
    assert [(row["cell_a"], row["cell_b"], row["verdict"]) for row in runs.rows("4")] == [
        ("L2 1e-05", "L2 1e-06", CONTRADICTED), ("L2 0.0001", "L2 1e-05", CONTRADICTED),
        ("L2 0.001", "L2 0.0001", HOLDS)]


def test_claim_5_smaller_batches_sparser_at_the_same_iterations(runs):
    for batch_size, sparsity in ((20, 30.0), (40, 20.0), (80, 25.0)):
        for seed in (0, 1):
            runs.add("adam", seed, sparsity=sparsity + seed, batch_size=batch_size, config={"batch_size": batch_size})
    runs.add("adam", sparsity=0.0, batch_size=160, iterations=120, config={"batch_size": 160})
    assert [(row["cell_a"], row["cell_b"], row["verdict"]) for row in runs.rows("5")] == [
        ("batch 20", "batch 40", HOLDS), ("batch 40", "batch 80", CONTRADICTED)]  # 160 ran other iterations


@pytest.mark.parametrize("clean, cluttered, verdict", [(46.0, 29.0, HOLDS), (29.0, 46.0, CONTRADICTED)])
def test_claim_6_clean_background_sparser(runs, clean, cluttered, verdict):
    for seed in (0, 1):
        runs.add("adam", seed, sparsity=clean + seed)
        runs.add("adam", seed, sparsity=cluttered, dataset="shapes_cluttered",
                 config={"dataset.name": "shapes_cluttered", "dataset.background": "cluttered"})
    (row,) = runs.rows("6")
    assert (row["cell_a"], row["cell_b"], row["verdict"]) == ("clean", "cluttered", verdict)


@pytest.mark.parametrize("layers, verdict", [((0, 0, 0, 90, 10, 20, 30), HOLDS),
                                             ((30, 20, 10, 0, 0, 0, 0), CONTRADICTED),
                                             ((1, 1, 1, 50, 2, 2, 2), CONTRADICTED)])  # C4, the middle: in neither
def test_claim_9_later_layers_sparser(runs, layers, verdict):
    for optimizer in ("adam", "sgd"):
        for seed in (0, 1):
            runs.add(optimizer, seed, nested={"sparsity.by_gamma.per_layer_pct": dict(zip(LAYERS, layers))})
    (row,) = runs.rows("9")  # SGD is not adaptive
    assert (row["cell_a"], row["cell_b"], row["seeds"], row["verdict"]) == ("C5–C7", "C1–C3", 2, verdict)


def test_claim_10a_adaptive_features_more_selective(runs):
    for optimizer, means in (("adam", (0.5, 0.5, 0.5, 0.5, 0.5, 0.5, None)), ("sgd", (0.25,) * 7)):
        for seed in (0, 1):
            runs.add(optimizer, seed, nested={f"selectivity.per_layer.{layer}.mean_active": mean
                                              for layer, mean in zip(LAYERS, means)})
    (row,) = runs.rows("10a")  # the layer with no active feature (None) counts in no mean
    assert (row["cell_a"], row["a_mean"], row["cell_b"], row["b_mean"], row["verdict"]) == (
        "adam", 50.0, "sgd", 25.0, HOLDS)


@pytest.mark.parametrize("wide, narrow, verdict", [(30.0, 10.0, HOLDS), (10.0, 30.0, CONTRADICTED)])
def test_claim_10b_narrower_network_less_sparse(runs, wide, narrow, verdict):
    for seed in (0, 1):
        runs.add("adam", seed, sparsity=wide + seed, config={"model.width_multiplier": 0.25})
        runs.add("adam", seed, sparsity=narrow)  # the smoke width, 0.125
    (row,) = runs.rows("10b")
    assert (row["cell_a"], row["cell_b"], row["verdict"]) == ("width ×0.25", "width ×0.125", verdict)


def test_claim_11_one_row_per_architecture_from_results_json(runs):
    """The model is what results.json says (here edited: the template is BasicNet), its config alike."""
    for model, adam, sgd in (("resnet18", (40.0, 42.0), (1.0, 1.5)), ("mobilenet_v2", (2.5, 2.5), (2.0, 2.0))):
        for seed in (0, 1):
            runs.add("adam", seed, sparsity=adam[seed], model=model, config={"model.name": model})
            runs.add("sgd", seed, sparsity=sgd[seed], model=model, config={"model.name": model})
    runs.add("adamax", sparsity=50.0, model="resnet18", config={"model.name": "resnet18"})  # not Adam: claim 1 only
    assert [(row["setting"].split(", ")[1], row["cell_a"], row["cell_b"], row["verdict"])
            for row in runs.rows("11")] == [("mobilenet_v2", "adam (mobilenet_v2)", "sgd (mobilenet_v2)", CONTRADICTED),
                                            ("resnet18", "adam (resnet18)", "sgd (resnet18)", HOLDS)]


# ---- the formats ------------------------------------------------------------------------------------------------

def test_terminal_markdown_and_csv_formats(runs, capsys):
    runs.pair([40.0, 42.0, 41.0], [0.0, 1.0, 0.5])
    runs.add("adam", 0, 30.0, dataset="=1+2 | calc")  # text from a run file: a formula, a pipe
    assert main(["claims", str(runs.root)]) == 0
    terminal = capsys.readouterr().out
    assert "adam: 41.0 ±1.0 (3)" in terminal and "sgd: 0.5 ±0.5 (3)" in terminal and "no runs" in terminal
    assert max(map(len, terminal.splitlines())) <= 100 and "1. adaptive + L2 sparser than SGD + L2" in terminal
    assert main(["claims", str(runs.root), "--format", "markdown"]) == 0
    markdown = capsys.readouterr().out.splitlines()
    assert markdown[0] == ("| claim | statement | setting | a | b | estimate [95 % CI] | threshold | verdict | note |")
    assert all(len(line.split(" | ")) == 9 for line in markdown if line.startswith("| "))  # the run's pipe escaped
    assert main(["claims", str(runs.root), "--format", "csv"]) == 0
    rows = parse_csv(capsys.readouterr().out)
    assert {row["setting"][:1] for row in rows} <= {"", "'", "s", "e"} and any(
        row["setting"].startswith("'=1+2 | calc") for row in rows)  # a spreadsheet shows it as text
    assert main(["claims", str(runs.root / "missing")]) == 2
    with pytest.raises(SystemExit) as bad_format:
        main(["claims", str(runs.root), "--format", "latex"])
    assert bad_format.value.code == 2


def test_the_claims_grids_run_3_seeds():
    for experiment in ("claims", "claims_cpu"):
        from hydra import compose, initialize_config_dir

        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            config = compose(config_name="config", overrides=[f"+experiment={experiment}"], return_hydra_config=True)
        assert config.hydra.sweeper.params.seed == "0,1,2", experiment


def test_the_package_still_never_imports_torch_or_the_trainer():
    code = ("import sys, multirun_analysis.__main__, multirun_analysis.claims, multirun_analysis.report; "
            "assert not {'torch', 'sparsesweep'} & set(sys.modules), sorted(sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert done.returncode == 0, done.stderr


# ---- real sweeps ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_smoke_sweep_gets_one_row_or_more_per_claim_each_with_a_valid_verdict(tmp_path):
    sweep = tmp_path / "sweep"
    code, output = cli("sparsesweep", "-m", *SMOKE, "optimizer=adam,sgd", "regularizer.l2=1e-3", "seed=0,1",
                       f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert code == 0, output
    code, output = cli("multirun_analysis", "claims", str(sweep), "--format", "csv", cwd=sweep)
    assert code == 0, output
    rows = parse_csv(output)
    assert list(rows[0]) == list(claims.COLUMNS)
    assert sorted({row["claim"] for row in rows}, key=NUMBERS.index) == NUMBERS
    assert all(row["verdict"] in claims.VERDICTS for row in rows)
    by_claim = {number: [row for row in rows if row["claim"] == number] for number in NUMBERS}
    # What the sweep holds decides which claims it speaks to, not what 60 steps of training gave.
    (first,) = by_claim["1"]
    assert [first[key] for key in ("cell_a", "a_n", "cell_b", "b_n", "seeds")] == ["adam", "2", "sgd", "2", "2"]
    assert "0.001" in first["setting"] and first["verdict"] != NO_RUNS and first["ci_low"]
    (selective,) = by_claim["10a"]
    assert (selective["cell_a"], selective["cell_b"]) == ("adam", "sgd")
    assert [row["verdict"] for row in by_claim["7"]] in ([HOLDS], [CONTRADICTED])
    assert [row["cell_a"] for row in by_claim["9"]] == ["C5–C7"]  # the SGD runs are not adaptive
    assert [row["cell_a"] for row in by_claim["11"]] == ["adam (basicnet)"]
    for number in ("2", "3", "4", "5", "6", "8", "10b"):
        assert [row["verdict"] for row in by_claim[number]] == [NO_RUNS], number


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
