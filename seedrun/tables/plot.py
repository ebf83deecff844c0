"""A table as a PNG: ours in one panel, the paper's published values in another, each on its own axis.

Ours and the paper's are not the same measurement (a CPU sweep's Fashion-MNIST k-NN near 71, the
paper's ImageNet linear and transfer accuracies from 47 to 88): on one axis the curve of ours was a
flat line that could not be read. Our panel plots one metric (linear top-1 where our runs have it,
else k-NN top-1, as mean ± std over seeds) with what a reader judges it by, drawn as horizontal lines
in the same metric: the student alone (its mean ± std as a band), the teacher, the student at its
random initialisation and raw pixels, each where the runs recorded it (seedrun.tables.references).
A curve over a numeric axis (τ_T, K, lr, wd); grouped points for categories (strategies, teachers).

matplotlib is imported inside draw_table, with the Agg backend, so that importing seedrun.tables
(and so `seedrun table`) stays fast and works without a display.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional, Union

from seedrun.tables.build import VALUE, Cell, TableData, build_table
from seedrun.tables.references import RANDOM_INIT, RAW_PIXELS, STUDENT_ALONE, TEACHER

if TYPE_CHECKING:
    from seedrun.store.groups import RunGroup

HEADLINES = ("linear_top1", "knn_top1")  # the metric a panel plots: the first its values have
# how each reference is drawn: (line style, colour); the student alone also gets its ± std band
REFERENCE_STYLE = {STUDENT_ALONE: ("-", ("tab:gray",)), TEACHER: ("--", ("black", "tab:purple", "tab:pink")),
                   RANDOM_INIT: (":", ("tab:brown",)), RAW_PIXELS: ("-.", ("tab:olive",))}
OURS_TITLE, PAPER_TITLE = "ours", "paper (published)"


LABELS = {"knn_top1": "k-NN top-1", "linear_top1": "linear top-1"}


def _label(metric: str) -> str:
    return LABELS.get(metric, metric.replace("_", " "))


def _runs_rows(data: TableData) -> list:
    return [row for row in data.rows if row.row.kind == "runs"]


def _columns(data: TableData, metric: str) -> list[int]:
    """Indexes of the student columns measuring `metric`."""
    return [index for index, column in enumerate(data.columns) if column.metric == metric and not column.teacher]


def _ours_metric(data: TableData) -> str:
    for metric in HEADLINES:
        if any(row.cells[index].state == VALUE for row in _runs_rows(data) for index in _columns(data, metric)):
            return metric
    return "knn_top1"


def _paper_metric(data: TableData) -> Optional[str]:
    for metric in HEADLINES:
        if any(row.cells[index].paper is not None for row in data.rows for index in _columns(data, metric)):
            return metric
    return None


def _mean_and_std(cell: Cell) -> tuple[Optional[float], float]:
    return (cell.mean, cell.std or 0.0) if cell.state == VALUE else (None, 0.0)


def _draw_references(axes, data: TableData, metric: str) -> bool:
    drawn, seen = False, Counter()
    for reference in data.references:
        values = reference.values(metric)
        if not values:
            continue
        cell = Cell(VALUE, values)
        style, colors = REFERENCE_STYLE[reference.kind]
        color = colors[seen[reference.kind] % len(colors)]  # several teachers (the main table): one colour each
        seen[reference.kind] += 1
        text = f"{cell.mean:.1f}" if cell.std is None else f"{cell.mean:.1f} ± {cell.std:.1f}"
        axes.axhline(cell.mean, linestyle=style, color=color, linewidth=1.2, label=f"{reference.label}: {text}")
        if reference.kind == STUDENT_ALONE and cell.std:
            axes.axhspan(cell.mean - cell.std, cell.mean + cell.std, color=color, alpha=0.2, linewidth=0)
        drawn = True
    return drawn


def _line_axis(axes, data: TableData) -> None:
    if data.definition.log_x:
        axes.set_xscale("log", base=2 if data.definition.axis == "distill.queue_size" else 10)
    axes.set_xlabel(data.row_headers[0])


def _ours_line(axes, data: TableData, metric: str) -> bool:
    rows = [row for row in _runs_rows(data) if row.row.value is not None]
    drawn = False
    for index in _columns(data, metric):
        points = [(row.row.value, *_mean_and_std(row.cells[index])) for row in rows]
        points = [point for point in points if point[1] is not None]
        if points:
            xs, means, stds = zip(*points)
            axes.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=f"SEED student, {_label(metric)}")
            drawn = True
    _line_axis(axes, data)
    return drawn


def _paper_line(axes, data: TableData) -> bool:
    rows = [row for row in data.rows if row.row.value is not None]
    drawn = False
    for index, column in enumerate(data.columns):
        published = [(row.row.value, row.cells[index].paper) for row in rows if row.cells[index].paper is not None]
        if published:
            xs, values = zip(*published)
            axes.plot(xs, values, linestyle="--", marker="x", label=column.label)
            drawn = True
    _line_axis(axes, data)
    return drawn


def _points(axes, categories: list[str], series: list[tuple[str, list[tuple[Optional[float], float]], str]]) -> bool:
    series = [item for item in series if any(mean is not None for mean, _ in item[1])]
    width = 0.8 / max(len(series), 1)
    for s, (name, points, color) in enumerate(series):
        xs = [c + (s - (len(series) - 1) / 2) * width for c in range(len(categories))]
        heights = [math.nan if mean is None else mean for mean, _ in points]  # nan: no point, no error cap
        errors = [std if mean is not None and std else math.nan for mean, std in points]
        # points, not bars: a bar starts at 0, which squeezes gaps of a point or two between 50 and 70 flat
        axes.errorbar(xs, heights, yerr=errors, fmt="o", capsize=3, label=name, color=color)
    axes.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
    return bool(series)


def _category_series(data: TableData, metric: str, ours: bool) -> tuple[list[str], list]:
    """(categories, series): ours (mean ± std) or the published values, of `metric`'s columns."""
    columns = _columns(data, metric)
    rows = _runs_rows(data) if ours else [row for row in data.rows if row.row.kind in ("runs", "paper")]

    def point(cell: Cell) -> tuple[Optional[float], float]:
        return _mean_and_std(cell) if ours else (cell.paper, 0.0)

    if any(data.columns[index].group for index in columns):
        # The main table: one group of points per student, one per teacher row, a row's colour the same
        # in both panels (its place among the table's rows)
        color = {row.row.id: f"C{number % 10}" for number, row in enumerate(data.rows)}
        return ([data.columns[index].group for index in columns],
                [(row.row.labels[0], [point(row.cells[index]) for index in columns], color[row.row.id]) for row in rows])
    # One group per row (strategy, teacher).
    categories = [" / ".join(label for label in row.row.labels if label) for row in rows]
    cells = [row.cells[columns[0]] for row in rows] if columns else []
    return categories, [(OURS_TITLE if ours else "published", [point(cell) for cell in cells], "C0")]


def _panel(axes, title: str, ylabel: str, drawn: bool, line: bool) -> None:
    if drawn:
        # ours first, then the references, whatever order matplotlib keeps lines and error bars in
        handles, labels = axes.get_legend_handles_labels()
        order = sorted(range(len(labels)), key=lambda i: labels[i].startswith(tuple(REFERENCE_STYLE)))
        axes.legend([handles[i] for i in order], [labels[i] for i in order], fontsize="small", loc="upper center",
                    bbox_to_anchor=(0.5, -0.15 if line else -0.4), frameon=False)  # below the rotated category names
    else:
        axes.text(0.5, 0.5, "no completed runs yet", ha="center", va="center", transform=axes.transAxes)
    axes.set_title(title, fontsize="medium")
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)


def draw_table(data: TableData, protocol: Optional[str] = None):
    """The table as a matplotlib Figure (close it when done): our panel first, then the paper's where the
    table carries published values, each with its own y axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paper_metric = _paper_metric(data) if data.paper else None
    line = data.definition.plot == "line"
    panels = 2 if (paper_metric or (line and data.paper_columns)) else 1
    figure, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 6), squeeze=False, layout="constrained")
    ours_axes = axes[0][0]
    metric = _ours_metric(data)
    drawn = _ours_line(ours_axes, data, metric) if line else _points(ours_axes, *_category_series(data, metric, ours=True))
    drawn = _draw_references(ours_axes, data, metric) or drawn
    where = f" on {', '.join(data.data_names)}" if data.data_names else ""
    probe = f", {protocol} probe" if protocol and metric.startswith("linear") else ""
    _panel(ours_axes, f"{OURS_TITLE}: {_label(metric)}{where}, mean ± std over seeds{probe}",
           f"{_label(metric)} (%)", drawn, line)
    if panels == 2:
        paper_axes = axes[0][1]
        if line:
            drawn, ylabel = _paper_line(paper_axes, data), "accuracy (%)"
        else:
            drawn, ylabel = _points(paper_axes, *_category_series(data, paper_metric, ours=False)), f"{_label(paper_metric)} (%)"
        _panel(paper_axes, f"{PAPER_TITLE}: ImageNet pre-training", ylabel, drawn, line)
    figure.suptitle(data.title, fontsize="medium")
    return figure


def plot_table(name: str, groups: Iterable["RunGroup"], path: Union[str, Path], paper: bool = True,
               protocol: Optional[str] = None) -> Path:
    """Write the named table as a PNG at `path`; the paper's panel when `paper` (its linear and transfer
    values only when `protocol`, the probe the groups were read with, is the paper's)."""
    import matplotlib.pyplot as plt

    figure = draw_table(build_table(name, groups, paper=paper, protocol=protocol), protocol)
    try:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=120)
    finally:
        plt.close(figure)
    return path
