"""`seedrun table --plot`: ours and the paper's in separate panels, each on its own axis, and our panel
with the lines a reader judges it by (student alone with its ± std band, teacher, random init, raw pixels).

The figures are read back through matplotlib (axes, lines, patches, labels), not by looking at pixels.
"""

from __future__ import annotations

import pytest

from seedrun.store.groups import group_records
from seedrun.tables import TABLES, build_table, plot_table
from seedrun.tables.plot import draw_table
from test_table_width import DEMO, demo_records
from test_tables import _write, fixture_records, table

pytest.importorskip("matplotlib")


@pytest.fixture
def figures():
    import matplotlib.pyplot as plt

    drawn = []
    yield lambda data: drawn.append(draw_table(data)) or drawn[-1]
    for figure in drawn:
        plt.close(figure)


def _lines(axes) -> dict[str, list[float]]:
    """{legend label: y values} of the panel's lines (axhline: a constant y)."""
    return {line.get_label(): list(line.get_ydata()) for line in axes.get_lines() if not line.get_label().startswith("_")}


def _reference(axes, start: str) -> float:
    [(label, ys)] = [(label, ys) for label, ys in _lines(axes).items() if label.startswith(start)]
    assert len(set(ys)) == 1, (label, ys)  # a horizontal line
    return ys[0]


def _spans(axes) -> list[tuple[float, float]]:
    """The y extent of each shaded band (axhspan) of the panel."""
    out = []
    for patch in axes.patches:
        ys = patch.get_patch_transform().transform(patch.get_path().vertices)[:, 1]
        out.append((round(min(ys), 6), round(max(ys), 6)))
    return out


def test_the_demo_plot_puts_ours_and_the_paper_on_separate_axes(figures):
    figure = figures(build_table("temperature", group_records(demo_records()), paper=True))
    ours, paper = figure.axes
    assert ours.get_title().startswith("ours: k-NN top-1") and paper.get_title().startswith("paper (published)")
    # ours: the five means, and not one of the paper's values
    [curve] = [bars for bars in ours.containers if bars.get_label().startswith("SEED student")]  # an errorbar
    assert sorted(curve.lines[0].get_ydata()) == pytest.approx(sorted(top1 for top1, *_ in DEMO.values()))
    assert not any(46 < y < 62 or y > 80 for line in ours.get_lines() for y in line.get_ydata())
    # the paper's: its four columns, on an axis of its own
    assert set(_lines(paper)) == {"linear top-1", "linear top-5", "CIFAR-10 top-1", "CIFAR-100 top-1"}
    low, high = ours.get_ylim()
    assert 60 < low < 66 and 75.5 < high < 80  # our range: around 71 and its references, not 47-88
    paper_low, paper_high = paper.get_ylim()
    assert paper_low < 47 and paper_high > 87.5


def test_our_panel_has_the_student_alone_with_its_band_the_teacher_and_raw_pixels(figures):
    ours = figures(build_table("temperature", group_records(demo_records()), paper=True)).axes[0]
    assert _reference(ours, "student alone") == pytest.approx(66.8)
    assert (65.8, 67.8) in _spans(ours)  # mean ± sample std of 65.8, 66.8, 67.8
    assert _reference(ours, "teacher") == pytest.approx(74.3)
    assert _reference(ours, "raw pixels") == pytest.approx(75.5)
    labels = list(_lines(ours))
    assert "student alone (mocov2 resnet18, 4 epochs): 66.8 ± 1.0" in labels
    assert not any(label.startswith("random init") for label in labels)  # not recorded: not drawn, not guessed
    legend = [text.get_text() for text in ours.get_legend().get_texts()]
    assert legend[0].startswith("SEED student")  # ours first, then what it is judged by


def test_a_random_init_line_where_the_student_alone_recorded_init_knn_top1(figures):
    ours = figures(build_table("temperature", group_records(demo_records(init=59.6)))).axes[0]
    assert _reference(ours, "random init") == pytest.approx(59.6)


def test_without_paper_values_there_is_one_panel(figures):
    figure = figures(build_table("temperature", group_records(demo_records()), paper=False))
    assert len(figure.axes) == 1 and figure.axes[0].get_title().startswith("ours")


@pytest.mark.parametrize("name", list(TABLES))
def test_every_table_plots_ours_apart_from_the_paper_with_its_references(name, figures):
    figure = figures(table(name, fixture_records(), paper=True))
    ours = figure.axes[0]
    assert ours.get_title().startswith("ours")
    assert _reference(ours, "teacher (mocov2 resnet50") == pytest.approx(67.0)  # the fixture's teacher, linear top-1
    if name != "main":  # the main table's student alone is its MoCo-v2 row, a series of its own
        assert _reference(ours, "student alone") == pytest.approx(52.0)
    published = {name for name in ("main", "teacher", "distillation", "temperature")}
    assert len(figure.axes) == (2 if name in published else 1)  # queue, lr, wd: nothing published
    if name in published:
        ours_values = {y for ys in _lines(ours).values() for y in ys}
        assert 54.8 not in ours_values and 55.3 not in ours_values  # published values stay in their panel


def test_the_table_command_draws_the_references_it_reads_from_the_database(tmp_path, capsys):
    from seedrun.cli import main
    from seedrun.commands.read import table_groups

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    _write(url, demo_records(init=59.6))
    # the reference runs come in with the table's own (stages, metrics: seedrun.tables.build)
    data = build_table("temperature", table_groups("temperature", url, None), paper=True)
    assert {reference.kind for reference in data.references} == {"student alone", "teacher", "random init", "raw pixels"}
    path = tmp_path / "temperature.png"
    assert main(["table", "--ablation", "temperature", "--plot", str(path), "--db", url]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote {path}" in capsys.readouterr().out


def test_plot_table_writes_a_png(tmp_path):
    path = plot_table("distillation", group_records(fixture_records()), tmp_path / "sub" / "d.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
