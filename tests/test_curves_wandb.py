"""W&B, offline: one W&B run id for a seedrun run across an interruption and its resume (a requeue's
path through the training code), kept in the run's folder; offline where W&B has no credentials."""

from __future__ import annotations

import pytest

wandb = pytest.importorskip("wandb")

from seedrun.sweeps.compose import compose_config  # noqa: E402
from seedrun.sweeps.spec import pretrain_config  # noqa: E402
from seedrun.training.loop import Interrupted  # noqa: E402
from seedrun.training.pretrain import pretrain  # noqa: E402
from seedrun.training.wandb_run import ID_FILE, mode  # noqa: E402
from conftest import TINY_BASE  # noqa: E402
from test_curves import StopAfter  # noqa: E402


def test_a_resumed_run_continues_the_same_offline_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setenv("SEEDRUN_LOGGERS", "tensorboard,wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = pretrain_config(compose_config(TINY_BASE + ["teacher.pretrain.epochs=2"]))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    first = StopAfter(13)
    with pytest.raises(Interrupted):
        pretrain(config, run_dir, first)
    run_id = (run_dir / ID_FILE).read_text().strip()
    assert run_id and f"W&B run {run_id} (offline)" in first.lines
    second = StopAfter(None)
    pretrain(config, run_dir, second)
    assert (run_dir / ID_FILE).read_text().strip() == run_id
    assert f"W&B run {run_id} (offline)" in second.lines
    # each attempt leaves its offline run under the run folder, both under the one id `wandb sync` uploads to
    offline = sorted(path.name for path in (run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(name.endswith(f"-{run_id}") for name in offline)


def test_offline_without_credentials(tmp_path, monkeypatch):
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    assert mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert mode() == "disabled"
