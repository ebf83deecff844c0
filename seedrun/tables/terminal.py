"""TableData -> the grid a terminal shows: box-drawn, wrapped to the terminal's width, styled with
ANSI codes when the output is a terminal.

Our own rather than rich's: importing rich.console and rich.table costs 60 ms of the 0.3 s that
`seedrun table` may take at 10,000 runs (benchmarks/cli_latency.py), and a grid of short cells needs
only widths, word wrapping and a few styles. The layout is rich's default table (heavy head, one
space of padding, the title centred above, the notes below), so tables read as they did with rich.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

from seedrun.tables.build import TableData

# ANSI select-graphic-rendition codes of each kind of text, as rich's default theme styles them.
_STYLES = {
    "title": "3", "header": "1", "note": "2;3", "label": "1", "missing": "2", "running": "33", "pending": "33",
    "failed": "31", "blocked": "31", "cancelled": "31", "paper": "36",
}
_PAPER_NOTE = "second line of a cell: the published value and Δ = ours − paper"

Line = tuple[str, str]  # (text, style kind)


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


def _wrap(text: str, width: int) -> list[str]:
    """Greedy word wrap; a word longer than the width is cut short with an ellipsis."""
    if len(text) <= width:
        return [text]
    lines, line = [], ""
    for word in text.split(" "):
        if len(word) > width:
            word = word[:width - 1] + "…"
        if not line:
            line = word
        elif len(line) + 1 + len(word) <= width:
            line += " " + word
        else:
            lines.append(line)
            line = word
    lines.append(line)
    return lines


def _reduce(total: int, ratios: list[int], maximums: list[int], values: list[int]) -> list[int]:
    """Take `total` off `values` in proportion to `ratios`, at most `maximums` each (rich's ratio_reduce)."""
    ratios = [ratio if maximum else 0 for ratio, maximum in zip(ratios, maximums)]
    total_ratio = sum(ratios)
    if not total_ratio:
        return list(values)
    result = []
    for ratio, maximum, value in zip(ratios, maximums, values):
        if ratio and total_ratio > 0:
            taken = min(maximum, round(ratio * total / total_ratio))
            result.append(value - taken)
            total -= taken
            total_ratio -= ratio
        else:
            result.append(value)
    return result


def _fit(widths: list[int], available: int) -> list[int]:
    """Column widths (with padding) that fit `available`, as rich collapses a table: the widest
    columns come down to the next widest, in turn; if that is not enough, all shrink evenly."""
    excess = sum(widths) - available
    while excess > 0:
        widest = max(widths)
        runner_up = max((width for width in widths if width != widest), default=0)
        if widest == runner_up or runner_up == 0 and widths.count(widest) == len(widths):
            break
        ratios = [1 if width == widest else 0 for width in widths]
        widths = _reduce(excess, ratios, [min(excess, widest - runner_up)] * len(widths), widths)
        excess = sum(widths) - available
    if excess > 0:
        widths = _reduce(excess, [1] * len(widths), widths, widths)
    return widths


def _cells(data: TableData) -> tuple[list[list[Line]], list[list[list[Line]]], list[bool]]:
    """The header cells, the body cells (each a list of lines) and which columns are right-justified."""
    grouped = any(column.group for column in data.columns)
    header: list[list[Line]] = [[("", "header"), (label, "header")] if grouped else [(label, "header")]
                                for label in data.row_headers]
    previous_group = None
    for column in data.columns:
        # No spanning headers: a group is named above its first column only.
        group = column.group if column.group != previous_group else ""
        previous_group = column.group
        header.append([(group, "header"), (column.label, "header")] if grouped else [(column.label, "header")])
    right = [False] * len(data.row_headers) + [True] * len(data.columns)
    body = []
    for row in data.rows:
        line: list[list[Line]] = [[(label, "label")] for label in row.row.labels]
        for column, cell in zip(data.columns, row.cells):
            # With --paper the published value and Δ go on a second line of the same cell rather
            # than into two more columns each, so that the main table still fits a screen.
            lines = [(cell.text(), cell.state)] if cell.text() else []
            if column.id in data.paper_columns and cell.paper is not None:
                published = cell.paper_text() if cell.diff is None else f"{cell.paper_text()} {cell.diff_text()}"
                lines.append((published, "paper"))
            line.append(lines or [("", cell.state)])
        body.append(line)
    return header, body, right


def to_text(data: TableData, width: Optional[int] = None, color: bool = False) -> str:
    """The table as a terminal shows it, at most `width` columns wide where the cells can wrap."""
    width = terminal_width() if width is None else width
    header, body, right = _cells(data)

    def paint(text: str, kind: str) -> str:
        code = _STYLES.get(kind) if color and text else None
        return f"\x1b[{code}m{text}\x1b[0m" if code else text

    natural = [max(len(text) for cells in [header[i]] + [row[i] for row in body] for text, _ in cells)
               for i in range(len(header))]
    # Widths with a space of padding either side; the rules between columns and the edges are extra.
    widths = [w - 2 for w in _fit([w + 2 for w in natural], width - len(natural) - 1)]

    def block(cells: list[list[Line]], rule: str, bottom: bool = False) -> list[str]:
        wrapped = [[(piece, kind) for text, kind in cell for piece in _wrap(text, max(w, 1))]
                   for cell, w in zip(cells, widths)]
        height = max(len(cell) for cell in wrapped)
        if bottom:  # header cells sit on the bottom line, so that labels line up
            wrapped = [[("", "")] * (height - len(cell)) + cell for cell in wrapped]
        lines = []
        for index in range(height):
            parts = []
            for cell, w, justify_right in zip(wrapped, widths, right):
                text, kind = cell[index] if index < len(cell) else ("", "")
                pad = " " * (w - len(text))
                parts.append(pad + paint(text, kind) if justify_right else paint(text, kind) + pad)
            lines.append(f"{rule} " + f" {rule} ".join(parts) + f" {rule}")
        return lines

    def edge(left: str, fill: str, cross: str, end: str) -> str:
        return left + cross.join(fill * (w + 2) for w in widths) + end

    total = sum(widths) + 3 * len(widths) + 1
    lines = []
    for title_line in _wrap(data.title, total):
        space = total - len(title_line)
        lines.append(" " * (space // 2) + paint(title_line, "title") + " " * (space - space // 2))
    lines.append(edge("┏", "━", "┳", "┓"))
    lines += block(header, "┃", bottom=True)
    lines.append(edge("┡", "━", "╇", "┩") if body else edge("┗", "━", "┻", "┛"))
    for row in body:
        lines += block(row, "│")
    if body:
        lines.append(edge("└", "─", "┴", "┘"))
    notes = ([_PAPER_NOTE] if data.paper_columns else []) + list(data.notes)
    for note in notes:
        for note_line in _wrap(note, total):
            lines.append(paint(note_line, "note") + " " * (total - len(note_line)))
    return "\n".join(lines) + "\n"
