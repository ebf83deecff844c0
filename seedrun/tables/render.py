"""TableData -> terminal text, markdown, LaTeX (booktabs) or CSV: every format prints the same cells."""

from __future__ import annotations

import csv
import io
from typing import Callable

from seedrun.tables.build import TableData
from seedrun.tables.terminal import to_text


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


RENDERERS: dict[str, Callable[[TableData], str]] = {
    "text": to_text, "markdown": to_markdown, "latex": to_latex, "csv": to_csv,
}
# "rich": the terminal format's earlier name, still accepted.
ALIASES = {"md": "markdown", "tex": "latex", "rich": "text"}


def format_name(fmt: str) -> str:
    """The format's own name for an alias; an unknown name raises ValueError naming the known ones."""
    fmt = ALIASES.get(fmt, fmt)
    if fmt not in RENDERERS:
        raise ValueError(f"unknown table format {fmt!r}; known formats: {', '.join(RENDERERS)}")
    return fmt


def render(data: TableData, fmt: str = "text", color: bool = False) -> str:
    """The table in one format; "text" as wide as the terminal, in colour with `color` (see to_text)."""
    fmt = format_name(fmt)
    return to_text(data, color=color) if fmt == "text" else RENDERERS[fmt](data)
