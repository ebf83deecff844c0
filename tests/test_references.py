"""The lines under a sweep's table (seedrun.commands.launch._print_references): the teacher once, with
the raw-pixel reference, and the student-alone baselines of several seeds as one mean ± std line, with the
same network untrained below it."""

from __future__ import annotations

import io
from contextlib import redirect_stdout

from seedrun.commands.launch import _print_references
from seedrun.store import engine as store
from seedrun.store.schema import Run, Sweep, SweepRun


def _pretrain(role: str, width: int, seed: int) -> dict:
    return {"pretrain": {"role": role, "method": "mocov2", "arch": "resnet18", "width": width, "epochs": 4,
                         "seed": seed}, "data": {"name": "fashion_mnist"}}


def test_baselines_of_several_seeds_are_one_line_with_mean_and_std(tmp_path):
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    runs = [("t" * 64, _pretrain("teacher", 16, 0), {"knn_top1": 74.35, "pixels_knn_top1": 75.5})]
    runs += [(str(seed) * 64, _pretrain("baseline", 8, seed), {"knn_top1": top1, "init_knn_top1": init})
             for seed, top1, init in ((1, 67.0, 60.0), (2, 68.0, 61.0), (3, 69.0, 62.0))]
    with store.session_scope(url) as session:
        rows = [Run(hash=digest, stage="pretrain", state="completed", epoch=4, run_dir=f"/runs/{digest}",
                    config=config, summary=summary) for digest, config, summary in runs]
        session.add_all(rows)
        sweep = Sweep(name="study", path="study.yaml", axes=[])
        session.add(sweep)
        session.flush()
        session.add_all([SweepRun(sweep_id=sweep.id, run_id=row.id, position=i, axes={}) for i, row in enumerate(rows)])
    store._engines.clear()
    out = io.StringIO()
    with redirect_stdout(out):
        _print_references(url, "study")
    assert out.getvalue().splitlines() == [
        "teacher: mocov2 resnet18 width 16, 4 epochs: k-NN top-1 74.3",
        "raw pixels, same k-NN: top-1 75.5",
        "student alone (baseline): mocov2 resnet18 width 8, 4 epochs: k-NN top-1 68.0 ± 1.0 (3 seeds)",
        "  the same network untrained (random init): k-NN top-1 61.0 ± 1.0 (3 seeds)",
    ]
