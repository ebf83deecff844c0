"""seedrun.tables.terminal: the grid `seedrun table` prints (drawn by rich), at a terminal's width, in
colour only on a terminal, and through the CLI without importing torch (golden files in test_tables
cover the layout)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from seedrun.tables.terminal import to_text, wants_color
from test_tables import _write, fixture_records, table

ANSI = re.compile("\x1b\\[[0-9;]*m")


def test_markup_in_a_title_or_a_note_is_printed_as_it_is():
    data = table("distillation", fixture_records())
    data.notes.append("[bold]not markup[/bold] :smile:")
    text = to_text(data, width=200)
    assert "[bold]not markup[/bold] :smile:" in text


@pytest.mark.parametrize("name, width", [("distillation", 80), ("distillation", 60), ("main", 100), ("main", 80),
                                         ("teacher", 100), ("teacher", 80)])
def test_a_table_wider_than_the_terminal_wraps_its_cells_to_fit(name, width):
    data = table(name, fixture_records(), paper=True)
    wide = to_text(data, width=1000)
    text = to_text(data, width=width)
    lines = text.splitlines()
    assert max(len(line) for line in wide.splitlines()) > width  # the test needs a table that must wrap
    assert max(len(line) for line in lines) <= width
    assert len({len(line) for line in lines if line[:1] in "┏┃┡│└"}) == 1  # every rule line equally long
    assert len(lines) > len(wide.splitlines())  # the cells wrapped onto more lines
    if name == "distillation":  # the row labels and values survive the wrapping
        assert "SEED" in text and "44.3" in text and "failed" in text


def test_styles_only_when_asked_and_the_text_is_the_same_without_them():
    data = table("distillation", fixture_records(), paper=True)
    plain = to_text(data, width=200)
    styled = to_text(data, width=200, color=True)
    assert "\x1b" not in plain
    # states in their colours (the padding of a right-justified cell shares its style), labels bold, paper cyan
    assert re.search("\x1b\\[31m *failed\x1b\\[0m", styled) and re.search("\x1b\\[33m *running\x1b\\[0m", styled)
    assert "\x1b[1mSEED" in styled and "\x1b[36m57.9 +0.0\x1b[0m" in styled
    assert ANSI.sub("", styled) == plain


def test_colour_only_on_a_terminal_and_never_under_no_color(monkeypatch):
    class Terminal:
        def isatty(self):
            return True

    for name in ("NO_COLOR", "FORCE_COLOR", "TERM"):
        monkeypatch.delenv(name, raising=False)
    assert wants_color(Terminal()) and not wants_color(open(os.devnull, "w"))
    monkeypatch.setenv("NO_COLOR", "1")
    assert not wants_color(Terminal())
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    assert not wants_color(Terminal())


def test_the_table_command_prints_the_grid_without_torch_and_honours_columns(tmp_path):
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    _write(url, fixture_records())
    # a reading command: nothing of training, nor the ORM, comes in (rich does: it draws the grid)
    probe = ("import sys; from seedrun.cli import main; code = main(sys.argv[1:]); "
             "loaded = [m for m in ('torch', 'torchvision', 'hydra', 'sqlalchemy') if m in sys.modules]; "
             "assert not loaded, f'{loaded} imported'; assert 'rich' in sys.modules; raise SystemExit(code)")
    env = {key: value for key, value in os.environ.items() if key not in ("NO_COLOR", "FORCE_COLOR")}

    def run(*args, **extra):
        result = subprocess.run([sys.executable, "-c", probe, "table", "--ablation", "distillation", *args],
                                env={**env, "SEEDRUN_DB": url, **extra}, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result.stdout

    narrow, wide = run(COLUMNS="80"), run(COLUMNS="200")
    assert max(map(len, narrow.splitlines())) <= 80 < max(map(len, wide.splitlines()))
    assert "\x1b" not in wide and "SEED" in wide and "44.3 ± 0.3" in wide  # piped: no colour codes
    assert re.search("\x1b\\[31m *failed", run(COLUMNS="200", FORCE_COLOR="1"))
    assert "\x1b" not in run(COLUMNS="200", FORCE_COLOR="1", NO_COLOR="1")
    assert run("--format", "rich", COLUMNS="200") == wide  # the format's old name still works


def test_the_reading_commands_leave_the_collector_as_they_found_it(tmp_path, capsys):
    """status and table, called in-process (a notebook, a test), leave the cycle collector running."""
    import gc

    from seedrun.cli import main

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    _write(url, fixture_records())
    was = gc.isenabled()
    gc.enable()
    try:
        for args in (["table", "--ablation", "distillation"], ["table", "--list"], ["status", "--no-reconcile"]):
            assert main([*args, "--db", url]) == 0
            assert gc.isenabled(), args
    finally:
        gc.enable() if was else gc.disable()
    assert "SEED" in capsys.readouterr().out
