"""A built table (tables.build) as text: terminal, markdown, LaTeX, or CSV (numbers only)."""
from __future__ import annotations

import math

import pandas as pd

from multirun_analysis.tables import TableSpec, best_rows

MISSING = "–"
FORMATS = ("terminal", "markdown", "latex", "csv")


def _fmt(value: float, digits: int) -> str:
    return MISSING if value is None or math.isnan(value) else f"{value:.{digits}f}"


def mean_std_n(mean: float, std: float, n: int, digits: int) -> str:
    """A cell as the tables show it: `mean ±std (n)`, the std only from two runs up."""
    text = _fmt(mean, digits)
    if n > 1:
        text += f" ±{_fmt(std, digits)}"
    if n:
        text += f" ({n})"
    return text


def _digits(metric: str) -> int:
    return 2 if "loss" in metric or "top" in metric else 1


def cells(spec: TableSpec, table: pd.DataFrame, show_paper: bool, bold) -> pd.DataFrame:
    """Per (group, metric): a text column for ours and one for the paper with our delta."""
    marks = best_rows(spec, table)
    error_metric = next((m for m, c in spec.metrics.items() if c == "test_error"), None)
    out = {}
    for group, metric in dict.fromkeys((g, m) for g, m, _ in table.columns):
        d = _digits(metric)
        ours = []
        for position, (mean, std, n) in enumerate(zip(table[(group, metric, "mean")], table[(group, metric, "std")],
                                                      table[(group, metric, "n")])):
            text = mean_std_n(mean, std, n, d)
            if metric == error_metric and position in marks.get(group, ()):
                text = bold(text)
            ours.append(text)
        out[(group, metric, "ours")] = ours
        if show_paper:
            out[(group, metric, "paper (Δ)")] = [
                MISSING if math.isnan(paper) else
                _fmt(paper, d) + ("" if math.isnan(delta) else f" ({delta:+.{d}f})")
                for paper, delta in zip(table[(group, metric, "paper")], table[(group, metric, "delta")])]
    frame = pd.DataFrame(out, index=table.index)
    frame.columns = pd.MultiIndex.from_tuples(frame.columns) if out else frame.columns
    if not spec.datasets:
        frame.columns = frame.columns.droplevel(0)
    return frame


def flat_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """One header row, for markdown and LaTeX."""
    flat = frame.copy()
    flat.columns = [" ".join(p for p in (c if isinstance(c, tuple) else (c,)) if p) for c in frame.columns]
    return flat.reset_index()


def legend(spec: TableSpec, show_paper: bool, marked_as: str) -> str:
    """What the cells mean; marked_as: how the lowest error per block looks ('bold', '*')."""
    text = "ours: mean ±std (runs); " + ("paper (ours − paper); " if show_paper else "") + "– no completed run"
    return text + (f"; {marked_as}: lowest test error per block" if spec.best_within else "")


def markdown_table(frame: pd.DataFrame) -> str:
    """A flat frame as a markdown table, its columns as the header (no index)."""
    lines = ["| " + " | ".join(map(str, row)) + " |" for row in [list(frame.columns), *frame.values.tolist()]]
    lines.insert(1, "|" + "---|" * len(frame.columns))
    return "\n".join(lines)


def render(spec: TableSpec, table: pd.DataFrame, fmt: str = "terminal", show_paper: bool = True) -> str:
    if fmt == "csv":
        flat = table.copy()
        flat.columns = ["_".join(p for p in column if p) for column in table.columns]
        return flat.to_csv()
    if fmt == "markdown":
        body = flat_columns(cells(spec, table, show_paper, lambda s: f"**{s}**"))
        return f"**{spec.title}**\n\n" + markdown_table(body) + f"\n\n{legend(spec, show_paper, 'bold')}\n"
    if fmt == "latex":
        body = flat_columns(cells(spec, table, show_paper, lambda s: f"\\textbf{{{s}}}"))
        rows = [" & ".join(map(str, row)) + r" \\" for row in body.values.tolist()]
        header = " & ".join(c.replace("_", r"\_") for c in body.columns) + r" \\"
        text = "\n".join([f"% {spec.title}", r"\begin{tabular}{" + "l" * len(body.columns) + "}", r"\toprule",
                          header, r"\midrule", *rows, r"\bottomrule", r"\end{tabular}"])
        return text.replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("–", "--") + "\n"
    text = cells(spec, table, show_paper, lambda s: f"{s}*").to_string()
    return f"{spec.title}\n{text}\n{legend(spec, show_paper, '*')}\n"
