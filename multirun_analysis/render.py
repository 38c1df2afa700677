"""A built table (tables.build) as text: terminal, markdown, LaTeX, or CSV (numbers only); and the escaping each
output format needs for text that comes from run files (an optimizer's name, an override, an error message).
"""
from __future__ import annotations

import math
from typing import Callable

import pandas as pd
from rich.text import Text

from multirun_analysis import terminal
from multirun_analysis.tables import ERROR, TableSpec, best_rows
from rundir_format.text import printable

MISSING = "–"
FORMATS = ("terminal", "markdown", "latex", "csv")


# ---- escaping, one function per output format ------------------------------------------------------------------

LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                 "±": r"$\pm$", "Δ": r"$\Delta$", "γ": r"$\gamma$", "−": "$-$", "–": "--"}
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what makes a spreadsheet read a cell as a formula


def one_line(text) -> str:
    """Text on one line: a line break as a space, any other control character shown escaped (printable)."""
    return printable(str(text).replace("\r\n", " ").replace("\r", " ").replace("\n", " "))


def latex_text(text) -> str:
    """Text as LaTeX typesets it: on one line, its special characters escaped, our symbols in math mode."""
    return "".join(LATEX_SPECIAL.get(character, character) for character in one_line(text))


def markdown_text(text) -> str:
    """Text for one markdown table cell: on one line (a newline would end the row), a pipe escaped (it would
    end the cell)."""
    return one_line(text).replace("|", r"\|")


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def csv_cell(value):
    """A CSV cell a spreadsheet shows as written: text starting like a formula (= + - @) gets a leading
    apostrophe; numbers, and text that reads as one (-0.5), are left as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_START) and not is_number(value):
        return "'" + value
    return value


def csv_text(frame: pd.DataFrame, index: bool) -> str:
    """frame.to_csv, each text cell, index value and header through csv_cell; lines end in CRLF (RFC 4180), so
    that a cell holding a carriage return or a newline is quoted, its text kept exactly."""
    safe = frame.map(csv_cell) if len(frame.columns) else frame.copy()
    safe.columns = [csv_cell(str(column)) for column in frame.columns]
    if index:
        safe.index = safe.index.map(lambda key: tuple(map(csv_cell, key)) if isinstance(key, tuple) else csv_cell(key))
        safe.index.names = frame.index.names
    return safe.to_csv(index=index, lineterminator="\r\n")


def mathtext_text(text) -> str:
    """Text for a matplotlib title or label: a `$` would start mathtext."""
    return str(text).replace("$", r"\$")


# ---- cells ---------------------------------------------------------------------------------------------------

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


def digits(metric: str) -> int:
    """Decimals shown: 2 for errors and losses, 1 for percentages of features and the rest."""
    return 2 if any(word in metric for word in ("error", "loss", "top")) else 1


def cells(spec: TableSpec, table: pd.DataFrame, show_paper: bool, bold: Callable[[str], str],
          escape: Callable[[str], str] = str) -> pd.DataFrame:
    """Per (group, metric): a text column for ours and one for the paper with our delta; every text through
    `escape`, the lowest test error per block through `bold` after it."""
    marks = best_rows(spec, table)
    error_metric = next((m for m, c in spec.metrics.items() if c == ERROR), None)
    out = {}
    for group, metric in dict.fromkeys((g, m) for g, m, _ in table.columns):
        d = digits(metric)
        ours = []
        for position, (mean, std, n) in enumerate(zip(table[(group, metric, "mean")], table[(group, metric, "std")],
                                                      table[(group, metric, "n")])):
            text = escape(mean_std_n(mean, std, n, d))
            if metric == error_metric and position in marks.get(group, ()):
                text = bold(text)
            ours.append(text)
        out[(group, metric, "ours")] = ours
        if show_paper:
            out[(group, metric, "paper (Δ)")] = [escape(
                MISSING if math.isnan(paper) else
                _fmt(paper, d) + ("" if math.isnan(delta) else f" ({delta:+.{d}f})"))
                for paper, delta in zip(table[(group, metric, "paper")], table[(group, metric, "delta")])]
    frame = pd.DataFrame(out, index=table.index.map(
        lambda key: tuple(map(escape, key)) if isinstance(key, tuple) else escape(key)))
    frame.index.names = table.index.names
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
    """A flat frame as a markdown table, its columns as the header (no index); cells escaped."""
    lines = ["| " + " | ".join(markdown_text(cell) for cell in row) + " |"
             for row in [list(frame.columns), *frame.values.tolist()]]
    lines.insert(1, "|" + "---|" * len(frame.columns))
    return "\n".join(lines)


def terminal_tables(spec: TableSpec, table: pd.DataFrame, show_paper: bool) -> list:
    """The table for a terminal: one rich table per column group (dataset), so that each fits the width; each
    metric one column, ours above the paper's value (Δ)."""
    text = cells(spec, table, show_paper, lambda s: f"{s}*")
    keys = [name or "" for name in text.index.names]
    parts = []
    for group in (dict.fromkeys(column[0] for column in text.columns) if spec.datasets else [None]):
        part = text[group] if group is not None else text
        metrics = list(dict.fromkeys(metric for metric, _ in part.columns))
        stats = ["ours", "paper (Δ)"] if show_paper else ["ours"]
        headers = [f"{metric.replace('_', ' ')}\n" + "\n".join(stats) for metric in metrics]  # wraps at the spaces
        rows = [[*(key if isinstance(key, tuple) else (key,)),  # run data: shown escaped
                 *(Text("\n".join(values[(metric, stat)] for stat in stats)) for metric in metrics)]
                for key, values in zip(part.index, (dict(zip(part.columns, row)) for row in part.values.tolist()))]
        parts += [f"{spec.title}: {group}" if group else spec.title,
                  terminal.table(keys + headers, rows, numbers_from=len(keys))]
    return parts


def render(spec: TableSpec, table: pd.DataFrame, fmt: str = "terminal", show_paper: bool = True) -> str:
    if fmt == "csv":
        flat = table.copy()
        flat.columns = ["_".join(p for p in column if p) for column in table.columns]
        return csv_text(flat, index=True)
    if fmt == "markdown":
        body = flat_columns(cells(spec, table, show_paper, lambda s: f"**{s}**"))
        title, key = f"**{markdown_text(spec.title)}**", legend(spec, show_paper, "bold")
        return f"{title}\n\n{markdown_table(body)}\n\n{key}\n"
    if fmt == "latex":
        body = flat_columns(cells(spec, table, show_paper, lambda s: f"\\textbf{{{s}}}", latex_text))
        rows = [" & ".join(row) + r" \\" for row in body.values.tolist()]
        header = " & ".join(latex_text(column) for column in body.columns) + r" \\"
        return "\n".join([f"% {spec.title}", r"\begin{tabular}{" + "l" * len(body.columns) + "}", r"\toprule",
                          header, r"\midrule", *rows, r"\bottomrule", r"\end{tabular}"]) + "\n"
    return terminal.text([*terminal_tables(spec, table, show_paper), legend(spec, show_paper, "*")])
