"""TableData -> the grid a terminal shows, drawn by rich: box-drawn, wrapped to the terminal's width,
styled only when the output is a terminal.

rich draws the table (its default table: heavy head, a space of padding, the title centred above,
the notes below as a caption). What is ours is the choice of cells and, on a narrow terminal, of the
column widths:
- with --paper, the published value and Δ go on a second line of the same cell rather than into two
  more columns each, so that the main table still fits a screen;
- a column with published values and none of ours (a CPU sweep has no linear probe) shows the
  published value alone, one line a row, its header marked "(paper)";
- our numbers are not broken across lines: rich narrows the widest columns first whatever they hold,
  which at 80 columns split every "71.4 ± 0.9" of the demo's table; fit_widths narrows text that can
  wrap instead, and "±" closes up before a number of ours would break.
"""
from __future__ import annotations

import io
import os
import sys
from typing import Optional

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from seedrun.tables.build import VALUE, TableData

# The style of each kind of text (rich's style names); cell states not named here are not styled.
STYLES = {
    "label": "bold", "missing": "dim", "running": "yellow", "pending": "yellow", "failed": "red",
    "blocked": "red", "cancelled": "red", "paper": "cyan",
}
PAPER_NOTE = "second line of a cell: the published value and Δ = ours − paper"


def wants_color(stream=None) -> bool:
    """ANSI styles only for a terminal, and never under NO_COLOR (https://no-color.org) or TERM=dumb."""
    stream = stream or sys.stdout
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return bool(os.environ.get("FORCE_COLOR")) or (hasattr(stream, "isatty") and stream.isatty())


def terminal_width() -> int:
    """$COLUMNS, else the terminal's width, else 80 (output to a file or a pipe)."""
    try:
        return max(int(os.environ["COLUMNS"]), 20)
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return 80


# One cell's lines: (text, style, ours); a line of ours (a mean ± std) is never broken (see fit_widths).
Lines = list[tuple[str, str, bool]]


def _cells(data: TableData, tight: bool) -> tuple[list[Lines], list[list[Lines]]]:
    """(header, body) as lines per cell. A published-only column (TableData.published_only) shows the
    published value alone, one line a row, its header marked "(paper)"; `tight`: "41.2±0.3"."""
    compact = {column.id for column in data.published_only()}
    grouped = any(column.group for column in data.columns)
    header: list[Lines] = []
    for label in data.row_headers:
        # under a table with column groups, the row headers sit on the labels' line, below the groups'
        header.append([("", "", False), (label, "", False)] if grouped else [(label, "", False)])
    previous_group = None
    for column in data.columns:
        label = f"{column.label} (paper)" if column.id in compact else column.label
        # rich has no header spanning columns: a group is named above its first column only
        group = column.group if column.group != previous_group else ""
        previous_group = column.group
        header.append([(group, "", False), (label, "", False)] if grouped else [(label, "", False)])
    body = []
    for row in data.rows:
        line: list[Lines] = [[(label, STYLES["label"], False)] for label in row.row.labels]
        for column, cell in zip(data.columns, row.cells):
            if column.id in compact:
                line.append([(cell.paper_text(), STYLES["paper"], False)])
                continue
            ours = cell.text().replace(" ± ", "±") if tight else cell.text()
            lines = [(ours, STYLES.get(cell.state, ""), cell.state == VALUE)] if ours else []
            if column.id in data.paper_columns and cell.paper is not None:
                published = cell.paper_text() if cell.diff is None else f"{cell.paper_text()} {cell.diff_text()}"
                lines.append((published, STYLES["paper"], False))
            line.append(lines)
        body.append(line)
    return header, body


def _notes(data: TableData) -> list[str]:
    compact = data.published_only()
    notes = []
    if len(compact) < len(data.paper_columns):
        notes.append(PAPER_NOTE)
    if compact:
        named = ", ".join(f"{column.group} {column.label}".strip() for column in compact)
        notes.append(f"(paper): the published value alone; no run of ours measured {named}.")
    return notes + list(data.notes)


def fit_widths(header: list[Lines], body: list[list[Lines]], width: int) -> Optional[list[int]]:
    """Each column's text width so that the grid fits `width` and no line of ours wraps, or None where
    rich's own layout will do: the grid fits as it is, or it cannot fit without breaking our numbers.

    rich narrows the widest columns first, whatever they hold, so at 80 columns it broke "71.4 ± 0.9"
    while a header kept its width. Here columns narrow, widest first, in two rounds: first only their
    headers wrap (a header's extra line costs one line, a cell's one a row), then any text but ours,
    between words. A column never gets narrower than its longest line of ours or its longest word.
    """
    def longest(cells: list[Lines], floor: bool) -> int:
        # floor: the narrowest the column's text can be; else its width on one line
        return max([cell_len(text) if ours or not floor else max(map(cell_len, text.split()), default=0)
                    for cell in cells for text, _, ours in cell] + [1])

    columns = [[column_header, *(row[index] for row in body)] for index, column_header in enumerate(header)]
    natural = [longest(cells, floor=False) for cells in columns]
    floors = [longest(cells, floor=True) for cells in columns]
    rows_whole = [max(longest(cells[1:], floor=False), floor) for cells, floor in zip(columns, floors)]
    room = width - (len(header) + 1) - 2 * len(header)  # the borders, and a space either side of each cell
    if sum(natural) <= room or sum(floors) > room:
        return None
    widths = list(natural)
    for limits in (rows_whole, floors):
        while sum(widths) > room:
            narrowable = [index for index, (now, limit) in enumerate(zip(widths, limits)) if now > limit]
            if not narrowable:
                break
            widths[max(narrowable, key=lambda index: (widths[index], index))] -= 1
    return widths


def grid(data: TableData, width: Optional[int] = None) -> Table:
    """The table as rich's Table; at `width`, laid out so that our numbers read on one line where they
    can (fit_widths), "±" closed up as a last resort before rich breaks them."""
    header, body = _cells(data, tight=False)
    widths = None if width is None else fit_widths(header, body, width)
    if width is not None and widths is None and fit_widths(*_cells(data, tight=True), width) is not None:
        header, body = _cells(data, tight=True)
        widths = fit_widths(header, body, width)
    notes = _notes(data)
    table = Table(title=data.title, caption="\n".join(notes) or None, caption_justify="left")
    for index, lines in enumerate(header):
        justify = "left" if index < len(data.row_headers) else "right"
        table.add_column("\n".join(text for text, _, _ in lines), justify=justify,
                         width=None if widths is None else widths[index])
    for row in body:
        table.add_row(*(_text(lines) for lines in row))
    return table


def _text(lines: Lines) -> Text:
    text = Text()
    for number, (line, style, _) in enumerate(lines):
        text.append(("\n" if number else "") + line, style=style)
    return text


def to_text(data: TableData, width: Optional[int] = None, color: bool = False) -> str:
    """The table as a terminal shows it, at most `width` columns wide (default: the terminal's) where
    its cells can wrap; with ANSI styles when `color`."""
    width = terminal_width() if width is None else width
    out = io.StringIO()
    # markup off: titles, notes and labels are printed as they are, brackets included
    console = Console(file=out, width=width, force_terminal=color,
                      color_system="standard" if color else None, markup=False, emoji=False, highlight=False)
    console.print(grid(data, width))
    return out.getvalue()
