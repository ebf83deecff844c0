"""Recorded runs -> TableData: which runs fill each cell, and what the cell then says.

A cell shows the mean ± sample std of its completed runs (one per seed); with no completed run it
shows the state of its runs (running, pending, failed, ...), or "—" when no run matches at all.

A table is one controlled experiment, but the runs handed in may come from several sweeps: the
temperature sweep's tau_T = 0.01 cell is also matched by the learning-rate sweep's runs at that
tau_T. So the runs of a cell are split by the settings the cell's filter leaves free, and the cell
keeps the setting that the most cells of the table share (then: more completed runs, then the most
recently finished). What was left out is counted in the table's notes.

Linear and transfer columns show one probe protocol (`protocol`, seedrun.store.protocols); the paper's
published values, and so a Δ, go beside them only when it is the paper's protocol (moco): a cached or
compress probe's numbers are not comparable with them, and the table's notes say why they are left out.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Iterable, Optional

from seedrun.store.protocols import is_paper_protocol, paper_recipe, probe_family
from seedrun.sweeps.settings import SETTING_KEYS
from seedrun.tables.definitions import Column, Filter, Row, TableDef, get_table, paper_entry, paper_citation
from seedrun.tables.references import EXTRA_METRICS, Reference, find_references

if TYPE_CHECKING:
    from seedrun.store.groups import RunGroup

# Cell states besides the run states shown as they are.
VALUE, MISSING, BLANK = "value", "missing", "blank"
MISSING_TEXT = "—"
# With no completed run, the cell shows the liveliest state of its runs.
_SHOWN_STATE = (
    ("running", "running"), ("submitted", "running"), ("pending", "pending"),
    ("failed", "failed"), ("lost", "failed"), ("blocked", "blocked"), ("cancelled", "cancelled"),
)


def _number(value: float, signed: bool = False) -> str:
    if round(value, 1) == 0:
        value = 0.0  # never print "-0.0"
    return f"{value:+.1f}" if signed else f"{value:.1f}"


@dataclass
class Cell:
    """One cell: its state and, when it has a value, the mean and sample std over its seeds."""

    state: str  # VALUE, MISSING, BLANK (does not apply) or a shown run state
    values: tuple[float, ...] = ()  # one per completed seed
    paper: Optional[float] = None  # the published value, when asked for
    signed: bool = False  # a gain: printed with its sign

    @property
    def mean(self) -> Optional[float]:
        return sum(self.values) / len(self.values) if self.values else None

    @property
    def std(self) -> Optional[float]:
        """The sample standard deviation (n - 1) over seeds; none for a single seed."""
        if len(self.values) < 2:
            return None
        mean = self.mean
        return math.sqrt(sum((value - mean) ** 2 for value in self.values) / (len(self.values) - 1))

    @property
    def diff(self) -> Optional[float]:
        return self.mean - self.paper if self.state == VALUE and self.paper is not None else None

    def text(self) -> str:
        if self.state == VALUE:
            text = _number(self.mean, self.signed)
            return text if self.std is None else f"{text} ± {self.std:.1f}"
        return {BLANK: "", MISSING: MISSING_TEXT}.get(self.state, self.state)

    def paper_text(self) -> str:
        if self.paper is not None:
            return _number(self.paper, self.signed)
        return "" if self.state == BLANK else MISSING_TEXT

    def diff_text(self) -> str:
        if self.diff is not None:
            return _number(self.diff, signed=True)
        return "" if self.state == BLANK else MISSING_TEXT


@dataclass
class RowData:
    row: Row
    cells: list[Cell]  # one per column of the table data


@dataclass
class TableData:
    """A built table: what every renderer and the plot read; nothing here knows about formats."""

    name: str
    title: str
    definition: TableDef
    row_headers: tuple[str, ...]
    columns: list[Column]  # the columns shown
    rows: list[RowData]
    notes: list[str] = field(default_factory=list)  # appended to by whoever prints the table
    paper: bool = False
    paper_columns: frozenset[str] = frozenset()  # column ids followed by "paper" and "Δ" columns
    references: list[Reference] = field(default_factory=list)  # student alone, teacher, ... (references.py)
    data_names: tuple[str, ...] = ()  # the data sets (data.name) of the runs in the cells

    def published_only(self) -> list[Column]:
        """The columns that hold published values and none of ours: no run of ours measured them (a CPU
        sweep has k-NN only), so their own cells say nothing that the row's other cells do not."""
        return [column for index, column in enumerate(self.columns) if column.id in self.paper_columns
                and not any(row.cells[index].state == VALUE for row in self.rows)]

    def header(self) -> list[tuple[str, str]]:
        """(group, label) of every printed column, the row labels first."""
        out = [("", label) for label in self.row_headers]
        for column in self.columns:
            out.append((column.group, column.label))
            if column.id in self.paper_columns:
                out += [(column.group, f"{column.label} paper"), (column.group, f"{column.label} Δ")]
        return out

    def body(self) -> list[list[tuple[str, str]]]:
        """(text, kind) of every printed cell; kind is "label", "paper", "diff" or the cell state."""
        lines = []
        for row in self.rows:
            line = [(label, "label") for label in row.row.labels]
            for column, cell in zip(self.columns, row.cells):
                line.append((cell.text(), cell.state))
                if column.id in self.paper_columns:
                    line += [(cell.paper_text(), "paper"), (cell.diff_text(), "diff")]
            lines.append(line)
        return lines

    def cell(self, row_id: str, column_id: str) -> Cell:
        index = [column.id for column in self.columns].index(column_id)
        return next(row.cells[index] for row in self.rows if row.row.id == row_id)


# ---- grouping runs ------------------------------------------------------------------------------
# Runs arrive as RunGroups (stage, state, settings, count, metric values): 10,000 runs are mostly
# seeds of a few dozen settings, so everything here is done once per setting, not once per run.

def _hashable(value: Any) -> Any:
    # Floats are rounded so that 0.03 * 2 finds 0.06; ints and floats of one value already compare equal.
    if isinstance(value, float):
        return round(value, 12)
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(item) for item in value)
    if isinstance(value, dict):
        return tuple(sorted((key, _hashable(item)) for key, item in value.items()))
    return value


def _finished(group: "RunGroup") -> tuple:
    """Sorts groups with no finished run first, then by their last finished_at."""
    return (False, 0) if group.latest is None else (True, group.latest)


class _Setting:
    """The runs of one setting and experiment (in groups by state): seeds of the same experiment."""

    def __init__(self, values: dict[str, Any], experiment: Optional[str] = None):
        self.values = values
        self.groups: list["RunGroup"] = []
        self.experiment = experiment

    @cached_property
    def completed(self) -> int:
        return sum(group.completed for group in self.groups)

    @cached_property
    def latest(self) -> tuple:
        return max(_finished(group) for group in self.groups)


def _group_by_setting(groups: Iterable["RunGroup"]) -> list[_Setting]:
    settings: dict[tuple, _Setting] = {}
    for group in groups:
        values = {"stage": group.stage, **{key: _hashable(value) for key, value in group.settings.items()}}
        signature = (tuple(sorted(values.items())), group.experiment)
        settings.setdefault(signature, _Setting(values, experiment=group.experiment)).groups.append(group)
    return list(settings.values())


def _filter_key(flt: Filter) -> tuple:
    return tuple(sorted((key, _hashable(value)) for key, value in flt.items()))


class _Index:
    """Settings by the values of a set of keys, built once per key set: a cell lookup is one dict get."""

    def __init__(self, settings: list[_Setting]):
        self.settings = settings
        self.by_keys: dict[tuple[str, ...], dict[tuple, list[_Setting]]] = {}

    def match(self, flt: Filter) -> list[_Setting]:
        keys = tuple(sorted(flt))
        buckets = self.by_keys.get(keys)
        if buckets is None:
            buckets = defaultdict(list)
            for setting in self.settings:
                buckets[tuple(setting.values.get(key) for key in keys)].append(setting)
            self.by_keys[keys] = buckets
        return buckets.get(tuple(_hashable(flt[key]) for key in keys), [])


def _choose_settings(sources: dict[tuple, list[_Setting]], filters: dict[tuple, Filter]) -> dict[tuple, list["RunGroup"]]:
    """For every cell filter, the runs of the one setting that the most cells share (see the module doc)."""
    contexts_of: dict[tuple, dict[tuple, list[_Setting]]] = {}
    cells_with, cells_done = Counter(), Counter()
    for key, settings in sources.items():
        # A cell's context: the settings its filter leaves free.
        free = [name for name in SETTING_KEYS if name not in filters[key]]
        contexts: dict[tuple, list[_Setting]] = defaultdict(list)
        for setting in settings:
            contexts[tuple((name, setting.values[name]) for name in free if name in setting.values)].append(setting)
        contexts_of[key] = contexts
        for context, members in contexts.items():
            cells_with[context] += 1
            cells_done[context] += any(setting.completed for setting in members)

    def preference(item: tuple[tuple, list[_Setting]]) -> tuple:
        context, members = item
        completed = sum(setting.completed for setting in members)
        return cells_done[context], cells_with[context], completed, max(setting.latest for setting in members)

    def one_experiment(members: list[_Setting]) -> list[_Setting]:
        # Equal settings, configs that differ elsewhere (a student's width, a batch size): never averaged.
        # The cell keeps the experiment with the most completed runs, then the most recently finished.
        best = max(members, key=lambda setting: (setting.completed, setting.latest))
        return [setting for setting in members if setting.experiment == best.experiment]

    chosen = {key: one_experiment(max(contexts.items(), key=preference)[1]) if contexts else []
              for key, contexts in contexts_of.items()}
    return {key: [group for setting in members for group in setting.groups] for key, members in chosen.items()}


def _experiments_apart(sources: dict[tuple, list[_Setting]], chosen: dict[tuple, list["RunGroup"]]) -> tuple[int, int]:
    """(cells that matched several experiments with the chosen settings, most experiments in one cell)."""
    cells, most = 0, 1
    for key, members in chosen.items():
        if not members:
            continue
        kept = {group.experiment for group in members}
        values = next(setting.values for setting in sources[key] if setting.groups[0].experiment in kept)
        same = {setting.experiment for setting in sources[key] if setting.values == values}
        if len(same) > 1:
            cells, most = cells + 1, max(most, len(same))
    return cells, most


def _cell_from_runs(groups: list["RunGroup"], metric: str, paper: Optional[float]) -> Cell:
    completed = [group for group in groups if group.completed]
    values = [value for group in completed for value in group.metrics.get(metric, ())]
    if values:
        return Cell(VALUE, tuple(values), paper)
    if not completed:
        states = {group.state for group in groups}
        for state, shown in _SHOWN_STATE:
            if state in states:
                return Cell(shown, paper=paper)
        if states:
            return Cell(sorted(states)[0], paper=paper)
    return Cell(MISSING, paper=paper)


def _gain_cell(cell: Optional[Cell], baseline: Optional[Cell], paper: Optional[float]) -> Cell:
    if cell is None or baseline is None or BLANK in (cell.state, baseline.state):
        return Cell(BLANK, paper=paper, signed=True)
    if cell.state == VALUE and baseline.state == VALUE:
        return Cell(VALUE, (cell.mean - baseline.mean,), paper, signed=True)
    return Cell(MISSING, paper=paper, signed=True)


# ---- building --------------------------------------------------------------------------------

def config_keys(table: TableDef) -> set[str]:
    """Every dotted config key the table reads; all of them must be settings (seedrun.sweeps.settings)."""
    keys = set(SETTING_KEYS) | set(table.fixed) | ({table.axis} if table.axis else set())
    for row in table.rows:
        if row.kind == "runs":
            for column in table.columns:
                keys.update(table.filter_for(row, column) or ())
    return keys - {"stage"}


def metric_names(table: TableDef) -> set[str]:
    """Every metric the table's cells read, and its references' (seedrun.tables.references)."""
    return {column.metric for column in table.columns} | EXTRA_METRICS


def stages(table: TableDef) -> Optional[set[str]]:
    """The stages of the runs that can fill the table's cells, and pre-training (the references: the
    student alone and the teacher); None when a cell does not name its stage."""
    named = {flt.get("stage") for row in table.rows if row.kind == "runs" for column in table.columns
             for flt in [table.filter_for(row, column)] if flt is not None}
    return None if None in named else named | {"pretrain"}


def build(table: TableDef, groups: Iterable["RunGroup"], paper: bool = False,
          protocol: Optional[str] = None) -> TableData:
    """The table from runs grouped by stage, state and settings (seedrun.store.groups: load_groups, group_records);
    `protocol`: the probe recipe the groups' linear and transfer values come from (None: the paper's)."""
    published = paper_entry(table.name) if paper else {"values": {}}
    comparable = is_paper_protocol(protocol)
    withheld: set[str] = set()  # probe families whose published values are left out
    wanted = stages(table)
    groups = [group for group in groups if wanted is None or group.stage in wanted]
    index = _Index(_group_by_setting(groups))

    rows = table.rows
    if table.rows_per_value:
        key = table.rows_per_value[0]
        rows = table.with_values({setting.values.get(key) for setting in index.match(dict(table.fixed))})
    if table.axis:
        used = {setting.values.get(table.axis) for setting in index.match(dict(table.fixed))}
        rows = table.with_axis_values([v for v in used if isinstance(v, (int, float)) and not isinstance(v, bool)])
    rows = tuple(row for row in rows if row.kind != "paper" or paper)

    cell_filters = {(row.id, column.id): table.filter_for(row, column)
                    for row in rows if row.kind == "runs" for column in table.columns}
    filters = {_filter_key(flt): flt for flt in cell_filters.values() if flt is not None}
    sources = {key: index.match(flt) for key, flt in filters.items()}
    chosen = _choose_settings(sources, filters)

    def published_value(row: Row, column: Column) -> Optional[float]:
        value = published["values"].get(row.id, {}).get(column.id)
        family = probe_family(column.metric)
        if value is not None and family and not comparable:
            withheld.add(family)  # another protocol's numbers: no published value, so no Δ
            return None
        return value

    cells: dict[tuple[str, str], Cell] = {}
    for row in rows:
        for column in table.columns:
            value = published_value(row, column)
            if row.kind == "runs":
                flt = cell_filters[(row.id, column.id)]
                cells[row.id, column.id] = Cell(BLANK, paper=value) if flt is None else _cell_from_runs(
                    chosen[_filter_key(flt)], row.metric_prefix + column.metric, value)
            elif row.kind == "paper":
                cells[row.id, column.id] = Cell(BLANK, paper=value)
    for row in rows:
        if row.kind == "gain":
            of, over = row.gain
            for column in table.columns:
                cells[row.id, column.id] = _gain_cell(
                    cells.get((of, column.id)), cells.get((over, column.id)), published_value(row, column))

    # A column is shown when the table always has it, a run recorded it, or it carries published values;
    # and then in every group, so that the main table's students all get the same columns.
    def recorded(column: Column) -> bool:
        return any(cells[row.id, column.id].state == VALUE for row in rows if row.kind == "runs")

    def has_paper(column: Column) -> bool:
        return any(cells[row.id, column.id].paper is not None for row in rows)

    shown_kinds = {(column.teacher, column.metric) for column in table.columns
                   if column.always or recorded(column) or has_paper(column)}
    columns = [column for column in table.columns if (column.teacher, column.metric) in shown_kinds]
    in_cells = [group for members in chosen.values() for group in members]
    data = TableData(
        references=find_references(table, in_cells, groups),
        data_names=tuple(sorted({str(group.settings["data.name"]) for group in in_cells if "data.name" in group.settings})),
        name=table.name, title=table.title, definition=table, row_headers=table.row_headers, columns=columns,
        rows=[RowData(row, [cells[row.id, column.id] for column in columns]) for row in rows],
        paper=paper, paper_columns=frozenset(column.id for column in columns if has_paper(column)), notes=[],
    )

    matched = {id(group): group.count for settings in sources.values() for setting in settings for group in setting.groups}
    kept = {id(group) for members in chosen.values() for group in members}
    left_out = sum(count for key, count in matched.items() if key not in kept)
    apart, most = _experiments_apart(sources, chosen)
    if apart:
        data.notes.append(f"{apart} cell(s) matched up to {most} experiments with the same settings (configs that "
                          "differ elsewhere, e.g. a student's width): never averaged, each cell shows the one with "
                          "the most completed runs (--sweep chooses).")
    if left_out:
        data.notes.append(f"{left_out} matching run(s) with other settings left out: each cell keeps "
                          "the setting most cells share (build the table from one sweep to choose).")
    if paper:
        if published["values"]:
            data.notes.append(f"paper: {published['source']}; {paper_citation()}; Δ = ours − paper.")
        if withheld:
            data.notes.append(f"no paper value or Δ in the {' and '.join(sorted(withheld))} columns: they show the "
                              f"{protocol} probe protocol, the paper's are {paper_recipe()} probes (not comparable).")
        data.notes.extend(published.get("notes", []))
    return data


def build_table(name: str, groups: Iterable["RunGroup"], paper: bool = False,
                protocol: Optional[str] = None) -> TableData:
    """The named table from these runs; `paper` adds each cell's published value and the difference
    (in linear and transfer columns only when `protocol` is the paper's)."""
    return build(get_table(name), groups, paper, protocol)
