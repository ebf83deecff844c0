"""`seedrun table` at 80 columns: our numbers read on one line, published-only columns compact.

The demo's temperature table (Fashion-MNIST k-NN of ours, the paper's ImageNet linear and transfer
numbers beside) used to wrap every one of our cells at 80 columns ("71.4 ±" over "0.9") while four
columns held nothing of ours. Its 80-column grid is pinned in tests/golden/tables/demo-temperature-80.txt
(the README's copy); rewrite it with SEEDRUN_UPDATE_GOLDEN=1, as the other golden files.
"""

from __future__ import annotations

import re

from seedrun.store.groups import group_records
from seedrun.tables import build_table
from seedrun.tables.terminal import _cells, fit_widths, to_text
from test_tables import GOLDEN, UPDATE_GOLDEN, distill, fixture_records, pretrain, table

# The demo's means and standard deviations as the README printed them, three seeds each (m - s, m, m + s
# has sample std s), and its teacher and student alone.
DEMO = {0.3: (70.7, 0.5, 98.8, 0.3), 0.1: (71.3, 0.9, 99.0, 0.2), 0.05: (71.7, 0.9, 99.1, 0.1),
        0.01: (71.7, 1.0, 99.0, 0.1), 0.001: (71.1, 0.8, 99.0, 0.2)}
OURS = re.compile(r"\d+\.\d ?± ?\d+\.\d")


def demo_records(init: float | None = None) -> list:
    records, minute = [], 0
    for tau, (top1, std1, top5, std5) in DEMO.items():
        for seed, sign in enumerate((-1, 0, 1)):
            minute += 1
            records.append(distill(tau=tau, seed=seed, minute=minute, epochs=4, teacher="resnet18", pretrain_epochs=30,
                                   metrics={"knn_top1": top1 + sign * std1, "knn_top5": top5 + sign * std5}))
    for seed, top1 in enumerate((65.8, 66.8, 67.8)):
        metrics = {"knn_top1": top1, "knn_top5": 98.0, **({"init_knn_top1": init} if init is not None else {})}
        records.append(pretrain(arch="resnet18", epochs=4, role="baseline", seed=seed, minute=100 + seed, metrics=metrics))
    records.append(pretrain(arch="resnet18", epochs=30, role="teacher", minute=99,
                            metrics={"knn_top1": 74.3, "knn_top5": 99.3, "pixels_knn_top1": 75.5}))
    return records


def demo_table(paper: bool = True):
    return build_table("temperature", group_records(demo_records()), paper=paper)


def test_the_demo_table_fits_80_columns_with_each_of_our_numbers_on_one_line():
    text = to_text(demo_table(), width=80)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    body = [line for line in lines if line.startswith("│")]
    assert len(body) == len(DEMO)  # one line a row: no "—" of ours over each published value
    for top1, std1, top5, std5 in DEMO.values():
        assert f"{top1:.1f} ± {std1:.1f}" in text and f"{top5:.1f} ± {std5:.1f}" in text
    assert "57.9" in text and "60.6" in text  # the published values are still there, beside ours
    assert "(paper)" in text and "the published value alone; no run of ours measured linear top-1" in text
    assert "second line of a cell" not in text  # no cell has a second line


def test_the_demo_grid_at_80_columns_is_the_readme_copy():
    text = to_text(demo_table(), width=80)
    path = GOLDEN / "demo-temperature-80.txt"
    if UPDATE_GOLDEN:
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")


def test_a_table_where_every_column_holds_ours_closes_up_the_plus_minus_before_breaking_a_number():
    # the fixture's temperature table: six columns of ours with the paper's value and Δ below each
    data = table("temperature", fixture_records(), paper=True)
    wide, narrow = to_text(data, width=200), to_text(data, width=80)
    assert "41.2 ± 0.3" in wide  # room enough: the usual spacing
    assert max(len(line) for line in narrow.splitlines()) <= 80
    assert "41.2±0.3" in narrow and "57.9±0.3" in narrow and "82.0±0.1" in narrow  # whole, on one line
    assert not re.search(r"\d ±\s*│|│\s*± ?\d", narrow)  # no number of ours cut at its "±"


def test_column_widths_narrow_the_widest_text_first_and_never_below_a_number_of_ours():
    header, body = _cells(demo_table(), tight=False)
    assert fit_widths(header, body, 200) is None  # it fits as it is: rich's own layout
    widths = fit_widths(header, body, 80)
    assert widths is not None
    assert sum(widths) + 3 * len(widths) + 1 <= 80  # cells, a space either side, borders
    assert widths[1] == widths[2] == len("70.7 ± 0.5")  # our columns keep their numbers whole
    assert widths[0] == len("0.001")
    assert all(width >= len("CIFAR-100") for width in widths[-1:])  # a header word is not cut either
    assert fit_widths(header, body, 30) is None  # cannot fit without breaking ours: rich decides


def test_without_paper_the_demo_table_has_no_published_only_columns():
    data = demo_table(paper=False)
    assert data.published_only() == []
    text = to_text(data, width=80)
    assert "(paper)" not in text and "70.7 ± 0.5" in text


def test_a_table_that_cannot_fit_still_stays_within_the_terminal():
    # the main table's 17 columns cannot keep "44.3 ± 0.3" whole at 80 columns: rich's layout, within 80
    text = to_text(table("main", fixture_records(), paper=True), width=80)
    assert max(len(line) for line in text.splitlines()) <= 80


def test_headers_wrap_before_any_row_does():
    # the Fashion-MNIST strategy table: long row labels ("Binary contrastive") and two published-only
    # columns; at 80 columns the "(paper)" headers take a second line, and every row keeps one line
    records = [distill(strategy=strategy, seed=seed, minute=seed, metrics={"knn_top1": 70.0 + seed, "knn_top5": 99.0})
               for strategy in ("l2", "kmeans", "online_clustering", "binary_contrastive", "seed_mocov2", "seed")
               for seed in (0, 1, 2)]
    text = to_text(build_table("distillation", group_records(records), paper=True), width=80)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert len([line for line in lines if line.startswith("│")]) == 6
    assert "Binary contrastive" in text and "Online clustering" in text and "71.0 ± 1.0" in text
    assert len([line for line in lines if line.startswith("┃")]) == 2  # the headers wrapped instead
