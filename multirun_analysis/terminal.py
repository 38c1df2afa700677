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

from rich.cells import cell_len
from rich.console import Console
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

from rundir_format.text import printable

UNWRAPPED = 1_000_000  # the width of output that is not wrapped
MIN_WRAPPED = 30       # the least a column that wraps first keeps
GAP = 2                # spaces between two columns (rich's padding of one on each side)
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
          file=None) -> Table | Aligned:
    """A table: `headers`, then `rows` of text (or rich Text); columns from `numbers_from` on right-aligned.
    Where the width (of `file`, stdout) is short, column `wraps_first` gives up its width before the others,
    then the widest columns wrap first (at spaces; a word longer than its column folds). A table that fits
    the width, every cell one line, is laid out here (Aligned: the lines rich's Table prints, without measuring
    and wrapping every cell again, which takes rich seconds for the 10,000 rows of a big sweep's `status`)."""
    header_cells = [Text(header, style="bold") for header in headers]
    body = [[cell(value) for value in row] for row in rows]
    natural = [max(cell_len(line) for text in [header_cells[position], *(row[position] for row in body)]
                   for line in text.plain.splitlines() or [""]) for position in range(len(headers))]
    numeric = [numbers_from is not None and position >= numbers_from for position in range(len(headers))]
    room = width(file or sys.stdout)
    if sum(natural) + GAP * (len(headers) - 1) <= room and not any(
            "\n" in text.plain for row in body for text in row):
        return Aligned([header_cells, *body], natural, numeric)
    grid = Table(box=None, pad_edge=False, header_style="bold")  # no rule: a line per row, the header first
    for position, header in enumerate(header_cells):
        left = room - sum(natural) + natural[position] - GAP * (len(headers) - 1)
        grid.add_column(header, justify="right" if numeric[position] else "left", overflow="fold",
                        max_width=max(left, MIN_WRAPPED) if position == wraps_first else None)
    for row in body:
        grid.add_row(*row)
    return grid


class Aligned:
    """Rows of one-line cells as rich's Table without a box lays them out: each column as wide as `widths` says,
    two spaces between columns, numeric ones right-aligned, the header bold. Printed as segments (never
    measured or wrapped again), or by show() as plain lines where there is no colour."""

    def __init__(self, rows: list[list[Text]], widths: list[int], numeric: list[bool]):
        self.rows, self.widths, self.numeric = rows, widths, numeric

    def pieces(self, row: list[Text]):
        """A row's cells and the spaces between them, in order (str: spaces, Text: a cell)."""
        for position, value in enumerate(row):
            padding = " " * (self.widths[position] - value.cell_len)
            if position:
                yield " " * GAP
            if self.numeric[position]:
                yield padding
            yield value
            if not self.numeric[position]:
                yield padding

    def plain(self) -> str:
        return "".join("".join(piece if isinstance(piece, str) else piece.plain for piece in self.pieces(row))
                       .rstrip() + "\n" for row in self.rows)

    def __rich_console__(self, console: Console, options):
        for row in self.rows:
            for piece in self.pieces(row):
                if isinstance(piece, str):
                    yield Segment(piece)
                else:  # the cell's own style under the styles of its parts (Text.render leaves it out)
                    yield from Segment.apply_style(piece.render(console), console.get_style(piece.style, default=""))
            yield Segment.line()


def show(*renderables, file=None) -> None:
    """Prints tables and lines (str: plain text) to `file` (stdout), without the spaces that pad a line's end."""
    file = file or sys.stdout
    out = console(file)
    for renderable in renderables:
        if isinstance(renderable, Aligned) and not out.is_terminal:  # no colour: the text as it is, at once
            file.write(renderable.plain())
            continue
        with out.capture() as captured:
            out.print(cell(renderable) if isinstance(renderable, str) else renderable)
        file.write("\n".join(line.rstrip() for line in captured.get().split("\n")))


def text(renderables: list) -> str:
    """What show() prints, as plain text without colour (for a file, or to print as a string)."""
    buffer = io.StringIO()
    show(*renderables, file=buffer)
    return buffer.getvalue()
