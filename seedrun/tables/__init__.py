"""Every table of the SEED paper, rebuilt from recorded runs.

    TABLES                              name -> TableDef (definitions.py; one definition a table)
    list_tables()                       [(name, title)] in the paper's order
    build_table(name, groups, paper)    runs -> TableData (build.py)
    render(data, fmt)                   text (rich's grid, terminal.py) | markdown | latex | csv (render.py)
    plot_table(name, groups, path)      PNG (plot.py; imports matplotlib only when called)
    TableData.references                the student alone, teacher, random init, raw pixels (references.py)

Tables read what the database recorded and never need torch, Hydra or SQLAlchemy: `seedrun table` is
a reading command. Runs come in as seedrun.store.groups.RunGroup objects: from the database by
load_groups, from records by group_records.
"""

from __future__ import annotations

from seedrun.tables.build import Cell, TableData, build_table
from seedrun.tables.definitions import TABLES, Column, Row, TableDef, UnknownTable, get_table
from seedrun.tables.plot import plot_table
from seedrun.tables.render import render


def list_tables() -> list[tuple[str, str]]:
    return [(name, table.title) for name, table in TABLES.items()]


__all__ = [
    "TABLES", "Cell", "Column", "Row", "TableData", "TableDef", "UnknownTable",
    "build_table", "get_table", "list_tables", "plot_table", "render",
]
