"""The statistics of the claims (multirun_analysis/inference.py) and the levelling-off rule (convergence.py) on
hand-set numbers, against closed forms: the paired t, the two-way additive model with its variance pooled over
cells, the pooled two-sample t, a least-squares slope; each verdict at its boundaries; Holm's levels; and
hand-built histories that did and did not level off."""
import json
import math
import statistics

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from multirun_analysis import convergence, inference
from multirun_analysis.convergence import Point
from multirun_analysis.inference import (BELOW, CONTRADICTED, EQUIVALENT, GREATER, HOLDS, INCONCLUSIVE, NEGLIGIBLE,
                                         WEAKER, Contrast, Sample)


def seeds(*values) -> Sample:
    return Sample(by_seed=pd.Series(values, index=range(len(values)), dtype=float))


def difference(a: Sample, b: Sample, paired=True, margin=5.0, kind=GREATER) -> Contrast:
    return Contrast([a, b], [1.0, -1.0], kind, margin, block="context" if paired else None)


# ---- the model ---------------------------------------------------------------------------------------------------

def test_two_cells_paired_by_seed_is_the_paired_t():
    a, b = seeds(31.0, 45.0, 38.0, 52.0), seeds(10.0, 20.0, 15.0, 30.0)
    contrast = difference(a, b)
    inference.fit([contrast])
    d = [x - y for x, y in zip(a.by_seed, b.by_seed)]
    assert contrast.estimate == pytest.approx(statistics.mean(d))
    assert contrast.se == pytest.approx(statistics.stdev(d) / math.sqrt(4))
    assert contrast.df == 3


def test_paired_cells_pool_their_variance_over_the_claim_two_way_additive_model():
    """3 cells x 3 seeds, one block: residual e = y - row mean - column mean + grand mean, sigma^2 = SS / 4."""
    table = {"adam": (40.0, 44.0, 41.0), "adamax": (10.0, 13.0, 12.0), "sgd": (0.0, 1.0, 0.5)}
    samples = {name: seeds(*values) for name, values in table.items()}
    contrasts = [difference(samples["adam"], samples["sgd"]), difference(samples["adamax"], samples["sgd"])]
    inference.fit(contrasts)
    grand = statistics.mean(v for values in table.values() for v in values)
    rows = {name: statistics.mean(values) for name, values in table.items()}
    columns = [statistics.mean(values[s] for values in table.values()) for s in range(3)]
    ss = sum((values[s] - rows[name] - columns[s] + grand) ** 2 for name, values in table.items() for s in range(3))
    sigma = math.sqrt(ss / 4)
    for contrast, name in zip(contrasts, ("adam", "adamax")):
        assert contrast.estimate == pytest.approx(rows[name] - rows["sgd"])
        assert contrast.se == pytest.approx(sigma * math.sqrt(2 / 3))
        assert contrast.df == 4


def test_unpaired_cells_pool_their_variance_the_two_sample_t():
    a, b = seeds(30.0, 34.0, 35.0), seeds(20.0, 21.0, 25.0, 26.0)
    contrast = difference(a, b, paired=False)
    inference.fit([contrast])
    pooled = (2 * statistics.variance(a.by_seed) + 3 * statistics.variance(b.by_seed)) / 5
    assert contrast.estimate == pytest.approx(statistics.mean(a.by_seed) - statistics.mean(b.by_seed))
    assert contrast.se == pytest.approx(math.sqrt(pooled * (1 / 3 + 1 / 4)))
    assert contrast.df == 5
    expected = stats.ttest_ind(a.by_seed, b.by_seed)  # scipy's pooled two-sample t: the same statistic
    assert contrast.estimate / contrast.se == pytest.approx(expected.statistic)


def test_a_trend_is_the_least_squares_slope_of_the_cell_means():
    levels = {1e-5: seeds(1.0, 2.0), 1e-4: seeds(11.0, 13.0), 1e-3: seeds(19.0, 20.0)}
    x = [math.log10(level) for level in levels]
    centre, spread = statistics.mean(x), sum((v - statistics.mean(x)) ** 2 for v in x)
    weights = [(v - centre) / spread for v in x]
    contrast = Contrast(list(levels.values()), weights, GREATER, 5.0)
    inference.fit([contrast])
    means = [sample.mean for sample in levels.values()]
    assert contrast.estimate == pytest.approx(stats.linregress(x, means).slope)  # 9.25 points per decade
    pooled = statistics.mean(statistics.variance(sample.by_seed) for sample in levels.values())
    assert contrast.se == pytest.approx(math.sqrt(pooled * sum(w * w / 2 for w in weights)))
    assert contrast.df == 3


def test_a_seed_only_one_cell_ran_still_counts_towards_the_variance_not_the_difference():
    a, b = seeds(20.0, 22.0, 90.0), seeds(10.0, 11.0)  # seed 2: a only
    contrast = difference(a, b)
    inference.fit([contrast])
    assert contrast.estimate == pytest.approx(10.5)  # the paired seeds' difference
    assert contrast.df == 1                          # 5 values, 2 cells, 2 seed effects


def test_cells_no_seed_links_are_compared_unpaired():
    a, b = Sample(by_seed=pd.Series([30.0, 34.0], index=[0, 1])), Sample(by_seed=pd.Series([20.0, 21.0], index=[2, 3]))
    contrast = difference(a, b)
    inference.fit([contrast])
    assert contrast.block is None
    assert contrast.estimate / contrast.se == pytest.approx(stats.ttest_ind(a.by_seed, b.by_seed).statistic)


def test_the_papers_means_have_no_spread_and_give_a_point():
    contrast = difference(Sample(summary_mean=70.0, summary_n=3), Sample(summary_mean=0.0, summary_n=3), paired=False)
    inference.fit([contrast])
    assert (contrast.estimate, contrast.se, contrast.n) == (70.0, 0.0, 6)
    (judgement,) = inference.holm([contrast])
    assert (judgement.verdict, judgement.low, judgement.high) == (HOLDS, 70.0, 70.0)


def test_one_seed_per_cell_gives_no_interval():
    contrast = difference(seeds(30.0), seeds(10.0))
    inference.fit([contrast])
    assert contrast.estimate == 20.0 and contrast.df == 0
    assert inference.holm([contrast]) == [None]


# ---- the verdicts --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, low, high, verdict", [
    (GREATER, 5.1, 9.0, HOLDS),
    (GREATER, 5.0, 9.0, INCONCLUSIVE),      # touches the margin: not beyond it; the direction is sure
    (GREATER, 0.5, 4.0, WEAKER),
    (GREATER, 0.5, 5.0, WEAKER),            # up to the margin
    (GREATER, -1.0, 4.0, NEGLIGIBLE),       # within the margin either way, direction unknown
    (GREATER, -5.0, 5.0, NEGLIGIBLE),
    (GREATER, -6.0, 4.0, INCONCLUSIVE),
    (GREATER, -3.0, -0.5, CONTRADICTED),    # the other direction
    (GREATER, -9.0, -6.0, CONTRADICTED),
    (GREATER, 0.0, 0.0, NEGLIGIBLE),        # 0 vs 0
    (GREATER, 2.3 - 0.3, 2.0, WEAKER),      # 1.9999999999999998: 2 points, as its decimals say
    (EQUIVALENT, -4.0, 3.0, HOLDS),
    (EQUIVALENT, -5.0, 5.0, HOLDS),
    (EQUIVALENT, -6.0, 3.0, INCONCLUSIVE),
    (EQUIVALENT, 5.5, 9.0, CONTRADICTED),
    (EQUIVALENT, -9.0, -5.5, CONTRADICTED),
    (BELOW, -0.5, 0.9, HOLDS),
    (BELOW, -0.5, 1.0, INCONCLUSIVE),
    (BELOW, 1.5, 3.0, CONTRADICTED),
])
def test_each_verdict_at_its_boundaries(kind, low, high, verdict):
    margin = {GREATER: 5.0, EQUIVALENT: 5.0, BELOW: 1.0}[kind]
    if (low, high) == (2.3 - 0.3, 2.0):
        margin = 2.0
    assert inference.verdict(kind, low, high, margin) == verdict


def test_the_interval_is_the_t_interval_at_the_rows_level():
    a, b = seeds(16.0, 17.0, 19.0), seeds(0.0, 1.0, 0.5)
    contrast = difference(a, b)
    inference.fit([contrast])
    (judgement,) = inference.holm([contrast])
    half = stats.t.ppf(0.975, 2) * contrast.se
    assert (judgement.low, judgement.high) == pytest.approx((contrast.estimate - half, contrast.estimate + half))
    assert judgement.confidence == pytest.approx(0.95)


def test_holm_steps_down_by_the_p_value_of_each_rows_statement_and_stops_at_the_first_that_does_not_hold():
    clear, less, unclear = seeds(40.0, 41.0, 42.0), seeds(12.0, 14.0, 13.0), seeds(6.0, 4.0, 11.0)
    base = seeds(0.0, 0.0, 0.0)
    contrasts = [difference(unclear, base, paired=False), difference(clear, base, paired=False),
                 difference(less, base, paired=False)]
    inference.fit(contrasts)
    judged = inference.holm(contrasts)
    assert [j.confidence for j in judged] == pytest.approx([1 - 0.05 / 1, 1 - 0.05 / 3, 1 - 0.05 / 2])
    assert [j.verdict for j in judged[1:]] == [HOLDS, HOLDS]
    # p of 'L > 5' in the closed form of the pooled model: the order of the rows
    ps = [2 * stats.t.sf((c.estimate - 5) / c.se, c.df) for c in contrasts]
    assert ps[1] < ps[2] < ps[0] == pytest.approx(inference.statement_p(contrasts[0]))


def test_after_a_row_that_does_not_hold_holm_keeps_its_level():
    rows = [difference(seeds(*values), seeds(0.0, 0.0, 0.0), paired=False)
            for values in ((30.0, 31.0, 32.0), (5.0, 9.0, 7.0), (3.0, 8.0, 5.5))]
    inference.fit(rows)
    judged = inference.holm(rows)
    first, *rest = sorted(judged, key=lambda j: -j.confidence)
    assert first.verdict == HOLDS and first.confidence == pytest.approx(1 - 0.05 / 3)
    assert [j.confidence for j in rest] == pytest.approx([1 - 0.05 / 2] * 2)  # stopped at the second


# ---- levelling off ---------------------------------------------------------------------------------------------------

def history(values, steps_per_epoch=100, base_epochs=None, lr=1e-3):
    """Epoch ends: the base LR for base_epochs (all without), then x0.1."""
    base_epochs = len(values) if base_epochs is None else base_epochs
    return [Point(steps_per_epoch * (i + 1), lr if i < base_epochs else lr / 10, value)
            for i, value in enumerate(values)]


def drift_of(values, steps_per_epoch=100, span=None):
    """The least-squares slope of `values` at successive epoch ends, times 20 % of the span (closed form)."""
    return stats.linregress([steps_per_epoch * i for i in range(len(values))], values).slope * 0.2 * span


def test_a_flat_history_levelled_off():
    values = [0.0, 10.0, 15.0, 15.2, 15.5, 15.4, 15.6, 15.5, 15.6, 15.6]
    result = convergence.levelling(history(values, base_epochs=8))
    # base: 800 steps; its last 20 % holds 2 epoch ends (700, 800): the window reaches back to 3 (600-800)
    assert result.levelled and result.more_steps == 0
    assert result.drift == pytest.approx(drift_of([15.4, 15.6, 15.5], span=800))
    assert result.drift_after == pytest.approx(drift_of([15.5, 15.6, 15.6], span=1000))


def test_one_epochs_blip_does_not_decide():
    result = convergence.levelling(history([5.0] * 7 + [10.0, 12.0, 10.0]))
    assert result.levelled and result.drift == pytest.approx(0.0)


def test_still_rising_at_the_base_lr_slowing_geometrically():
    # 10 base epochs of 100 steps: 3 points per 100 steps from 600 to 800, then 1.5: the drift halves
    values = [0.0, 10.0, 20.0, 30.0, 37.0, 40.0, 43.0, 46.0, 47.5, 49.0]
    result = convergence.levelling(history(values))
    assert not result.levelled and result.drift == pytest.approx(3.0) and result.drift_after == pytest.approx(3.0)
    # windows of 200 steps until 3 (1/2)^k < 1: k = 2
    assert result.more_steps == 200 * math.ceil(math.log(1 / 3) / math.log(1 / 2)) == 400
    assert result.why == "drifting +3.0 points per 20% of its 1000 base-LR steps"


def test_a_climb_that_does_not_slow_has_no_end_in_sight_the_base_span_again():
    result = convergence.levelling(history([2.0 * i for i in range(10)]))
    assert not result.levelled and result.drift == pytest.approx(4.0) and result.more_steps == 1000
    result = convergence.levelling(history([10.0] * 6 + [14.0, 16.0, 14.0, 12.0]))  # turned down: no trend to follow
    assert not result.levelled and result.drift == pytest.approx(-4.0) and result.more_steps == 1000


def test_flat_at_the_base_lr_then_moving_after_the_cut():
    result = convergence.levelling(history([10.0] * 8 + [12.0, 14.0], base_epochs=8))
    assert not result.levelled and result.drift == 0 and result.drift_after == pytest.approx(4.0)
    assert result.why == "drifting +4.0 points per 20% of its 1000 steps"


def test_the_cut_hides_a_climb_so_the_base_window_decides():
    # climbing 3 points an epoch when the LR was cut, flat after: the last 20 % alone would say 'levelled'
    result = convergence.levelling(history([3.0 * i for i in range(1, 9)] + [24.1, 24.2], base_epochs=8))
    assert result.drift_after == pytest.approx(0.2)
    assert not result.levelled and result.drift == pytest.approx(drift_of([18.0, 21.0, 24.0], span=800)) == \
        pytest.approx(4.8)


def test_coarse_epochs_reach_back_to_three_epoch_ends():
    # 3 base epoch ends: the window reaches back to the first, and sees the climb that ends in it
    result = convergence.levelling(history([0.0, 5.0, 5.5, 5.6], base_epochs=3))
    assert not result.levelled and result.drift == pytest.approx(drift_of([0.0, 5.0, 5.5], span=300))


@pytest.mark.parametrize("points, why", [
    ([], "no history (metrics.jsonl and bn_history.npz)"),
    (history([5.0, 5.0], base_epochs=1), "1 point at the base LR: too few to tell whether it levelled off"),
])
def test_too_short_a_history_is_not_levelled_off(points, why):
    result = convergence.levelling(points)
    assert not result.levelled and result.why == why and result.more_steps is None


def test_a_runs_history_counts_gamma_below_1e_2_at_init_and_every_epoch_end(tmp_path):
    rows = [{"epoch": e, "step": 50 * e, "lr": 1e-3 if e < 3 else 1e-4, "train_loss": 1.0, "train_error": 50.0,
             "test_loss": 1.0, "test_error": 50.0, "sparsity_gamma_pct": 0.0, "time_s": 1.0} for e in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    gamma = np.array([[1.0, 1.0, 1.0, 1.0],
                      [5e-3, 1.0, 1.0, 1.0],       # |γ| < 1e-2: dead, though above 1e-3
                      [-5e-3, 2e-2, 1.0, 1.0],      # the sign does not count; 2e-2 is alive
                      [0.0, 9e-3, 1.0, 1.0]])
    np.savez(tmp_path / "bn_history.npz", epoch=np.arange(4), C1_gamma=gamma[:, :2], C2_gamma=gamma[:, 2:],
             C1_beta=gamma[:, :2])
    assert convergence.history(tmp_path) == [Point(0, 1e-3, 0.0), Point(50, 1e-3, 25.0), Point(100, 1e-3, 25.0),
                                             Point(150, 1e-4, 50.0)]
    np.savez(tmp_path / "bn_history.npz", epoch=np.arange(3), C1_gamma=gamma[:3])  # one epoch short: no history
    assert convergence.history(tmp_path) == []
    (tmp_path / "bn_history.npz").write_bytes(b"PK\x03\x04 torn")
    assert convergence.history(tmp_path) == []
