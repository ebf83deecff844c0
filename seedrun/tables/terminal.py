"""TableData -> the grid a terminal shows, drawn by rich: box-drawn, wrapped to the terminal's width,
styled only when the output is a terminal.

rich lays the table out (its default table: heavy head, a space of padding, the title centred above,
the notes below as a caption) and, on a narrow terminal, narrows the widest columns first and wraps
their cells. What is ours is the choice of cells: with --paper, the published value and Δ go on a
second line of the same cell rather than into two more columns each, so that the main table still
fits a screen.
"""

from __future__ import annotations

import io
import os
import sys
from typing import Optional

from rich.console import Console
from rich.table import Table
from rich.text import Text

from seedrun.tables.build import TableData

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


def grid(data: TableData) -> Table:
    """The table as rich's Table, before it is laid out at a width."""
    notes = ([PAPER_NOTE] if data.paper_columns else []) + list(data.notes)
    table = Table(title=data.title, caption="\n".join(notes) or None, caption_justify="left")
    grouped = any(column.group for column in data.columns)
    for label in data.row_headers:
        # under a table with column groups, the row headers sit on the labels' line, below the groups'
        table.add_column(f"\n{label}" if grouped else label)
    previous_group = None
    for column in data.columns:
        # rich has no header spanning columns: a group is named above its first column only
        group = column.group if column.group != previous_group else ""
        previous_group = column.group
        table.add_column(f"{group}\n{column.label}" if grouped else column.label, justify="right")
    for row in data.rows:
        line = [Text(label, style=STYLES["label"]) for label in row.row.labels]
        for column, cell in zip(data.columns, row.cells):
            text = Text(cell.text(), style=STYLES.get(cell.state, ""))
            if column.id in data.paper_columns and cell.paper is not None:
                published = cell.paper_text() if cell.diff is None else f"{cell.paper_text()} {cell.diff_text()}"
                text.append(("\n" if cell.text() else "") + published, style=STYLES["paper"])
            line.append(text)
        table.add_row(*line)
    return table


def to_text(data: TableData, width: Optional[int] = None, color: bool = False) -> str:
    """The table as a terminal shows it, at most `width` columns wide (default: the terminal's) where
    its cells can wrap; with ANSI styles when `color`."""
    out = io.StringIO()
    # markup off: titles, notes and labels are printed as they are, brackets included
    console = Console(file=out, width=terminal_width() if width is None else width, force_terminal=color,
                      color_system="standard" if color else None, markup=False, emoji=False, highlight=False)
    console.print(grid(data))
    return out.getvalue()
