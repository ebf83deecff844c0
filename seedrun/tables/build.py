"""Recorded runs -> TableData: which runs fill each cell, and what the cell then says.

A cell shows the mean ± sample std of its completed runs (one per seed); with no completed run it
shows the state of its runs (running, pending, failed, ...), or "—" when no run matches at all.

A table is one controlled experiment, but the runs handed in may come from several sweeps: the
temperature sweep's tau_T = 0.01 cell is also matched by the learning-rate sweep's runs at that
tau_T. So the runs of a cell are split by the settings the cell's filter leaves free, and the cell
keeps the setting that the most cells of the table share (then: more completed runs, then the most
recently finished). What was left out is counted in the table's notes.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Iterable, Optional

from seedrun.tables.definitions import Column, Filter, Row, TableDef, get_table, paper_entry, paper_citation

if TYPE_CHECKING:
    from seedrun.store import RunRecord

# The knobs of an experiment. Runs that agree on these (except a cell's own keys) are seeds of the
# same setting; paths, names and other bookkeeping in a config never split a cell.
SETTING_KEYS = (
    "data.name",
    "distill.strategy", "distill.tau_teacher", "distill.tau_student", "distill.queue_size",
    "distill.lr", "distill.weight_decay", "distill.epochs",
    "teacher.arch", "teacher.method", "teacher.pretrain_epochs", "student.arch",
    "pretrain.method", "pretrain.arch", "pretrain.epochs", "pretrain.role",
)

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


@dataclass(frozen=True)
class Cell:
    state: str  # VALUE, MISSING, BLANK (does not apply) or a shown run state
    values: tuple[float, ...] = ()  # one per completed seed
    paper: Optional[float] = None  # the published value, when asked for
    signed: bool = False  # a gain: printed with its sign

    @cached_property
    def mean(self) -> Optional[float]:
        return sum(self.values) / len(self.values) if self.values else None

    @cached_property
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
    paper: bool = False
    paper_columns: frozenset[str] = frozenset()  # column ids followed by "paper" and "Δ" columns
    notes: list[str] = field(default_factory=list)

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


# ---- reading runs ------------------------------------------------------------------------------
# Runs are grouped by their settings first: 10,000 runs are mostly seeds of a few dozen settings, so
# everything past reading a run's config is done once per setting, not once per run.

def _hashable(value: Any) -> Any:
    # Floats are rounded so that 0.03 * 2 finds 0.06; ints and floats of one value already compare equal.
    if isinstance(value, float):
        return round(value, 12)
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(item) for item in value)
    if isinstance(value, dict):
        return tuple(sorted((key, _hashable(item)) for key, item in value.items()))
    return value


def _read_path(config: Any, parts: list[str]) -> Any:
    for part in parts:
        config = config.get(part) if isinstance(config, dict) else None
    return config


class _SettingsReader:
    """Reads a fixed set of dotted keys from run configs, one config section at a time."""

    def __init__(self, keys: Iterable[str]):
        names_of: dict[str, list[str]] = defaultdict(list)
        self.deep: list[tuple[str, list[str]]] = []  # keys one level or three levels deep
        for key in sorted(set(keys) - {"stage"}):
            parts = key.split(".")
            if len(parts) == 2:
                names_of[parts[0]].append(parts[1])
            else:
                self.deep.append((key, parts))
        self.sections = [(section, names, itemgetter(*names)) for section, names in names_of.items()]

    def signature(self, run: "RunRecord") -> tuple:
        """The run's stage and the values of the keys, cheaply: one tuple per config section."""
        config = run.config or {}
        try:  # the common case: each section is absent or has every key
            sections = [getter(config[section]) if section in config else None
                        for section, _, getter in self.sections]
        except (KeyError, TypeError):
            sections = [tuple(values.get(name) for name in names) if isinstance(values, dict) else None
                        for section, names, _ in self.sections for values in [config.get(section)]]
        return (run.stage, *sections, *[_read_path(config, path) for _, path in self.deep])

    def settings(self, signature: tuple) -> dict[str, Any]:
        """A signature as {dotted key: value}, leaving out keys the config does not have."""
        settings: dict[str, Any] = {"stage": signature[0]}
        for (section, names, _), values in zip(self.sections, signature[1:]):
            if len(names) == 1 and values is not None:
                values = (values,)  # itemgetter of one name returns the value itself
            for name, value in zip(names, values or ()):
                if value is not None:
                    settings[f"{section}.{name}"] = _hashable(value)
        for (key, _), value in zip(self.deep, signature[1 + len(self.sections):]):
            if value is not None:
                settings[key] = _hashable(value)
        return settings


def _finished(run: "RunRecord") -> tuple:
    """Sorts unfinished runs first, then by finished_at."""
    return (False, 0) if run.finished_at is None else (True, run.finished_at)


@dataclass
class _Setting:
    """The runs of one setting: seeds of the same experiment."""

    values: dict[str, Any]
    runs: list["RunRecord"] = field(default_factory=list)

    @cached_property
    def completed(self) -> list["RunRecord"]:
        return [run for run in self.runs if run.state == "completed"]

    @cached_property
    def latest(self) -> tuple:
        return max(_finished(run) for run in self.runs)


def _group_by_setting(runs: list["RunRecord"], reader: _SettingsReader) -> list[_Setting]:
    groups: dict[tuple, list["RunRecord"]] = {}
    # Records read from the database share one config object per distinct setting: read each once.
    seen: dict[tuple[str, int], tuple] = {}
    for run in runs:
        key = (run.stage, id(run.config))
        signature = seen.get(key)
        if signature is None:
            signature = seen[key] = reader.signature(run)
        try:
            groups.setdefault(signature, []).append(run)
        except TypeError:  # a list in the config: make it hashable (slower, and rare)
            groups.setdefault(_hashable(signature), []).append(run)
    return [_Setting(reader.settings(signature), members) for signature, members in groups.items()]


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


def _latest_per_hash(records: Iterable["RunRecord"]) -> list["RunRecord"]:
    """One record per config hash: completed before not, then the latest finished."""
    latest: dict[str, "RunRecord"] = {}
    for run in records:
        old = latest.setdefault(run.hash, run)
        if old is not run and (run.state == "completed", _finished(run)) >= (old.state == "completed", _finished(old)):
            latest[run.hash] = run
    return list(latest.values())


def _choose_settings(sources: dict[tuple, list[_Setting]], filters: dict[tuple, Filter]) -> dict[tuple, list["RunRecord"]]:
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
        completed = sum(len(setting.completed) for setting in members)
        return cells_done[context], cells_with[context], completed, max(setting.latest for setting in members)

    return {
        key: [run for setting in max(contexts.items(), key=preference)[1] for run in setting.runs] if contexts else []
        for key, contexts in contexts_of.items()
    }


def _cell_from_runs(runs: list["RunRecord"], metric: str, paper: Optional[float]) -> Cell:
    completed = [run for run in runs if run.state == "completed"]
    values = []
    for run in completed:
        value = (run.metrics or {}).get(metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            values.append(float(value))
    if values:
        return Cell(VALUE, tuple(values), paper)
    if not completed:
        states = {run.state for run in runs}
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
    """Every dotted config key the table reads (the database can then fetch only these)."""
    keys = set(SETTING_KEYS) | set(table.fixed) | ({table.axis} if table.axis else set())
    for row in table.rows:
        if row.kind == "runs":
            for column in table.columns:
                keys.update(table.filter_for(row, column) or ())
    return keys - {"stage"}


def metric_names(table: TableDef) -> set[str]:
    """Every metric the table's cells read."""
    return {column.metric for column in table.columns}


def build(table: TableDef, records: Iterable["RunRecord"], paper: bool = False) -> TableData:
    runs = _latest_per_hash(records)
    published = paper_entry(table.name) if paper else {"values": {}}

    defined_filters = [table.filter_for(row, column) for row in table.rows if row.kind == "runs"
                       for column in table.columns]
    keys = config_keys(table) | {"stage"}
    stages = {flt.get("stage") for flt in defined_filters if flt is not None}
    if None not in stages:  # every cell names its stage: the other runs cannot match
        runs = [run for run in runs if run.stage in stages]
    reader = _SettingsReader(keys)
    index = _Index(_group_by_setting(runs, reader))

    rows = table.rows
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
        return published["values"].get(row.id, {}).get(column.id)

    cells: dict[tuple[str, str], Cell] = {}
    for row in rows:
        for column in table.columns:
            value = published_value(row, column)
            if row.kind == "runs":
                flt = cell_filters[(row.id, column.id)]
                cells[row.id, column.id] = Cell(BLANK, paper=value) if flt is None else _cell_from_runs(
                    chosen[_filter_key(flt)], column.metric, value)
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
    data = TableData(
        name=table.name, title=table.title, definition=table, row_headers=table.row_headers, columns=columns,
        rows=[RowData(row, [cells[row.id, column.id] for column in columns]) for row in rows],
        paper=paper, paper_columns=frozenset(column.id for column in columns if has_paper(column)),
    )

    matched = {id(run) for settings in sources.values() for setting in settings for run in setting.runs}
    kept = {id(run) for members in chosen.values() for run in members}
    if matched - kept:
        data.notes.append(f"{len(matched - kept)} matching run(s) with other settings left out: each cell keeps "
                          "the setting most cells share (build the table from one sweep to choose).")
    if paper:
        if published["values"]:
            data.notes.append(f"paper: {published['source']}; {paper_citation()}; Δ = ours − paper.")
        data.notes.extend(published.get("notes", []))
    return data


def build_table(name: str, records: Iterable["RunRecord"], paper: bool = False) -> TableData:
    """The named table from these runs; `paper` adds each cell's published value and the difference."""
    return build(get_table(name), records, paper)
