"""A table as a PNG: a curve over a numeric axis (τ_T, K, lr, wd), grouped bars for categories.

matplotlib is imported inside plot_table, with the Agg backend, so that importing seedrun.tables
(and so `seedrun table`) stays fast and works without a display.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional, Union

from seedrun.tables.build import VALUE, Cell, TableData, build_table

if TYPE_CHECKING:
    from seedrun.store.groups import RunGroup


def _headline_metric(data: TableData) -> str:
    """The metric to plot: linear top-1 where runs have it, else the k-NN top-1 every run records."""
    for metric in ("linear_top1", "knn_top1"):
        if any(cell.state == VALUE for column, cells in _columns(data, metric) for cell in cells):
            return metric
    return "knn_top1"


def _columns(data: TableData, metric: str) -> list[tuple]:
    """(column, its cells in runs rows) for the student columns measuring `metric`."""
    runs_rows = [row for row in data.rows if row.row.kind == "runs"]
    return [(column, [row.cells[i] for row in runs_rows]) for i, column in enumerate(data.columns)
            if column.metric == metric and not column.teacher]


def _mean_and_std(cell: Cell) -> tuple[Optional[float], float]:
    return (cell.mean, cell.std or 0.0) if cell.state == VALUE else (None, 0.0)


def _plot_line(axes, data: TableData) -> bool:
    rows = [row for row in data.rows if row.row.kind == "runs" and row.row.value is not None]
    drawn = False
    for index, column in enumerate(data.columns):
        points = [(row.row.value, *_mean_and_std(row.cells[index])) for row in rows]
        points = [point for point in points if point[1] is not None]
        if points:
            xs, means, stds = zip(*points)
            line = axes.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=column.label)
            drawn = True
            color = line[0].get_color()
        else:
            color = None
        published = [(row.row.value, row.cells[index].paper) for row in rows if row.cells[index].paper is not None]
        if published:
            xs, values = zip(*published)
            axes.plot(xs, values, linestyle="--", marker="x", color=color, label=f"{column.label} (paper)")
            drawn = True
    if data.definition.log_x:
        axes.set_xscale("log", base=2 if data.definition.axis == "distill.queue_size" else 10)
    axes.set_xlabel(data.row_headers[0])
    return drawn


def _plot_bars(axes, data: TableData) -> bool:
    metric = _headline_metric(data)
    columns = _columns(data, metric)
    runs_rows = [row.row for row in data.rows if row.row.kind == "runs"]
    if any(column.group for column, _ in columns):
        # The main table: one group of bars per student, one bar per teacher row.
        categories = [column.group for column, _ in columns]
        series = [(row.labels[0], [_mean_and_std(cells[r]) for _, cells in columns])
                  for r, row in enumerate(runs_rows)]
    else:
        # One group per row (strategy, teacher), our bar beside the published one.
        categories = [" / ".join(label for label in row.labels if label) for row in runs_rows]
        cells = columns[0][1] if columns else []
        series = [("ours", [_mean_and_std(cell) for cell in cells]),
                  ("paper", [(cell.paper, 0.0) for cell in cells])]
    series = [(name, bars) for name, bars in series if any(mean is not None for mean, _ in bars)]
    width = 0.8 / max(len(series), 1)
    for s, (name, bars) in enumerate(series):
        xs = [c + (s - (len(series) - 1) / 2) * width for c in range(len(categories))]
        heights = [math.nan if mean is None else mean for mean, _ in bars]  # nan: no bar, no error cap
        errors = [std if mean is not None and std else math.nan for mean, std in bars]
        axes.bar(xs, heights, width=width, yerr=errors, capsize=2, label=name)
    axes.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
    axes.set_ylabel(metric.replace("_", " ") + " (%)")
    return bool(series)


def plot_table(name: str, groups: Iterable["RunGroup"], path: Union[str, Path], paper: bool = True,
               protocol: Optional[str] = None) -> Path:
    """Write the named table as a PNG at `path`; published values are drawn beside ours when `paper` (the
    linear and transfer ones only when `protocol`, the probe the groups were read with, is the paper's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = build_table(name, groups, paper=paper, protocol=protocol)
    figure, axes = plt.subplots(figsize=(10, 4.5))
    try:
        drawn = _plot_line(axes, data) if data.definition.plot == "line" else _plot_bars(axes, data)
        if drawn:  # beside the axes, where it hides no point
            axes.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
        else:
            axes.text(0.5, 0.5, "no completed runs yet", ha="center", va="center", transform=axes.transAxes)
        if data.definition.plot == "line":
            axes.set_ylabel("accuracy (%)")
        probe = f" [{protocol} probe]" if protocol else ""
        axes.set_title(data.title + probe, fontsize="medium")
        axes.grid(alpha=0.3)
        figure.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=120)
    finally:
        plt.close(figure)
    return path
