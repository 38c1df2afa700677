"""The statistics behind a claim's verdicts: one linear model per claim and metric, its variance pooled across the
claim's cells; each row a contrast of cell means judged against the claim's margin; Holm's correction within a
claim. docs/reproducing.md ("The rule") says the same for people.

The model. A claim's rows compare cells (the runs of one setting: its seeds). The value y of run s in cell i is
  paired:   y = mu_i + b_(k,s) + e    b: one effect per seed within each block k (the cells a claim compares
                                         with each other, which share the randomness of a seed: its initial
                                         weights and its batches)
  unpaired: y = mu_i + e
with e ~ N(0, sigma^2), sigma^2 one for the whole claim (pooled across its cells), fitted by least squares. A row's
estimate is a contrast L = sum_i w_i mu_i (a difference: w = +1, -1; a trend: the least-squares slope of
the cell means on the levels' scale; one cell against a bound: w = 1), its standard error
sigma * sqrt(w' (X'X)^-1 w), with the model's residual degrees of freedom. Paired, a seed one cell of a block
lacks still counts (the seed effect is estimated from the cells that have it); paired with 2 cells and complete
seeds, this is the paired t on the differences with its variance pooled over the claim.

Summaries. The paper gives each cell as a mean of 3 runs without a spread: such cells have no residuals, so
their rows are judged on the means alone (an interval of zero width), and say so.

The verdict of a row: its interval at the row's Holm confidence (below) against 0 and the margin m, by the kind of
claim. A claim that side a exceeds side b (GREATER; the estimate is a - b, or the slope in the claimed direction):
  holds         low > m                 beyond the margin
  contradicted  high < 0                the other direction
  weaker        0 < low, high <= m      the claimed direction, surely less than the margin
  negligible    -m <= low, high <= m    within the margin either way, direction unknown (an equivalence test)
  inconclusive  otherwise
A claim that two cells are comparable (EQUIVALENT): holds when -m <= low and high <= m, contradicted when
low > m or high < -m, else inconclusive. A claim that a value stays under a bound (BELOW: the estimate is the
cell's mean): holds when high < m, contradicted when low > m, else inconclusive.

Holm within a claim: the judged rows of a claim (those with an interval) are sorted by the p-value of the
claim's own statement (GREATER: L > m; EQUIVALENT: |L| < m, the larger of the two one-sided p; BELOW: L < m;
each one-sided p doubled, to match a two-sided interval); the k-th of m is judged with the interval at
confidence 1 - ALPHA / (m - k + 1), and once a row does not hold, it and every row after it are judged at that
row's level (Holm stops: what comes after is not accepted at a looser one). Bounds are compared rounded to
PRECISION decimals, so that 12.1 - 10.1 is exactly 2 points, as its decimals say.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

ALPHA = 0.05     # familywise, within a claim: 95 % intervals before Holm's correction
PRECISION = 9    # decimals compared: percentages are far coarser, float sums are not
GREATER, EQUIVALENT, BELOW = "greater", "equivalent", "below"
HOLDS, WEAKER, CONTRADICTED, NEGLIGIBLE, INCONCLUSIVE = "holds", "weaker", "contradicted", "negligible", "inconclusive"
# Verdicts given before any statistics (claims.py, mechanism.py): docs/reproducing.md, "Verdicts"
NOT_APPLICABLE, NOT_CONVERGED, NO_RUNS = "not applicable", "not converged", "no runs"


@dataclass(eq=False)
class Sample:
    """One cell's values of one metric: per seed (runs) or as the paper gives them (mean of n, no spread)."""
    by_seed: pd.Series | None = None   # seed -> value
    summary_mean: float | None = None
    summary_n: int = 0

    @property
    def mean(self) -> float:
        return float(self.by_seed.mean()) if self.by_seed is not None else self.summary_mean

    @property
    def sd(self) -> float:
        return float(self.by_seed.std(ddof=1)) if self.by_seed is not None and len(self.by_seed) > 1 else math.nan

    @property
    def n(self) -> int:
        return len(self.by_seed) if self.by_seed is not None else self.summary_n

    @property
    def summarized(self) -> bool:
        return self.by_seed is None


@dataclass(eq=False)
class Contrast:
    """A row's estimate: sum of weight x cell mean. `block`: any object naming the
    cells whose seeds pair (a claim's context), None for an unpaired claim; paired contrasts weigh to 0 within
    their block (a difference, a slope), so the seed effects cancel from the estimate."""
    samples: list[Sample]
    weights: list[float]
    kind: str
    margin: float
    block: object = None
    # filled by fit():
    estimate: float = math.nan
    se: float = math.nan
    df: int = 0
    n: int = 0


def fit(contrasts: list[Contrast]) -> None:
    """Fits one model over every cell of `contrasts` (one claim, one metric) and sets each contrast's estimate,
    standard error and degrees of freedom. Paired contrasts (a block) get seed effects within their block."""
    samples = list({id(sample): sample for contrast in contrasts for sample in contrast.samples}.values())
    if any(sample.summarized for sample in samples):
        for contrast in contrasts:  # the paper's means: no residuals, the estimate alone
            contrast.estimate = sum(w * s.mean for w, s in zip(contrast.weights, contrast.samples))
            contrast.se, contrast.df = 0.0, 0
            contrast.n = sum(sample.n for sample in contrast.samples)
        return
    block_of = {id(sample): contrast.block for contrast in contrasts for sample in contrast.samples}
    for block in {id(contrast.block): contrast.block for contrast in contrasts if contrast.block is not None}.values():
        members = [sample for sample in samples if block_of[id(sample)] is block]
        if not linked_by_seeds(members):  # the seed effects would stand for the cells: compare them unpaired
            for contrast in contrasts:
                if contrast.block is block:
                    contrast.block = None
            block_of.update({id(sample): None for sample in members})
    index = {id(sample): i for i, sample in enumerate(samples)}
    rows, ys, seed_columns = [], [], {}
    for sample in samples:
        block = block_of[id(sample)]
        for seed, value in sample.by_seed.items():
            if block is not None:
                seed_columns.setdefault((id(block), seed), len(seed_columns))
            rows.append((index[id(sample)], None if block is None else (id(block), seed)))
            ys.append(float(value))
    # One seed column per (block, seed) but the first of each block (absorbed by the cell means).
    firsts = {}
    for key in seed_columns:
        firsts.setdefault(key[0], key)
    kept = [key for key in seed_columns if firsts[key[0]] != key]
    column_of = {key: len(samples) + position for position, key in enumerate(kept)}
    design = np.zeros((len(rows), len(samples) + len(kept)))
    for row, (cell, seed_key) in enumerate(rows):
        design[row, cell] = 1.0
        if seed_key in column_of:
            design[row, column_of[seed_key]] = 1.0
    y = np.asarray(ys)
    gram_inverse = np.linalg.pinv(design.T @ design)
    coefficients = gram_inverse @ design.T @ y
    rank = np.linalg.matrix_rank(design)
    df = int(len(y) - rank)
    residual = y - design @ coefficients
    sigma2 = float(residual @ residual) / df if df > 0 else math.nan
    for contrast in contrasts:
        weights = np.zeros(design.shape[1])
        for w, sample in zip(contrast.weights, contrast.samples):
            weights[index[id(sample)]] += w
        contrast.estimate = float(weights @ coefficients)
        contrast.se = math.sqrt(max(float(weights @ gram_inverse @ weights), 0.0) * sigma2) if df > 0 else math.nan
        contrast.df, contrast.n = df, sum(sample.n for sample in contrast.samples)


def linked_by_seeds(samples: list[Sample]) -> bool:
    """Whether the cells are linked through the seeds they share (each to each, through others): only then do
    seed effects leave their differences estimable."""
    seeds = [set(sample.by_seed.index) for sample in samples]
    reached, frontier = {0}, [0]
    while frontier:
        current = frontier.pop()
        for other in range(len(samples)):
            if other not in reached and seeds[current] & seeds[other]:
                reached.add(other)
                frontier.append(other)
    return len(reached) == len(samples)


def t_quantile(df: int, probability: float) -> float:
    from scipy.special import stdtrit  # loaded by the one command that needs it

    return float(stdtrit(df, probability))


def t_sf(df: int, t: float) -> float:
    """P(T > t) for Student's t with df degrees of freedom."""
    from scipy.special import stdtr

    return float(stdtr(df, -t))


def one_sided_p(contrast: Contrast, above: float | None = None, below: float | None = None) -> float:
    """The p-value of 'L > above' (or 'L < below'): from t, or for an interval of zero width 0 when the
    estimate lies strictly beyond, else 1."""
    estimate = round(contrast.estimate, PRECISION)
    if contrast.se == 0:
        return 0.0 if (estimate > above if above is not None else estimate < below) else 1.0
    if above is not None:
        return t_sf(contrast.df, (contrast.estimate - above) / contrast.se)
    return t_sf(contrast.df, (below - contrast.estimate) / contrast.se)


def statement_p(contrast: Contrast) -> float:
    """The p-value of the claim's own statement, doubled (a two-sided interval's level); 1 without an interval."""
    if not judgeable(contrast):
        return 1.0
    m = contrast.margin
    if contrast.kind == GREATER:
        p = one_sided_p(contrast, above=m)
    elif contrast.kind == BELOW:
        p = one_sided_p(contrast, below=m)
    else:
        p = max(one_sided_p(contrast, above=-m), one_sided_p(contrast, below=m))
    return min(1.0, 2 * p)


def judgeable(contrast: Contrast) -> bool:
    return contrast.se == 0 or (contrast.df > 0 and math.isfinite(contrast.se))


def interval(contrast: Contrast, alpha: float) -> tuple[float, float]:
    if contrast.se == 0:
        return contrast.estimate, contrast.estimate
    half = t_quantile(contrast.df, 1 - alpha / 2) * contrast.se
    return contrast.estimate - half, contrast.estimate + half


def verdict(kind: str, low: float, high: float, margin: float) -> str:
    """The verdict of an interval [low, high] on a claim of `kind` with margin m (module docstring)."""
    low, high, m = (round(value, PRECISION) for value in (low, high, margin))
    if kind == GREATER:
        if low > m:
            return HOLDS
        if high < 0:
            return CONTRADICTED
        if low > 0 and high <= m:
            return WEAKER
        if low >= -m and high <= m:
            return NEGLIGIBLE
        return INCONCLUSIVE
    if kind == EQUIVALENT:
        if low >= -m and high <= m:
            return HOLDS
        return CONTRADICTED if low > m or high < -m else INCONCLUSIVE
    if high < m:
        return HOLDS
    return CONTRADICTED if low > m else INCONCLUSIVE


@dataclass
class Judgement:
    verdict: str
    low: float
    high: float
    confidence: float


def holm(contrasts: list[Contrast]) -> list[Judgement | None]:
    """Each contrast's verdict and interval at its Holm level (module docstring); None for those without an
    interval (no residual degrees of freedom)."""
    judged = [i for i, contrast in enumerate(contrasts) if judgeable(contrast)]
    order = sorted(judged, key=lambda i: statement_p(contrasts[i]))
    results: list[Judgement | None] = [None] * len(contrasts)
    alpha, stepping = ALPHA, True
    for k, i in enumerate(order):
        if stepping:
            alpha = ALPHA / (len(order) - k)
        low, high = interval(contrasts[i], alpha)
        outcome = verdict(contrasts[i].kind, low, high, contrasts[i].margin)
        results[i] = Judgement(outcome, low, high, 1 - alpha)
        stepping = stepping and outcome == HOLDS
    return results
