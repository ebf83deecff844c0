"""The learning-rate schedule (issue 16 item 2): by default the official SEED code's (tools/utils.py
adjust_learning_rate, called once an epoch by main.py), today's per-step variant as `lr_schedule: per_step`."""

from __future__ import annotations

import math

import pytest
import torch

from seedrun.training.loop import Hooks, lr_at, sgd_and_loop


def adjust_learning_rate(epoch: int, lr: float, lr_mult: float, warmup_epochs: int, epochs: int) -> float:
    """The official function, transcribed (args.cos=True, as SEED's scripts run it)."""
    out = lr * lr_mult
    if epoch < warmup_epochs:
        out = lr + (lr * lr_mult - lr) / warmup_epochs * epoch
    else:
        out *= 0.5 * (1. + math.cos(math.pi * epoch / epochs))
    return out


@pytest.mark.parametrize("batch", [128, 256, 512])
def test_official_lr_matches_the_official_function(batch):
    from seedrun.training.loop import official_lr

    for epoch in range(200):
        expected = adjust_learning_rate(epoch, 0.03, batch / 256, 5, 200)
        assert official_lr(epoch, 200, 5, 0.03, 0.03 * batch / 256) == pytest.approx(expected, rel=1e-12)


def _loop(tmp_path, **settings):
    settings = {"lr": 0.03, "momentum": 0.9, "weight_decay": 1e-4, "epochs": 10, "warmup_epochs": 2, **settings}
    parameter = torch.nn.Parameter(torch.zeros(1))
    # 512 images at batch 128: 4 steps an epoch, peak lr 0.015
    return sgd_and_loop([parameter], settings, 128, 512, tmp_path, Hooks())


def test_loop_follows_the_official_schedule_by_default(tmp_path):
    optimizer, loop = _loop(tmp_path)  # no lr_schedule key: recipes written before it get the official one
    seen = []
    for step in range(40):
        loop.set_lr(optimizer, step)
        seen.append(optimizer.param_groups[0]["lr"])
    per_epoch = [seen[e * 4:(e + 1) * 4] for e in range(10)]
    assert all(len(set(values)) == 1 for values in per_epoch)  # constant within an epoch
    assert [values[0] for values in per_epoch] == pytest.approx(
        [adjust_learning_rate(e, 0.03, 0.5, 2, 10) for e in range(10)])
    assert seen[0] == pytest.approx(0.03)  # the warm-up starts from the per-256 lr, not from 0


def test_per_step_keeps_the_previous_schedule_as_a_setting(tmp_path):
    official, official_loop = _loop(tmp_path)  # the default, for contrast
    official_loop.set_lr(official, 5)
    assert official.param_groups[0]["lr"] == pytest.approx(0.03 + (0.015 - 0.03) / 2)  # epoch 1 of the warm-up
    optimizer, loop = _loop(tmp_path, lr_schedule="per_step")
    for step in (0, 3, 8, 20, 39):
        loop.set_lr(optimizer, step)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(lr_at(step, 40, 8, 0.015))
    loop.set_lr(optimizer, 0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.015 / 8)


def test_an_unknown_schedule_is_refused(tmp_path):
    with pytest.raises(ValueError, match="lr_schedule: expected one of official, per_step, got 'step'"):
        _loop(tmp_path, lr_schedule="step")


def test_a_sweep_refuses_an_unknown_schedule_before_anything_runs(tmp_path):
    from seedrun.errors import InputError
    from seedrun.sweeps.sweep_file import expand
    from conftest import TINY_SWEEP_BASE, write_sweep

    path = write_sweep(tmp_path / "s.yaml", "name: s\n" + TINY_SWEEP_BASE + "  distill.lr_schedule: cosine\n")
    with pytest.raises(InputError, match="distill.lr_schedule: expected official or per_step, got 'cosine'"):
        expand(path)
