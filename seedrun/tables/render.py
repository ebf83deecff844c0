"""TableData -> rich table, markdown, LaTeX (booktabs) or CSV: every format prints the same cells."""

from __future__ import annotations

import csv
import io
from typing import Any, Callable

from seedrun.tables.build import TableData


def _flat(group: str, label: str) -> str:
    return f"{group} {label}" if group else label


def to_markdown(data: TableData) -> str:
    def escape(text: str) -> str:
        return text.replace("|", r"\|")

    labels = len(data.row_headers)
    header = [escape(_flat(group, label)) for group, label in data.header()]
    lines = [f"**{escape(data.title)}**", "", "| " + " | ".join(header) + " |",
             "|" + "|".join(":---" if i < labels else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(escape(text) for text, _ in line) + " |" for line in data.body()]
    if data.notes:
        lines += [""] + [f"- {note}" for note in data.notes]
    return "\n".join(lines) + "\n"


def to_csv(data: TableData) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([_flat(group, label) for group, label in data.header()])
    writer.writerows([text for text, _ in line] for line in data.body())
    return out.getvalue()


_LATEX_CHARS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "±": r"$\pm$", "—": "---", "−": "$-$", "Δ": r"$\Delta$", "τ": r"$\tau$", "×": r"$\times$", "→": r"$\rightarrow$",
}


def _tex(text: str) -> str:
    escaped = "".join(_LATEX_CHARS.get(char, char) for char in text)
    return escaped.replace(r"$\tau$\_T", r"$\tau_T$")  # the temperature's subscript stays in math mode


def to_latex(data: TableData) -> str:
    header = data.header()
    labels = len(data.row_headers)
    lines = [
        f"% seedrun table {data.name}",
        r"\begin{table}[t]",
        r"  \centering",
        f"  \\caption{{{_tex(data.title)}}}",
        f"  \\label{{tab:seedrun-{data.name}}}",
        f"  \\begin{{tabular}}{{{'l' * labels}{'r' * (len(header) - labels)}}}",
        r"    \toprule",
    ]
    if any(group for group, _ in header):
        # One spanning header per run of equal groups, underlined with \cmidrule.
        spans: list[tuple[str, int, int]] = []  # (group, first column, last column), 1-based
        for position, (group, _) in enumerate(header, start=1):
            if spans and spans[-1][0] == group:
                spans[-1] = (group, spans[-1][1], position)
            else:
                spans.append((group, position, position))
        cells = [f"\\multicolumn{{{last - first + 1}}}{{c}}{{{_tex(group)}}}" if group else " & ".join([""] * (last - first + 1))
                 for group, first, last in spans]
        lines.append("    " + " & ".join(cells) + r" \\")
        lines.append("    " + " ".join(f"\\cmidrule(lr){{{first}-{last}}}" for group, first, last in spans if group))
    lines.append("    " + " & ".join(_tex(label) for _, label in header) + r" \\")
    lines.append(r"    \midrule")
    lines += ["    " + " & ".join(_tex(text) for text, _ in line) + r" \\" for line in data.body()]
    lines += [r"    \bottomrule", r"  \end{tabular}", r"\end{table}"]
    lines += [f"% {note}" for note in data.notes]
    return "\n".join(lines) + "\n"


_RICH_STYLES = {
    "label": "bold", "missing": "dim", "running": "yellow", "pending": "yellow", "failed": "red",
    "blocked": "red", "cancelled": "red", "paper": "cyan",
}


def to_rich(data: TableData) -> Any:
    """For the terminal: with --paper, the published value and Δ go on a second line of the same
    cell rather than into two more columns each, so that the main table still fits a screen."""
    # rich is imported here, not at module import: `seedrun table --format csv` never needs it.
    from rich.table import Table
    from rich.text import Text

    grouped = any(column.group for column in data.columns)
    notes = list(data.notes)
    if data.paper_columns:
        notes.insert(0, "second line of a cell: the published value and Δ = ours − paper")
    table = Table(title=data.title, caption="\n".join(notes) or None, caption_justify="left")
    for label in data.row_headers:
        table.add_column(f"\n{label}" if grouped else label, justify="left")
    previous_group = None
    for column in data.columns:
        # rich has no spanning headers: a group is named above its first column only
        group = column.group if column.group != previous_group else ""
        previous_group = column.group
        table.add_column(f"{group}\n{column.label}" if grouped else column.label, justify="right")
    for row in data.rows:
        line = [Text(label, style=_RICH_STYLES["label"]) for label in row.row.labels]
        for column, cell in zip(data.columns, row.cells):
            text = Text(cell.text(), style=_RICH_STYLES.get(cell.state, ""))
            if column.id in data.paper_columns and cell.paper is not None:
                published = cell.paper_text() if cell.diff is None else f"{cell.paper_text()} {cell.diff_text()}"
                text.append(("\n" if cell.text() else "") + published, style=_RICH_STYLES["paper"])
            line.append(text)
        table.add_row(*line)
    return table


RENDERERS: dict[str, Callable[[TableData], Any]] = {
    "rich": to_rich, "markdown": to_markdown, "latex": to_latex, "csv": to_csv,
}
_ALIASES = {"md": "markdown", "tex": "latex"}


def render(data: TableData, fmt: str = "rich") -> Any:
    """A str for markdown, latex and csv; a rich.table.Table for rich."""
    fmt = _ALIASES.get(fmt, fmt)
    if fmt not in RENDERERS:
        raise ValueError(f"unknown table format {fmt!r}; known formats: {', '.join(RENDERERS)}")
    return RENDERERS[fmt](data)
