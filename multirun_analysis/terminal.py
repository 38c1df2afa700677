"""Output for people (rich): tables without an index column that fit the terminal's width (COLUMNS when it is
set), cells wrapped rather than cut, colour only on a terminal. Output to a pipe or a file without COLUMNS is
not wrapped: one line per row, for grep. Every cell and line is taken as plain text, never as rich markup: run
files may hold any characters, and every control character of a str cell or line (an escape sequence, a newline)
is shown escaped (rundir_format.text.printable). What a command composes over several lines is passed as rich
Text, which is shown as it is."""
from __future__ import annotations

import io
import os
import sys

from rich.console import Console
from rich.table import Table
from rich.text import Text

from rundir_format.text import printable

UNWRAPPED = 1_000_000  # the width of output that is not wrapped
MIN_WRAPPED = 30       # the least a column that wraps first keeps
# Colours of the words that say how a run or a claim stands (on a terminal only).
STYLES = {"completed": "green", "holds": "green", "running": "cyan", "failed": "red", "unreadable": "red",
          "conflict": "red", "contradicted": "red", "diverged": "yellow", "inconclusive": "yellow",
          "interrupted": "magenta", "duplicate": "dim", "missing": "dim", "no runs": "dim"}


def width(file) -> int:
    """COLUMNS, else the width of the terminal `file` is, else UNWRAPPED."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        return os.get_terminal_size(file.fileno()).columns
    except (AttributeError, ValueError, OSError, io.UnsupportedOperation):  # not a terminal, or no file at all
        return UNWRAPPED


def console(file=None) -> Console:
    """A console on `file` (stdout): colour when it is a terminal, the terminal's width."""
    file = file or sys.stdout
    return Console(file=file, width=width(file), highlight=False, markup=False, emoji=False)


def styled(word: str) -> Text:
    return Text(word, style=STYLES.get(word, ""))


def cell(value) -> Text:
    """A cell or line: rich Text as it is (composed here), anything else as printable text."""
    return value if isinstance(value, Text) else Text("" if value is None else printable(value))


def table(headers: list[str], rows: list[list], numbers_from: int | None = None, wraps_first: int | None = None,
          file=None) -> Table:
    """A table: `headers`, then `rows` of text (or rich Text); columns from `numbers_from` on right-aligned.
    Where the width (of `file`, stdout) is short, column `wraps_first` gives up its width before the others,
    then the widest columns wrap first (at spaces; a word longer than its column folds)."""
    grid = Table(box=None, pad_edge=False, header_style="bold")  # no rule: a line per row, the header first
    natural = [max(len(line) for text in [Text(header), *(cell(row[position]) for row in rows)]
                   for line in text.plain.splitlines() or [""]) for position, header in enumerate(headers)]
    for position, header in enumerate(headers):
        numeric = numbers_from is not None and position >= numbers_from
        left = width(file or sys.stdout) - sum(natural) + natural[position] - 2 * (len(headers) - 1)
        grid.add_column(Text(header), justify="right" if numeric else "left", overflow="fold",
                        max_width=max(left, MIN_WRAPPED) if position == wraps_first else None)
    for row in rows:
        grid.add_row(*map(cell, row))
    return grid


def show(*renderables, file=None) -> None:
    """Prints tables and lines (str: plain text) to `file` (stdout), without the spaces that pad a line's end."""
    file = file or sys.stdout
    out = console(file)
    with out.capture() as captured:
        for renderable in renderables:
            out.print(cell(renderable) if isinstance(renderable, str) else renderable)
    file.write("\n".join(line.rstrip() for line in captured.get().split("\n")))


def text(renderables: list) -> str:
    """What show() prints, as plain text without colour (for a file, or to print as a string)."""
    buffer = io.StringIO()
    show(*renderables, file=buffer)
    return buffer.getvalue()
