"""Experiments, not settings (seedrun.store.experiments, protocols): runs are seeds of one experiment only
when their configs are equal but for the seed, and a table shows the results of the probe protocol it
names."""

from __future__ import annotations

import datetime as dt

from seedrun.commands.read import table_groups
from seedrun.store.engine import session_scope
from seedrun.store.experiments import experiment_of
from seedrun.store.schema import Run
from seedrun.sweeps.spec import config_hash
from seedrun.tables import build_table, render


def _config(tau: float, seed: int, width: int) -> dict:
    return {"stage": "distill", "seed": seed, "data": {"name": "imagenet"},
            "distill": {"strategy": "seed", "tau_teacher": tau, "tau_student": 0.2, "queue_size": 65536, "lr": 0.03,
                        "weight_decay": 1e-4, "epochs": 200},
            "teacher": {"arch": "resnet50", "method": "mocov2", "pretrain_epochs": 200},
            "student": {"arch": "resnet18", "width": width}}


def _add(url: str, runs: list[tuple[dict, dict, int]]) -> None:
    with session_scope(url) as session:
        for config, summary, minute in runs:
            session.add(Run(hash=config_hash(config), stage="distill", state="completed", epoch=200,
                            run_dir="/nowhere", config=config, summary=summary, provenance={},
                            finished_at=dt.datetime(2024, 1, 1) + dt.timedelta(minutes=minute)))


def test_the_seed_alone_does_not_make_another_experiment():
    assert experiment_of(_config(0.01, 0, 64)) == experiment_of(_config(0.01, 3, 64))
    assert experiment_of(_config(0.01, 0, 64)) != experiment_of(_config(0.01, 0, 32))
    assert config_hash(_config(0.01, 0, 64)) != config_hash(_config(0.01, 3, 64))


def test_a_table_over_two_sweeps_of_different_widths_never_averages_them(tmp_path):
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    # Two sweeps with the same settings (tau_T, strategy, ...) but students of different widths.
    _add(url, [(_config(0.01, seed, 64), {"knn_top1": 50.0 + seed}, seed) for seed in (0, 1)]
         + [(_config(0.01, seed, 32), {"knn_top1": 30.0 + seed}, 10 + seed) for seed in (0, 1, 2)])
    data = build_table("temperature", table_groups("temperature", url, None))
    cell = data.cell("0.01", "knn_top1")
    assert sorted(cell.values) == [30.0, 31.0, 32.0]  # one experiment (the one with more runs), never a mix
    assert any("up to 2 experiments with the same settings" in note for note in data.notes)
    assert "2 experiments" in render(data, "markdown")


def test_evaluation_results_are_kept_per_protocol_and_the_table_names_its_own(tmp_path, capsys):
    from seedrun.commands.read import print_table

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    _add(url, [(_config(0.01, 0, 64), {"knn_top1": 50.0, "linear.moco.top1": 60.0, "linear.compress.top1": 62.0}, 0),
               (_config(0.1, 0, 64), {"knn_top1": 49.0, "linear.compress.top1": 61.0}, 1)])
    moco = build_table("temperature", table_groups("temperature", url, None))
    assert moco.cell("0.01", "linear_top1").text() == "60.0" and moco.cell("0.1", "linear_top1").text() == "—"
    compress = build_table("temperature", table_groups("temperature", url, None, "compress"))
    assert compress.cell("0.01", "linear_top1").text() == "62.0" and compress.cell("0.1", "linear_top1").text() == "61.0"
    print_table("temperature", url, None, "markdown", False)
    assert "linear columns: the moco probe protocol (the paper's)" in capsys.readouterr().out
    print_table("temperature", url, None, "markdown", False, "compress")
    assert "the compress probe protocol;" in capsys.readouterr().out


def test_an_unknown_protocol_is_bad_input(tmp_path, capsys):
    from seedrun.cli import main

    assert main(["table", "--ablation", "temperature", "--protocol", "simclr", "--db",
                 f"sqlite:///{tmp_path / 'x.db'}"]) == 2
    assert "--protocol: expected one of moco, cached, compress, got 'simclr'" in capsys.readouterr().err
