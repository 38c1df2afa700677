"""`python -m multirun_analysis claims`: on copies of one real run with results edited by hand, where the verdict
is known, each claim's choice of cells and each verdict (inference.py's statistics are tested in
test_inference.py); runs whose sparsity did not level off; the paper judged on its own tables (`--paper`), and
run directories holding the paper's numbers judged the same; the claims and tables grids; a real smoke sweep."""
import csv
import io
import json
import math
import re
import statistics
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from conftest import ROOT, SMOKE, cli
from multirun_analysis import claims, mechanism
from multirun_analysis.__main__ import main
from multirun_analysis.load import load_runs
from multirun_analysis.paper_cells import paper_cells
from rundirs import Sweep, train_smoke_run, without_counters

HOLDS, WEAKER, CONTRADICTED, NEGLIGIBLE = claims.HOLDS, claims.WEAKER, claims.CONTRADICTED, claims.NEGLIGIBLE
INCONCLUSIVE, NOT_APPLICABLE, NOT_CONVERGED, NO_RUNS = (claims.INCONCLUSIVE, claims.NOT_APPLICABLE,
                                                        claims.NOT_CONVERGED, claims.NO_RUNS)
NUMBERS = list(dict.fromkeys(claim.number for claim in claims.CLAIMS)) + list(mechanism.PARTS)  # 12a, 12b last
TODAYS = ("adamw", "nadam", "radam", "adafactor")  # the optimizers after the paper's
T2 = stats.t.ppf(0.975, 2)


@pytest.fixture(autouse=True)
def columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """One real run: Adam, L2 1e-3, at smoke size (3 epochs of 20 steps, the last at LR x0.1), trained here; without
    its starvation counters, so that claim 12 (test_mechanism.py) has no runs here, whatever the training gave."""
    return without_counters(train_smoke_run(tmp_path_factory.mktemp("claims") / "template"))


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

    def verdicts(self):
        return claims.check(load_runs([self.root], completed_only=True))

    def rows(self, number):
        verdicts = self.verdicts()
        return verdicts[verdicts["claim"] == number].to_dict("records")


@pytest.fixture
def runs(tmp_path, template):
    return Runs(tmp_path / "runs", template)


def l2(coefficient):
    return {"coefficient": coefficient, "config": {"regularizer.l2": coefficient}}


def wd(coefficient):
    return {"regularizer": "wd", "coefficient": coefficient,
            "config": {"regularizer": {"name": "wd", "wd": coefficient, "exclude_bn_and_bias": False}}}


NO_REGULARIZATION = {"regularizer": "none", "coefficient": 0, "config": {"regularizer": {"name": "none"}}}
LAYERS = ("C1", "C2", "C3", "C4", "C5", "C6", "C7")


# ---- the rule, through run directories -------------------------------------------------------------------------

SIDE_B = [10.0, 20.0, 30.0]  # far apart: only pairing by seed makes a difference of a few points visible


@pytest.mark.parametrize("differences, verdict", [
    ([16.0, 17.0, 18.0], HOLDS),          # [14.5, 19.5]: beyond the margin of 5
    ([2.5, 3.0, 3.5], WEAKER),            # [1.76, 4.24]: surely above 0, surely below 5
    ([-8.0, -7.0, -6.0], CONTRADICTED),   # the other direction
    ([-1.0, 0.0, 1.0], NEGLIGIBLE),       # [-2.5, 2.5]: within 5 either way
    ([0.0, 6.0, 12.0], INCONCLUSIVE),     # [-8.9, 20.9]
])
def test_claim_1_is_the_paired_interval_of_the_differences_against_its_margin(runs, differences, verdict):
    (row,) = runs.pair([x + d for x, d in zip(SIDE_B, differences)], SIDE_B).rows("1")
    mean, sd = statistics.mean(differences), statistics.stdev(differences)
    assert (row["cell_a"], row["cell_b"], row["n"], row["df"], row["margin"], row["paired"]) == (
        "adam", "sgd", 6, 2, 5.0, True)
    assert row["unit"] == "points of sparsity by γ" and row["scope"] == "paper"
    assert row["estimate"] == pytest.approx(mean)
    half = T2 * sd / math.sqrt(3)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((mean - half, mean + half))
    assert row["confidence"] == pytest.approx(0.95) and row["levelled"] == "6/6"
    assert row["verdict"] == verdict


def test_claim_1_holds_for_an_optimizer_somewhere_in_its_range(runs):
    runs.pair([40.0, 41.0, 42.0], [0.0, 0.5, 0.0])                                    # 1e-3: holds
    runs.pair([3.0, 3.2, 3.6], [0.0, 0.2, 0.4], **l2(1e-4))                            # 1e-4: weaker
    for seed, sparsity in enumerate((2.5, 2.7, 3.1)):                                 # its only coefficient: weaker
        runs.add("adadelta", seed, sparsity, **l2(1e-4))
    rows = runs.rows("1")
    assert [(row["cell_a"], row["verdict"]) for row in rows] == [("adadelta", WEAKER), ("adam", HOLDS)]
    adam = rows[1]
    assert "l2 0.001" in adam["setting"] and "elsewhere in its range: coefficient 0.0001: weaker" in adam["note"]
    # one model: 5 cells x 3 seeds, a seed effect in each of the two blocks (1e-3, 1e-4): 15 - 5 - 2 x 2
    assert adam["df"] == 6 and rows[0]["df"] == 6


def test_claim_1_is_contradicted_only_where_every_coefficient_contradicts_it(runs):
    for seed in range(3):
        for optimizer, sparsity, edits in (("sgd", 30.0 + seed, {}), ("adam", seed / 2, {}),
                                           ("adam", 1.0 + seed / 4, l2(1e-4)), ("sgd", 30.0 + seed / 2, l2(1e-4)),
                                           ("adamax", 40.0 + seed, {}), ("adamax", 1.0, l2(1e-4))):
            runs.add(optimizer, seed, sparsity, **edits)
    assert [(row["cell_a"], row["verdict"]) for row in runs.rows("1")] == [("adam", CONTRADICTED), ("adamax", HOLDS)]


def test_no_sparsity_on_either_side_is_not_applicable(runs):
    runs.pair([0.0, 0.5, 0.0], [0.0, 0.0, 0.5])
    (row,) = runs.rows("1")
    assert row["verdict"] == NOT_APPLICABLE and row["note"] == "no sparsity on either side (below 1 % by γ)"
    assert row["estimate"] == pytest.approx(0.0)


def test_a_cell_whose_sparsity_did_not_level_off_gives_no_verdict(runs):
    runs.pair([40.0, 41.0, 42.0], [0.0, 0.5, 0.0])
    runs.add("adam", seed=3, sparsity=40.0, history=[5.0, 20.0, 40.0])  # dead: 0, 5, 20 % at steps 0, 20, 40
    runs.add("sgd", seed=3, sparsity=0.0)
    (row,) = runs.rows("1")
    assert (row["verdict"], row["levelled"]) == (NOT_CONVERGED, "7/8")
    # init and its 2 base-LR epoch ends: a slope of 0.5 points per step, 4 points per 20 % of its 40 steps
    assert row["note"] == ("1 of 8 runs did not level off (adam seed 3: drifting +4.0 points per 20% of its 40 "
                           "base-LR steps); the trend suggests about 40 more steps")
    assert row["estimate"] == pytest.approx(40.625)  # still shown, as what the runs say so far
    (zeroing,) = runs.rows("7")
    assert zeroing["verdict"] == HOLDS  # exact at any time: not gated


def test_one_seed_per_cell_gives_no_interval_and_no_verdict(runs):
    (row,) = runs.pair([30.0], [10.0]).rows("1")
    assert (row["n"], row["estimate"], row["verdict"]) == (2, 20.0, INCONCLUSIVE)
    assert math.isnan(row["ci_low"]) and "no interval" in row["note"]


def test_seeds_one_side_lacks_still_count_towards_the_variance(runs):
    (row,) = runs.pair([20.0, 22.0, 90.0], [10.0, 11.0]).rows("1")
    assert (row["a_n"], row["b_n"], row["n"], row["df"]) == (3, 2, 5, 1)
    assert row["estimate"] == pytest.approx(10.5)  # over the seeds both ran


def test_cells_that_share_no_seed_are_compared_unpaired(runs):
    runs.pair([40.0, 42.0], [])
    for seed in (2, 3):
        runs.add("sgd", seed, 1.0 + seed / 10)
    (row,) = runs.rows("1")
    assert (row["paired"], row["df"], row["note"]) == (False, 2, "no seed in common: compared unpaired")
    assert row["estimate"] == pytest.approx(41.0 - 1.25) and row["verdict"] == HOLDS


def test_no_runs_when_nothing_can_be_compared(runs, tmp_path):
    runs.add("adam", sparsity=50.0)
    runs.add("sgd", sparsity=0.0, config={"dataset.resolution": 32})  # not alike: another input size
    (row,) = runs.rows("1")
    assert row["verdict"] == NO_RUNS and "2 cell(s) here, none with a counterpart" in row["note"]
    (tmp_path / "empty").mkdir()
    empty = claims.check(load_runs([tmp_path / "empty"], completed_only=True))
    assert list(dict.fromkeys(empty["claim"])) == NUMBERS and set(empty["verdict"]) == {NO_RUNS}


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


def test_cells_that_differ_only_in_the_lr_are_named_by_it(runs):
    runs.pair([40.0, 41.0], [0.0, 0.0])
    for seed in (0, 1):
        runs.add("adam", seed, sparsity=10.0 + seed, config={"optimizer.lr": 3e-3})
    assert sorted((row["cell_a"], row["verdict"]) for row in runs.rows("1")) == [
        ("adam optimizer.lr=0.001", HOLDS), ("adam optimizer.lr=0.003", HOLDS)]


def test_skipped_runs_are_reported_as_the_tables_report_them(runs, capsys):
    runs.pair([40.0], [0.0])
    runs.add("adam", seed=3, sparsity=99.0, status="diverged")
    assert main(["claims", str(runs.root), "--format", "csv"]) == 0
    captured = capsys.readouterr()
    (first,) = [row for row in parse_csv(captured.out) if row["claim"] == "1"]
    assert first["a_n"] == "1" and captured.err.splitlines()[-1] == "skipped 1 run(s): status diverged"


# ---- the test fixtures: sweeps where the claims plainly hold, and plainly fail --------------------------------------

def plain_sweep(runs, holds: bool):
    """Claims 1, 2, 3, 7 and 9 plainly holding (holds) or 1, 2, 3 and 7 plainly failing, 3 seeds."""
    later = dict(zip(LAYERS, (0, 0, 0, 10, 30, 40, 50)))
    for seed in range(3):
        adam, sgd, weight_decay, none = (40.0 + seed, seed / 2, 10.0 + seed, 0.0) if holds else \
            (seed / 2, 40.0 + seed, 50.0 + seed, 30.0 + seed)
        runs.add("adam", seed, adam, nested={"sparsity.by_gamma.per_layer_pct": later})
        runs.add("sgd", seed, sgd)
        runs.add("adam", seed, weight_decay, **wd(1e-3), nested={"sparsity.by_gamma.per_layer_pct": later})
        runs.add("sgd", seed, none, **NO_REGULARIZATION)
        runs.add("adam", seed, 0.0, test_error=10.0, zeroed_test_error=10.0 if holds else 11.0, **l2(1e-5))


@pytest.mark.parametrize("holds", [True, False])
def test_plain_sweeps_get_plain_verdicts(runs, holds):
    plain_sweep(runs, holds)
    verdicts = {number: [row["verdict"] for row in runs.rows(number)] for number in ("1", "2", "3", "7", "9")}
    if holds:
        assert verdicts == {"1": [HOLDS], "2": [HOLDS], "3": [HOLDS], "7": [HOLDS],
                            "9": [HOLDS, NOT_APPLICABLE, HOLDS]}  # Adam L2 1e-3, 1e-5 (no sparsity), WD 1e-3
    else:
        assert {number: verdicts[number] for number in ("1", "2", "3", "7")} == {
            "1": [CONTRADICTED], "2": [CONTRADICTED], "3": [CONTRADICTED], "7": [CONTRADICTED]}


# ---- each claim: which cells it compares --------------------------------------------------------------------------

@pytest.mark.parametrize("values, verdict", [
    ([0.0, 0.0, 0.0], HOLDS),          # [0, 0]: below 1
    ([0.0, 0.5, 1.0], INCONCLUSIVE),   # [-0.74, 1.74]
    ([5.0, 6.0, 7.0], CONTRADICTED),   # [3.52, 8.48]: above 1
])
def test_claim_2_no_sparsity_without_regularization(runs, values, verdict):
    for seed, sparsity in enumerate(values):
        runs.add("sgd", seed, sparsity, **NO_REGULARIZATION)
    (row,) = runs.rows("2")
    assert (row["cell_a"], row["a_n"], row["margin"], row["verdict"]) == ("sparsity by γ", 3, 1.0, verdict)
    assert "sgd, no regularization" in row["setting"] and not row["paired"]
    half = T2 * statistics.stdev(values) / math.sqrt(3)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((statistics.mean(values) - half,
                                                             statistics.mean(values) + half))


def test_claim_2_pools_its_cells_variance(runs):
    for seed, (adam, sgd) in enumerate(((0.0, 0.0), (0.5, 0.0), (1.0, 0.0))):
        runs.add("adam", seed, adam, **NO_REGULARIZATION)
        runs.add("sgd", seed, sgd, **NO_REGULARIZATION)
    rows = runs.rows("2")
    pooled = math.sqrt((statistics.variance([0.0, 0.5, 1.0]) + 0.0) / 2)  # 2 cells, 2 degrees of freedom each
    assert [row["df"] for row in rows] == [4, 4]
    adam, sgd = rows  # SGD's statement (0 < 1) is the surer: Holm judges it first, at 1 - 0.05 / 2
    assert sgd["confidence"] == pytest.approx(1 - 0.05 / 2) and adam["confidence"] == pytest.approx(0.95)
    assert sgd["ci_high"] - sgd["estimate"] == pytest.approx(stats.t.ppf(1 - 0.05 / 4, 4) * pooled / math.sqrt(3))


@pytest.mark.parametrize("l2_values, wd_values, verdict", [((30.0, 31.0), (10.0, 10.5), HOLDS),
                                                           ((10.0, 10.5), (30.0, 31.0), CONTRADICTED),
                                                           ((11.0, 13.0), (10.0, 10.0), INCONCLUSIVE),
                                                           ((10.5, 10.6), (10.0, 10.0), NEGLIGIBLE)])
def test_claim_3_l2_sparser_than_weight_decay(runs, l2_values, wd_values, verdict):
    for seed in (0, 1):
        runs.add("adam", seed, sparsity=l2_values[seed])
        runs.add("adam", seed, sparsity=wd_values[seed], **wd(1e-3))
    runs.add("adam", sparsity=0.0, **wd(1e-4))  # no L2 run at 1e-4
    (row,) = runs.rows("3")
    assert (row["cell_a"], row["cell_b"], row["verdict"]) == ("l2", "wd", verdict)
    assert "coefficient 0.001" in row["setting"]


def test_claim_4_is_a_trend_over_every_coefficient_present(runs):
    # Adam: 9, 10, 40 at 1e-5, 1e-4, 1e-3: the 1e-5 -> 1e-4 step is small, the trend is not
    for coefficient, sparsity in ((1e-3, 40.0), (1e-4, 10.0), (1e-5, 9.0)):
        for seed in (0, 1, 2):
            runs.add("adam", seed, sparsity=sparsity + seed / 2, **l2(coefficient))
    for coefficient, sparsity in ((1e-3, 2.0), (1e-4, 2.0)):  # SGD: flat
        for seed in (0, 1, 2):
            runs.add("sgd", seed, sparsity=sparsity + seed / 4, **l2(coefficient))
    adam, sgd = runs.rows("4")
    slope = stats.linregress([-5, -4, -3], [9.5, 10.5, 40.5]).slope  # 15.5 points per decade
    assert (adam["cell_a"], adam["cell_b"], adam["estimate"]) == ("L2 0.001", "L2 1e-05", pytest.approx(slope))
    assert adam["cells"].startswith("L2 0.001: 40.5") and adam["unit"] == "points per tenfold coefficient"
    assert adam["verdict"] == HOLDS
    assert (sgd["estimate"], sgd["verdict"]) == (pytest.approx(0.0), NEGLIGIBLE)


def test_claim_5_is_a_trend_over_batch_sizes_at_the_same_iterations_unpaired(runs):
    # 70, 70, 66, 61 at batch 20-160 (Table 6, CIFAR-10): 3.1 points per halving
    for batch_size, sparsity in ((20, 70.0), (40, 70.0), (80, 66.0), (160, 61.0)):
        for seed in (0, 1):
            runs.add("adam", seed, sparsity=sparsity + seed / 10, batch_size=batch_size,
                     config={"batch_size": batch_size})
    runs.add("adam", sparsity=0.0, batch_size=320, iterations=120, config={"batch_size": 320})  # other iterations
    (row,) = runs.rows("5")
    assert (row["cell_a"], row["cell_b"], row["paired"], row["margin"]) == ("batch 20", "batch 160", False, 2.0)
    assert row["estimate"] == pytest.approx(3.1) and row["verdict"] == HOLDS


@pytest.mark.parametrize("clean, cluttered, verdict", [(46.0, 29.0, HOLDS), (29.0, 46.0, CONTRADICTED)])
def test_claim_6_clean_background_sparser(runs, clean, cluttered, verdict):
    for seed in (0, 1):
        runs.add("adam", seed, sparsity=clean + seed)
        runs.add("adam", seed, sparsity=cluttered, dataset="shapes_cluttered",
                 config={"dataset.name": "shapes_cluttered", "dataset.background": "cluttered"})
    (row,) = runs.rows("6")
    assert (row["cell_a"], row["cell_b"], row["paired"], row["verdict"]) == ("clean", "cluttered", False, verdict)


@pytest.mark.parametrize("zeroed, verdict", [
    (10.0, HOLDS), (10.05, HOLDS), (10.0625, HOLDS),
    (10.1, CONTRADICTED),    # exactly 0.1 points (10.1 - 10.0 is 0.0999... in floats): not < 0.1
    (9.875, CONTRADICTED),
])
def test_claim_7_zeroing_changes_no_test_error(runs, zeroed, verdict):
    runs.add("adam", test_error=10.0, zeroed_test_error=10.0)
    second = runs.add("sgd", test_error=10.0, zeroed_test_error=zeroed)
    (row,) = runs.rows("7")
    assert (row["a_n"], row["margin"], row["verdict"]) == (2, 0.1, verdict)
    assert row["note"] == ("" if verdict == HOLDS else f"1 run(s) at >= 0.1, the most: {second}")


@pytest.mark.parametrize("leaky, verdict", [
    ((41.0, 42.0, 40.0), HOLDS),          # 5 points below ReLU's 46: comparable (Table 2)
    ((20.0, 21.0, 19.0), CONTRADICTED),   # 26 below: surely beyond the margin of 10
    ((30.0, 45.0, 38.0), INCONCLUSIVE),
    ((0.0, 0.5, 0.0), CONTRADICTED),
])
def test_claim_8_leaky_relu_comparable_to_relu(runs, leaky, verdict):
    for seed, sparsity in enumerate(leaky):
        runs.add("adam", seed, sparsity, config={"model.negative_slope": 0.1})
        runs.add("adam", seed, 46.0 + seed / 2)  # plain ReLU
    (row,) = runs.rows("8")
    assert (row["cell_a"], row["cell_b"], row["margin"], row["verdict"]) == ("leaky ReLU 0.1", "ReLU", 10.0, verdict)


@pytest.mark.parametrize("layers, verdict", [((0, 0, 0, 90, 10, 20, 30), HOLDS),
                                             ((30, 20, 10, 0, 0, 0, 0), CONTRADICTED),
                                             ((1, 1, 1, 50, 2, 2, 2), WEAKER)])  # C4, the middle: in neither
def test_claim_9_later_layers_sparser(runs, layers, verdict):
    for optimizer in ("adam", "sgd"):
        for seed in (0, 1):
            runs.add(optimizer, seed, sparsity=10.0 + seed / 10,
                     nested={"sparsity.by_gamma.per_layer_pct": dict(zip(LAYERS, layers))})
    (row,) = runs.rows("9")  # SGD is not adaptive
    assert (row["cell_a"], row["cell_b"], row["n"], row["paired"], row["verdict"]) == (
        "C5–C7", "C1–C3", 2, False, verdict)


def test_claim_9_without_sparsity_is_not_applicable(runs):
    for seed in (0, 1):
        runs.add("adam", seed, sparsity=0.0)
    (row,) = runs.rows("9")
    assert row["verdict"] == NOT_APPLICABLE


def negative_betas(run_dir, share: float):
    """features.npz with `share` of the last block's (C6, C7: 64 + 64 features) betas negative."""
    with np.load(run_dir / "features.npz") as archive:
        arrays = dict(archive)
    flat = np.where(np.arange(128) < round(share * 128), -0.5, 0.5)
    arrays["C6_beta"], arrays["C7_beta"] = flat[:64], flat[64:]
    np.savez(run_dir / "features.npz", **arrays)


def test_claim_10a_negative_betas_in_the_last_block_at_fig_2s_settings(runs):
    for seed, (adam, sgd) in enumerate(((1.0, 0.5), (0.96875, 0.53125), (1.0, 0.5))):
        for coefficient in ("none", 1e-5, 1e-3):
            edits = NO_REGULARIZATION if coefficient == "none" else l2(coefficient)
            negative_betas(runs.add("adam", seed, 0.0, **edits), adam)
            negative_betas(runs.add("sgd", seed, 0.0, **edits), sgd)
    rows = [row for row in runs.rows("10a") if row["metric"] == "negative_beta_pct"]
    # L2 1e-3: not Fig. 2's; what the regularizer's option fixes (exclude_bn_and_bias beside l2) is not named
    assert [(row["setting"].partition(", ")[2], row["cell_a"], row["cell_b"]) for row in rows] == [
        ("basicnet, l2 1e-05, batch 40, 60 steps", "adam", "sgd"),
        ("basicnet, no regularization, batch 40, 60 steps", "adam", "sgd")]
    assert [row["a_mean"] for row in rows] == pytest.approx([100 * (1 + 0.96875 + 1) / 3] * 2)
    assert {row["verdict"] for row in rows} == {HOLDS} and rows[0]["margin"] == 10.0


def test_claim_10a_selectivity_per_layer_over_all_features(runs):
    for optimizer, means in (("adam", (0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.05)), ("sgd", (0.05,) * 7)):
        for seed in (0, 1):
            runs.add(optimizer, seed, 0.0, **l2(1e-5), nested={
                f"selectivity.per_layer.{layer}.mean": mean + seed / 1000 for layer, mean in zip(LAYERS, means)})
    rows = [row for row in runs.rows("10a") if row["metric"].startswith("selectivity_")]
    assert [row["setting"].rpartition(", ")[2] for row in rows] == [f"layer {layer}" for layer in LAYERS]
    assert [row["verdict"] for row in rows] == [HOLDS] * 6 + [NEGLIGIBLE]  # C7: 5 vs 5 %
    assert rows[0]["estimate"] == pytest.approx(45.0) and rows[0]["margin"] == 1.0


def test_claim_10b_a_trend_over_widths(runs):
    for seed in (0, 1):
        runs.add("adam", seed, sparsity=30.0 + seed, config={"model.width_multiplier": 0.25})
        runs.add("adam", seed, sparsity=10.0)  # the smoke width, 0.125
    (row,) = runs.rows("10b")
    assert (row["cell_a"], row["cell_b"], row["estimate"], row["verdict"]) == (
        "width ×0.25", "width ×0.125", pytest.approx(20.5), HOLDS)


def test_claim_11_and_todays_optimizers_are_extensions_judged_apart(runs):
    runs.pair([40.0, 42.0], [1.0, 1.5])
    for optimizer, values in (("adamw", (2.5, 2.5)), ("radam", (30.0, 32.0))):
        for seed in (0, 1):
            runs.add(optimizer, seed, values[seed])
    verdicts = runs.verdicts()
    first = verdicts[verdicts["claim"] == "1"]
    assert [(row.cell_a, row.scope) for row in first.itertuples()] == [
        ("adam", "paper"), ("adamw", "extension"), ("radam", "extension")]
    paper_row = first.iloc[0]
    assert paper_row["confidence"] == pytest.approx(0.95)  # alone in its family: Holm leaves it at 95 %
    (eleven,) = runs.rows("11")
    assert (eleven["scope"], eleven["cell_a"], eleven["verdict"]) == ("extension", "adam (basicnet)", HOLDS)


def test_extensions_have_their_own_section_in_the_terminal_view(runs, capsys):
    runs.pair([40.0, 42.0], [1.0, 1.5])
    for seed in (0, 1):
        runs.add("nadam", seed, 30.0 + seed)
    assert main(["claims", str(runs.root)]) == 0
    out = capsys.readouterr().out
    paper, _, extension = out.partition("Extensions: what the paper never claimed")
    assert "adam: 41.0" in paper and "nadam: 30.5" in extension and "nadam" not in paper


# ---- the formats ------------------------------------------------------------------------------------------------

def test_terminal_markdown_and_csv_formats(runs, capsys):
    runs.pair([40.0, 42.0, 41.0], [0.0, 1.0, 0.5])
    runs.add("adam", 0, 30.0, dataset="=1+2 | calc")  # text from a run file: a formula, a pipe
    assert main(["claims", str(runs.root)]) == 0
    terminal = capsys.readouterr().out
    assert "adam: 41.0 ±1.0 (3)" in terminal and "40.5 [39.3, 41.7]" in terminal
    assert max(map(len, terminal.splitlines())) <= 100 and "1. adaptive + L2 sparser than SGD + L2" in terminal
    assert "no runs" in terminal
    assert main(["claims", str(runs.root), "--format", "markdown"]) == 0
    markdown = capsys.readouterr().out.splitlines()
    assert markdown[0] == ("| claim | scope | statement | setting | cells | estimate [CI] | margin | levelled "
                           "| verdict | note |")
    assert all(len(line.split(" | ")) == 10 for line in markdown if line.startswith("| "))  # the run's pipe escaped
    assert main(["claims", str(runs.root), "--format", "csv"]) == 0
    rows = parse_csv(capsys.readouterr().out)
    assert list(rows[0]) == list(claims.COLUMNS) and {row["verdict"] for row in rows} <= set(claims.VERDICTS)
    assert any(row["setting"].startswith("'=1+2 | calc") for row in rows)  # a spreadsheet shows it as text
    assert main(["claims", str(runs.root / "missing")]) == 2
    for bad in (["claims", str(runs.root), "--format", "latex"], ["claims"], ["claims", str(runs.root), "--paper"]):
        with pytest.raises(SystemExit) as error:
            main(bad)
        assert error.value.code == 2


# ---- the claims as docs/reproducing.md states them ---------------------------------------------------------------

KIND_WORDS = {claims.GREATER: ("a > b", "trend"), claims.EQUIVALENT: ("≈",), claims.BELOW: ("< bound",)}


def doc_rows(heading: str, columns: int) -> list[list[str]]:
    """The rows of the first table after `heading` in docs/reproducing.md whose rows have `columns` cells."""
    text = (ROOT / "docs" / "reproducing.md").read_text().partition(heading)[2]
    rows, started = [], False
    for line in text.splitlines():
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip()[1:-1])]  # at unescaped pipes
        if line.startswith("|") and len(cells) == columns:
            started = True
            rows.append(cells)
        elif started:
            break
    return [row for row in rows[1:] if not set(row[0]) <= {"-"}]  # no header, no rule


def test_each_claim_names_its_source_margin_and_pairing_in_the_docs_as_the_code_judges_it():
    paper = doc_rows("## The claims", 7)        # | # | claim | source | runs | compared | kind, margin | paired |
    extensions = doc_rows("**Extensions.**", 5)  # | # | claim | compared | kind, margin | paired |
    documented = [(row[0], row[2], row[5], row[6]) for row in paper] + \
                 [(row[0], "", row[3], row[4]) for row in extensions]
    assert [number for number, *_ in documented] == [claim.number for claim in claims.CLAIMS] + list(mechanism.PARTS)
    for claim, (number, source, kind_margin, paired) in zip(claims.CLAIMS, documented):
        if claim.of_the_paper:  # the code's first reference (Table 1, Sec. 3, Fig. 2, ...) is the doc's
            first = re.split(r"[,;:(]", claim.source)[0].strip().replace("-", "–")
            assert source.startswith(first), (number, source)
        words = ("exact",) if claim.build is claims.zeroing else KIND_WORDS[claim.kind]
        assert kind_margin.startswith(words) and margin_in(claim.margin, kind_margin), (number, kind_margin)
        assert (paired == "yes") == claim.paired, (number, paired)
    for part, (number, _, kind_margin, paired) in zip(mechanism.PARTS.values(), documented[len(claims.CLAIMS):]):
        assert kind_margin.startswith(KIND_WORDS[part.kind]) and margin_in(part.margin, kind_margin), number
        assert paired == "no", number  # one cell against its margin: nothing to pair


def margin_in(margin: float, text: str) -> bool:
    return re.search(rf"(?<![\d.]){re.escape(f'{margin:g}')} ", text) is not None


def test_the_verdicts_are_the_words_tools_read():
    assert claims.VERDICTS == ("holds", "weaker", "contradicted", "negligible", "inconclusive", "not applicable",
                               "not converged", "no runs")


# ---- the paper agrees with itself ----------------------------------------------------------------------------------

def test_the_paper_judged_on_its_own_tables_contradicts_none_of_its_claims(capsys):
    assert main(["claims", "--paper", "--format", "csv"]) == 0
    rows = parse_csv(capsys.readouterr().out)
    assert not [row for row in rows if row["verdict"] == CONTRADICTED]
    paper = [row for row in rows if row["scope"] == "paper"]
    assert {row["verdict"] for row in paper} <= {HOLDS, WEAKER, NO_RUNS}
    by = {(row["claim"], row["setting"], row["cell_a"]): row for row in paper}
    # The rows the rule of adjacent 2-point jumps failed: now as the paper states its claims.
    adadelta = [row for key, row in by.items() if key[0] == "1" and key[2] == "adadelta"]
    assert [(float(row["estimate"]), row["verdict"]) for row in adadelta] == [(1.0, WEAKER)] * 2  # 1e-4: 1 vs 0 %
    trends = {(key[1].split(",")[0], key[1].split(",")[2].strip()): row["verdict"] for key, row in by.items()
              if key[0] == "4"}
    assert trends[("cifar10", "sgd")] == HOLDS and trends[("cifar100", "adadelta")] == HOLDS
    (cifar10,) = [row for key, row in by.items() if key[0] == "5" and "table6" in key[1] and "cifar10," in key[1]]
    assert float(cifar10["estimate"]) == pytest.approx(3.1) and cifar10["verdict"] == HOLDS  # 70, 70, 66, 61 %
    assert [row["verdict"] for row in rows if row["claim"] == "8"] == [HOLDS, HOLDS]  # 41 and 43 vs 46: comparable
    for number in ("1", "2", "3", "4", "5", "6", "7", "8", "9"):
        assert any(row["claim"] == number and row["verdict"] == HOLDS for row in paper), number


def replica(runs: Runs, seeds=(0, 1)) -> None:
    """Run directories holding the paper's numbers: 2 seeds of each table row (paper_cells), every seed at the
    row's value; what no paper cell has (per-layer sparsity, selectivity, the zeroing of Table 1) left out."""
    for cell in paper_cells():
        setting, summary = cell.setting, cell.summary
        regularizer = setting["regularizer"]
        config = {"model.name": setting["model"], "dataset.name": setting["dataset"],
                  "batch_size": setting["batch_size"], "paper_table": setting["paper_table"],
                  "dataset.background": setting.get("dataset.background"),
                  "regularizer": {"name": "none"} if regularizer == "none" else {
                      "name": regularizer, regularizer: setting["coefficient"], "exclude_bn_and_bias": False}}
        if "model.negative_slope" in setting:
            config["model.negative_slope"] = setting["model.negative_slope"]
        sparsity = summary[claims.SPARSITY]
        nested = {"sparsity.by_gamma.per_layer_pct": {}, "selectivity.per_layer": {}}
        if "later_pct" in summary:  # Table 5's stages
            earlier, later = summary["later_pct"] - summary["later_minus_earlier_pct"], summary["later_pct"]
            nested["sparsity.by_gamma.per_stage_pct"] = {"conv1": earlier, "res2": earlier, "res3": 1.0,
                                                        "res4": later, "res5": later}
        top = {key: summary[key] for key in ("test_error", "zeroed_test_error") if key in summary}
        for seed in seeds:
            runs.add(setting["optimizer"], seed, 100 * 292 / 4224 if math.isnan(sparsity) else sparsity,
                     config=config, nested=nested, model=setting["model"], dataset=setting["dataset"],
                     regularizer=regularizer, coefficient=setting["coefficient"], batch_size=setting["batch_size"],
                     **top)


def test_run_directories_holding_the_papers_numbers_get_the_papers_verdicts(runs, capsys):
    replica(runs)
    assert main(["claims", str(runs.root), "--format", "csv"]) == 0
    from_runs = parse_csv(capsys.readouterr().out)
    assert main(["claims", "--paper", "--format", "csv"]) == 0
    from_paper = parse_csv(capsys.readouterr().out)

    def verdicts(rows):
        return sorted((row["claim"], row["scope"], row["cell_a"], row["cell_b"], row["verdict"]) for row in rows)
    assert verdicts(from_runs) == verdicts(from_paper)
    assert len(from_paper) > 40


# ---- the grids -------------------------------------------------------------------------------------------------------

def dry_run(tmp_path, experiment, *extra):
    code, output = cli("sparsesweep", f"+experiment={experiment}", "hydra.sweeper.dry_run=true", *extra,
                       f"hydra.sweep.dir={tmp_path / experiment}", cwd=tmp_path)
    planned = [line for line in output.splitlines() if line.startswith("#")]
    assert code == 0, output
    return [dict(item.split("=", 1) for item in line.split()[2:] if "=" in item) for line in planned]


@pytest.mark.slow
@pytest.mark.parametrize("experiment, rows, reference", [
    ("table3", {("tinyimagenet", "20"), ("tinyimagenet", "40"), ("imagenet", "40")}, 40),
    ("table4", {("imagenet", "90"), ("imagenet", "60")}, 90),
    ("table5", {("imagenet", "32"), ("imagenet", "64")}, 64),
])
def test_tables_3_to_5_run_the_papers_rows_at_a_fixed_number_of_iterations(tmp_path, experiment, rows, reference):
    from omegaconf import OmegaConf

    from conftest import compose_config
    from sparsesweep.optim import plan_schedule

    planned = dry_run(tmp_path, experiment)
    config = compose_config([f"+experiment={experiment}"])
    settings = {(run.get("dataset", config.dataset.name), run.get("batch_size", str(config.batch_size)))
                for run in planned}
    assert settings == rows and len(planned) == 3 * len(rows)
    assert config.schedule.iterations_at_batch_size == reference
    for train_size in (100_000, 1_281_167):  # Tiny-ImageNet's and ImageNet's training sets
        steps = {plan_schedule(OmegaConf.create(OmegaConf.to_container(config.schedule)), train_size,
                               int(batch)).total_steps for _, batch in rows}
        assert len(steps) == 1


@pytest.mark.slow
def test_the_claims_grids_give_every_claim_its_cells_with_3_seeds(tmp_path):
    for experiment in ("claims", "claims_cpu"):
        planned = dry_run(tmp_path, experiment)
        assert len(planned) == 60 and {run["seed"] for run in planned} == {"0", "1", "2"}, experiment
        settings = {tuple(sorted((k, v) for k, v in run.items() if k not in ("seed", "+experiment")))
                    for run in planned}
        assert len(settings) == 20
        adam_sgd = {(run.get("optimizer", "adam"), run.get("regularizer.l2", run.get("regularizer")))
                    for run in planned if "batch_size" not in run and "dataset" not in run
                    and not any(key.startswith("model.") for key in run)}
        # claim 1 at three coefficients, claim 4 a trend over three, Fig. 2's settings for claim 10a
        assert {("adam", c) for c in ("0.001", "0.0001", "1e-05", "none")} <= adam_sgd
        assert {("sgd", c) for c in ("0.001", "0.0001", "1e-05", "none")} <= adam_sgd


@pytest.mark.parametrize("experiment, train_size, steps", [("claims", 60_000, 406_500), ("claims_cpu", 12_000, 6_000)])
def test_the_claims_grids_train_the_steps_and_cost_the_gpu_hours_the_docs_give(experiment, train_size, steps):
    from omegaconf import OmegaConf

    from conftest import compose_config
    from sparsesweep.optim import plan_schedule

    config = compose_config([f"+experiment={experiment}"])
    schedule = OmegaConf.create(OmegaConf.to_container(config.schedule))
    assert {plan_schedule(schedule, train_size, batch).total_steps for batch in (20, 40, 80)} == {steps}
    text = " ".join((ROOT / "docs" / "reproducing.md").read_text().split())
    assert f"{steps:,} steps" in text or f"{steps:,})" in text
    if experiment == "claims":  # 60 runs at gpu_check's target of 1,300 aggregate steps/s
        assert f"60 runs × {steps:,} = {60 * steps / 1e6:.1f} M steps" in text
        assert f"about {60 * steps / 1300 / 3600:.1f} GPU-hours" in text


def test_the_package_still_never_imports_torch_or_the_trainer():
    code = ("import sys, multirun_analysis.__main__, multirun_analysis.claims, multirun_analysis.report, "
            "multirun_analysis.paper_cells; "
            "assert not {'torch', 'sparsesweep'} & set(sys.modules), sorted(sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert done.returncode == 0, done.stderr


# ---- real sweeps ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_smoke_sweep_gets_one_row_or_more_per_claim_each_with_a_valid_verdict(tmp_path):
    sweep = tmp_path / "sweep"
    code, output = cli("sparsesweep", "-m", *SMOKE, "optimizer=adam,sgd", "regularizer.l2=1e-3,1e-5", "seed=0,1",
                       f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert code == 0, output
    code, output = cli("multirun_analysis", "claims", str(sweep), "--format", "csv", cwd=sweep, stderr=False)
    assert code == 0, output
    rows = parse_csv(output)
    assert list(rows[0]) == list(claims.COLUMNS)
    assert sorted({row["claim"] for row in rows}, key=NUMBERS.index) == NUMBERS
    assert all(row["verdict"] in claims.VERDICTS for row in rows)
    by_claim = {number: [row for row in rows if row["claim"] == number] for number in NUMBERS}
    # What the sweep holds decides which claims it speaks to, not what 60 steps of training gave.
    (first,) = by_claim["1"]
    assert [first[key] for key in ("cell_a", "a_n", "cell_b", "b_n")] == ["adam", "2", "sgd", "2"]
    assert first["verdict"] != NO_RUNS and first["levelled"] in ("4/4", "3/4", "2/4", "1/4", "0/4")
    assert {(row["cell_a"], row["cell_b"]) for row in by_claim["10a"]} == {("adam", "sgd")}
    assert len(by_claim["10a"]) == 1 + 7  # Fig. 2's betas, and the selectivity of each of the 7 layers, at 1e-5
    assert [row["verdict"] for row in by_claim["7"]] in ([HOLDS], [CONTRADICTED])
    assert [row["cell_a"] for row in by_claim["9"]] == ["C5–C7", "C5–C7"]  # adam at both; SGD is not adaptive
    assert [row["cell_a"] for row in by_claim["4"]] == ["L2 0.001", "L2 0.001"]  # adam and sgd: a trend each
    for number in ("2", "3", "5", "6", "8", "10b"):
        assert [row["verdict"] for row in by_claim[number]] == [NO_RUNS], number


@pytest.mark.slow
def test_todays_optimizers_train_in_a_smoke_sweep_and_are_extra_rows_of_claims_and_tables(tmp_path):
    sweep = tmp_path / "sweep"
    code, output = cli("sparsesweep", "-m", *SMOKE, "optimizer=sgd,adamw,nadam,radam,adafactor",
                       f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert code == 0 and "All 5 jobs ended: completed 5" in output, output
    code, output = cli("multirun_analysis", "claims", str(sweep), "--format", "csv", cwd=tmp_path, stderr=False)
    assert code == 0, output
    against_sgd = {(row["cell_a"], row["cell_b"], row["scope"]) for row in parse_csv(output) if row["claim"] == "1"}
    assert against_sgd == {(name, "sgd", "extension") for name in TODAYS}
    # Table 1 is of CIFAR: the same results, relabelled as CIFAR-10 runs, are its rows beyond the paper's.
    for number, path in enumerate(sorted(sweep.glob("*/results.json"))):
        results = json.loads(path.read_text())
        (tmp_path / "as_cifar" / str(number)).mkdir(parents=True)
        (tmp_path / "as_cifar" / str(number) / "results.json").write_text(json.dumps({**results, "dataset": "cifar10"}))
    code, table = cli("multirun_analysis", "table1", str(tmp_path / "as_cifar"), "--format", "csv", cwd=tmp_path)
    assert code == 0, table
    listed = {row.get("optimizer") for row in parse_csv(table)}
    assert set(TODAYS) <= listed, table


def test_runs_out_records_whether_each_run_levelled_off(runs, tmp_path, capsys):
    flat = runs.add("adam", 0, sparsity=30.0)
    rising = runs.add("adam", 1, sparsity=40.0, history=[5.0, 20.0, 40.0])
    torn = runs.add("adam", 2, sparsity=40.0, history=[5.0, 20.0, 40.0])
    (torn / "metrics.jsonl").write_text((torn / "metrics.jsonl").read_text().splitlines()[0] + "\n")  # 1 of 3 epochs
    bare = runs.add("sgd", 0, sparsity=0.0)
    (bare / "bn_history.npz").unlink()
    assert main(["runs", str(runs.root), "--out", str(tmp_path / "runs.csv")]) == 0
    capsys.readouterr()
    by_dir = {row["run_dir"]: row for row in parse_csv((tmp_path / "runs.csv").read_text())}
    assert (by_dir[str(flat)]["levelled_off"], by_dir[str(flat)]["sparsity_drift_points"]) == ("True", "0.0")
    assert (by_dir[str(rising)]["levelled_off"], by_dir[str(rising)]["more_steps"]) == ("False", "40")
    assert by_dir[str(torn)]["levelled_off"] == by_dir[str(bare)]["levelled_off"] == ""  # cannot tell


def test_claim_1_stays_open_while_a_coefficient_still_might_hold(runs):
    runs.pair([3.0, 3.2, 3.6], [0.0, 0.2, 0.4])                                            # 1e-3: weaker
    runs.pair([30.0, 31.0, 32.0], [0.0, 0.2, 0.4], **l2(1e-4))                              # 1e-4: still climbing
    runs.add("adam", 3, 33.0, history=[5.0, 20.0, 40.0], **l2(1e-4))
    (row,) = runs.rows("1")
    assert row["verdict"] == NOT_CONVERGED and "coefficient 0.001: weaker" in row["note"]


# ---- the summary ------------------------------------------------------------------------------------------------

def test_claims_ends_with_its_rows_counted_per_verdict_and_with_one_seed_how_to_add_seeds(runs, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # a line is a line
    halves = {"sparsity.by_gamma.per_layer_pct": dict(zip(LAYERS, (0, 0, 0, 10, 30, 40, 50)))}
    for optimizer, sparsity in (("adam", 40.0), ("sgd", 0.0), ("nadam", 30.0)):
        runs.add(optimizer, 0, sparsity, test_error=10.0, zeroed_test_error=10.0, nested=halves)
    assert main(["claims", str(runs.root)]) == 0
    *_, counts, hint = capsys.readouterr().out.splitlines()
    # 1 (adam vs sgd) and 9 (adam): no interval from one seed; 7: exact; the other 8 of the paper's 11: no runs.
    # Extensions: nadam in 1 and 9, and claim 11 (adam vs sgd, per architecture); 12a, 12b: no counters, no runs.
    assert counts == ("11 rows of the paper's claims: 1 holds, 2 inconclusive, 8 no runs; "
                      "5 of extensions: 3 inconclusive, 2 no runs")
    assert hint == claims.ONE_SEED_HINT and "seed=0,1,2" in hint
    assert main(["claims", str(runs.root), "--format", "csv"]) == 0  # the csv stays a table; the lines: stderr
    captured = capsys.readouterr()
    verdicts = parse_csv(captured.out)
    assert len(verdicts) == 16 and captured.err.splitlines() == [counts, hint]
    runs.add("adam", 1, 42.0, test_error=10.0, zeroed_test_error=10.0, nested=halves)  # one cell with 2 seeds
    assert main(["claims", str(runs.root), "--format", "markdown"]) == 0
    last = capsys.readouterr().out.rstrip("\n").splitlines()[-1]
    assert last.startswith("11 rows of the paper's claims: ") and "seed=0,1,2" not in last
    assert main(["claims", "--paper"]) == 0  # the paper's cells are 3-run means: no hint
    assert "seed=0,1,2" not in capsys.readouterr().out
