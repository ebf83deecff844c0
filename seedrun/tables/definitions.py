"""The paper's tables, one `TableDef` each: adding a table is adding one definition to TABLES.

A table is rows x columns. Each cell has a *filter*: dotted keys into a run's resolved config (plus
the pseudo-key "stage") and the values they must have. Runs that pass the filter fill the cell with
the column's metric. Published numbers live in paper_values.json under the table's name, keyed by
row id and column id, never in code.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Callable, Mapping, Optional

Filter = dict[str, Any]

# The slides' ablations all distil a ResNet-50 teacher into a ResNet-18 student. The student is
# pinned (its "MoCo-v2 alone" baseline must be the same network); the teacher is not, so that
# small-scale sweeps with small teachers still fill the tables.
ABLATION_STUDENT = "resnet18"


@dataclass(frozen=True)
class Column:
    id: str  # the key of its published value in paper_values.json
    label: str
    metric: str
    group: str = ""  # a header spanning several columns (the main table's students)
    match: Mapping[str, Any] = field(default_factory=dict)
    teacher: bool = False  # the teacher's own accuracy, read from its pretrain run
    always: bool = False  # shown even when no run recorded it (k-NN: every run records it)


@dataclass(frozen=True)
class Row:
    id: str  # the key of its published values in paper_values.json
    labels: tuple[str, ...]
    match: Mapping[str, Any] = field(default_factory=dict)
    kind: str = "runs"  # runs: filled by runs | gain: difference of two rows | paper: published only
    gain: Optional[tuple[str, str]] = None  # (row id, baseline row id) of a gain row
    value: Optional[float] = None  # the axis value of a numeric row (x of its plot)
    metric_prefix: str = ""  # its cells read this prefix + the column's metric (random init: init_knn_top1)


@dataclass(frozen=True)
class TableDef:
    name: str
    title: str
    row_headers: tuple[str, ...]
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    fixed: Mapping[str, Any] = field(default_factory=dict)  # part of every cell's filter
    # (table, row, column) -> the cell's filter, or None where the cell does not apply
    cell_filter: Optional[Callable[["TableDef", Row, Column], Optional[Filter]]] = None
    axis: Optional[str] = None  # numeric tables: the key whose values are the rows
    descending: bool = False  # row order of a numeric table (the temperature table counts down)
    log_x: bool = False  # plot the axis on a log scale
    plot: str = "bars"  # "line" for numeric axes, "bars" for categories
    # a category whose values each get their rows (the main table's teachers): (key, the rows of a value)
    rows_per_value: Optional[tuple[str, Callable[[Any], tuple["Row", ...]]]] = None

    def filter_for(self, row: Row, column: Column) -> Optional[Filter]:
        if self.cell_filter is not None:
            return self.cell_filter(self, row, column)
        if column.teacher:
            return None
        return {**self.fixed, **row.match, **column.match}

    def with_values(self, values: set) -> tuple[Row, ...]:
        """The defined rows plus the rows of every other value of `rows_per_value`'s key that runs used,
        after the last defined row of that key (the main table: a CPU twin's ResNet-18 teacher)."""
        key, rows_of = self.rows_per_value
        defined = {row.match.get(key) for row in self.rows}
        extra = tuple(row for value in sorted(v for v in values if v is not None and v not in defined)
                      for row in rows_of(value))
        last = max((i for i, row in enumerate(self.rows) if key in row.match or row.gain), default=len(self.rows) - 1)
        return self.rows[:last + 1] + extra + self.rows[last + 1:]

    def with_axis_values(self, values: list[float]) -> tuple[Row, ...]:
        """The defined rows plus a row for every other axis value that runs used, in axis order."""
        rows = {round(float(row.value), 12): row for row in self.rows if row.value is not None}
        for value in values:
            rows.setdefault(round(float(value), 12), axis_row(self.axis, value))
        ordered = sorted(rows.items(), reverse=self.descending)
        return tuple(row for _, row in ordered) + tuple(row for row in self.rows if row.value is None)


def format_number(value: float) -> str:
    """0.001 -> '0.001', 0.0005 -> '5e-4', 65536 -> '65536' (short, and the same for equal values)."""
    text = f"{value:.6e}" if 0 < abs(value) < 1e-3 else f"{value:.6g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        if "." in mantissa:
            mantissa = mantissa.rstrip("0").rstrip(".")
        text = f"{mantissa}e{int(exponent)}"
    return text


def axis_row(key: str, value: float) -> Row:
    label = format_number(value)
    return Row(id=label, labels=(label,), match={key: value}, value=value)


def student_alone(arch: str) -> Filter:
    """The baseline every table compares with: the student trained by MoCo-v2 on its own."""
    return {"stage": "pretrain", "pretrain.role": "baseline", "pretrain.method": "mocov2", "pretrain.arch": arch}


# ---- columns shared by several tables --------------------------------------------------------

KNN = (
    Column("knn_top1", "k-NN top-1", "knn_top1", always=True),
    Column("knn_top5", "k-NN top-5", "knn_top5", always=True),
)
LINEAR = (
    Column("linear_top1", "linear top-1", "linear_top1"),
    Column("linear_top5", "linear top-5", "linear_top5"),
)
TRANSFER = (
    Column("transfer_cifar10_top1", "CIFAR-10 top-1", "transfer_cifar10_top1"),
    Column("transfer_cifar100_top1", "CIFAR-100 top-1", "transfer_cifar100_top1"),
)
STUDENT_COLUMNS = KNN + LINEAR + TRANSFER

ABLATION_FIXED = {"stage": "distill", "distill.strategy": "seed", "student.arch": ABLATION_STUDENT}


def numeric_table(name: str, title: str, header: str, key: str, values: tuple[float, ...], **options) -> TableDef:
    """An ablation of one numeric setting of SEED: one row per value, the student's accuracies."""
    return TableDef(
        name=name, title=title, row_headers=(header,), columns=STUDENT_COLUMNS,
        rows=tuple(axis_row(key, value) for value in values), fixed=ABLATION_FIXED, axis=key,
        plot="line", **options,
    )


# ---- main: teachers x students ---------------------------------------------------------------

MAIN_STUDENTS = {
    "efficientnet_b0": "Eff-b0", "efficientnet_b1": "Eff-b1", "mobilenetv3_large": "Mob-v3",
    "resnet18": "R-18", "resnet34": "R-34",
}
MAIN_TEACHERS = {"resnet50": "R-50", "resnet101": "R-101", "resnet152": "R-152", "resnet50x2": "R50×2"}


def _main_columns() -> tuple[Column, ...]:
    columns = [
        Column("teacher/knn_top1", "K", "knn_top1", group="Teacher", teacher=True, always=True),
        Column("teacher/linear_top1", "T-1", "linear_top1", group="Teacher", teacher=True),
    ]
    for arch, short in MAIN_STUDENTS.items():
        student = {"student.arch": arch}
        columns += [
            Column(f"{arch}/knn_top1", "K", "knn_top1", group=short, match=student, always=True),
            Column(f"{arch}/linear_top1", "T-1", "linear_top1", group=short, match=student),
            Column(f"{arch}/linear_top5", "T-5", "linear_top5", group=short, match=student),
        ]
    return tuple(columns)


def _main_rows() -> tuple[Row, ...]:
    rows = [Row("supervised", ("Supervised",), kind="paper"),
            # the student-alone run's network before training (pre-training records it): MoCo-v2 must beat it
            Row("random_init", ("Random init",), metric_prefix="init_"),
            Row("mocov2", ("MoCo-v2",))]
    for arch in MAIN_TEACHERS:
        rows += _main_teacher_rows(arch)
    return tuple(rows)


def _main_teacher_rows(arch: str) -> tuple[Row, ...]:
    """A teacher's row and its gain over the student alone; a teacher the paper did not use (a CPU twin's
    ResNet-18) gets them too, named as the students are."""
    short = MAIN_TEACHERS.get(arch) or MAIN_STUDENTS.get(arch) or str(arch)
    return (Row(arch, (short,), match={"teacher.arch": arch}),
            Row(f"{arch}/gain", (f"{short} gain",), kind="gain", gain=(arch, "mocov2")))


def _main_cell(table: TableDef, row: Row, column: Column) -> Optional[Filter]:
    if column.teacher:
        if not row.match:
            return None  # the MoCo-v2 row has no teacher
        return {"stage": "pretrain", "pretrain.role": "teacher", "pretrain.arch": row.match["teacher.arch"]}
    if not row.match:  # MoCo-v2 and random init: the student-alone run
        return student_alone(column.match["student.arch"])
    return {**table.fixed, **row.match, **column.match}


# ---- teacher: how the teacher was trained ----------------------------------------------------

def _teacher_row(method: str, label: str, pretrain_epochs: int, distill_epochs: int, kind: str = "runs") -> Row:
    match = {"teacher.method": method, "teacher.pretrain_epochs": pretrain_epochs, "distill.epochs": distill_epochs}
    return Row(f"{method}/{pretrain_epochs}/{distill_epochs}", (label, str(pretrain_epochs), str(distill_epochs)),
               match=match if kind == "runs" else {}, kind=kind)


def _teacher_cell(table: TableDef, row: Row, column: Column) -> Optional[Filter]:
    if column.teacher:
        if not row.match:
            return None
        return {"stage": "pretrain", "pretrain.role": "teacher", "pretrain.method": row.match["teacher.method"],
                "pretrain.epochs": row.match["teacher.pretrain_epochs"]}
    if not row.match:
        return student_alone(ABLATION_STUDENT)
    return {**table.fixed, **row.match}


TABLES: dict[str, TableDef] = {
    table.name: table
    for table in (
        TableDef(
            name="main",
            title="SEED on ImageNet: teachers x students (K = k-NN top-1, T-1/T-5 = linear top-1/top-5)",
            row_headers=("Teacher",),
            columns=_main_columns(),
            rows=_main_rows(),
            fixed={"stage": "distill", "distill.strategy": "seed"},
            cell_filter=_main_cell,
            rows_per_value=("teacher.arch", _main_teacher_rows),
        ),
        TableDef(
            name="teacher",
            title="Teacher pre-training: method, pre-train epochs (P-E), distillation epochs (D-E); ResNet-18 student",
            row_headers=("Teacher", "P-E", "D-E"),
            columns=(
                Column("teacher/knn_top1", "T. k-NN top-1", "knn_top1", teacher=True, always=True),
                Column("teacher/linear_top1", "T. top-1", "linear_top1", teacher=True),
                *STUDENT_COLUMNS,
            ),
            rows=(
                Row("none", ("none (MoCo-v2 student)", "", "")),
                _teacher_row("moco", "MoCo", 200, 200),
                _teacher_row("simclr", "SimCLR", 200, 200),
                _teacher_row("mocov2", "MoCo-v2", 200, 200),
                _teacher_row("mocov2", "MoCo-v2", 800, 200),
                _teacher_row("swav", "SwAV", 800, 100),
                _teacher_row("swav", "SwAV", 800, 200),
                _teacher_row("swav", "SwAV", 800, 400),
                _teacher_row("swav*", "SwAV*", 800, 200, kind="paper"),
            ),
            fixed=ABLATION_FIXED,
            cell_filter=_teacher_cell,
        ),
        TableDef(
            name="distillation",
            title="Distillation strategy (ResNet-18 student)",
            row_headers=("Strategy",),
            columns=STUDENT_COLUMNS,
            rows=tuple(
                Row(strategy, (label,), match={"distill.strategy": strategy})
                for strategy, label in (
                    ("l2", "l2-distance"), ("kmeans", "K-Means"), ("online_clustering", "Online clustering"),
                    ("binary_contrastive", "Binary contrastive"), ("seed_mocov2", "SEED + MoCo-v2"), ("seed", "SEED"),
                )
            ),
            fixed={"stage": "distill", "student.arch": ABLATION_STUDENT},
        ),
        numeric_table("temperature", "Teacher temperature τ_T of the SEED target (ResNet-18 student)", "τ_T",
                      "distill.tau_teacher", (0.3, 0.1, 0.05, 0.01, 0.001), descending=True, log_x=True),
        numeric_table("queue", "Queue size K (ResNet-18 student)", "K",
                      "distill.queue_size", (4096, 16384, 65536, 131072), log_x=True),
        numeric_table("lr", "Base learning rate, per 256 images (ResNet-18 student)", "lr",
                      "distill.lr", (0.003, 0.01, 0.03, 0.1, 0.3), log_x=True),
        numeric_table("wd", "Weight decay (ResNet-18 student)", "weight decay",
                      "distill.weight_decay", (1e-6, 1e-5, 1e-4, 5e-4), log_x=True),
    )
}


class UnknownTable(KeyError):
    def __init__(self, name: str):
        super().__init__(name)
        self.message = f"no table {name!r}; known tables: {', '.join(TABLES)}"

    def __str__(self) -> str:  # KeyError would print the message quoted
        return self.message


def get_table(name: str) -> TableDef:
    try:
        return TABLES[name]
    except KeyError:
        raise UnknownTable(name) from None


@cache
def _paper_data() -> dict[str, Any]:
    # Next to this module (package data); read on first use only.
    with open(os.path.join(os.path.dirname(__file__), "paper_values.json"), encoding="utf-8") as file:
        return json.load(file)


def paper_citation() -> str:
    """Short: where every published value comes from (the long form is "source" in the JSON)."""
    return _paper_data()["cite"]


def paper_entry(name: str) -> dict[str, Any]:
    """The published values of one table: {"source", "notes", "values": {row id: {column id: value}}}."""
    return _paper_data()["tables"].get(name, {"source": "", "notes": [], "values": {}, "available": False})


__all__ = ["Column", "Row", "TableDef", "TABLES", "UnknownTable", "get_table", "paper_entry", "paper_citation",
           "format_number"]
