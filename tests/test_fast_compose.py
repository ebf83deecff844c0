"""The fast composition path gives Hydra's configs byte for byte, hence the same run hashes.

seedrun composes each set of recipe choices once with Hydra and sets value overrides on plain data
(seedrun.sweeps.fast); recorded runs are named by the hash of what Hydra composed, so the two must
never differ: same values, same types, same key order, same interpolations resolved.
"""

from __future__ import annotations

import itertools
import json

import pytest

from seedrun.sweeps import compose
from seedrun.sweeps.spec import config_hash

CHOICES = [
    ["data=tiny", "teacher=small_resnet_mocov2", "student=small_resnet18", "distill=seed"],
    ["data=imagenet", "teacher=resnet50_mocov2", "student=resnet18", "distill=l2", "launcher=slurm"],
    ["teacher=small_resnet_simclr", "distill=kmeans", "eval=full"],
]
VALUES = [
    [],
    ["distill.tau_teacher=0.01"],
    ["distill.tau_teacher=1e-05", "distill.epochs=3", "seed=7"],
    ["teacher.pretrain.epochs=7"],                      # read by ${.pretrain.epochs}
    ["teacher.pretrain.epochs=7", "teacher.width=32"],
    ["distill.lr=0", "distill.weight_decay=0.0", "distill.small_crop_scale=[0.1,0.2]"],
    ["teacher.checkpoint=null"],
    ["teacher.checkpoint='/elsewhere/x y.pth'"],
    ["teacher.checkpoint='${oc.env:HOME}/t.pth'"],     # an interpolation set by an override
    ["data.name='a;b $(c)'", "distill.tau_teacher=true", "precision=bf16"],
    ["distill.small_crop_scale=[0.05,${distill.tau_teacher}]"],
    ["++distill.extra=1"],                              # a new key: Hydra's own rules
]


def _hydra(overrides: list[str]) -> dict:
    from hydra import compose as hydra_compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(compose.PACKAGED_RECIPES), version_base=None):
        return OmegaConf.to_container(hydra_compose(config_name="config", overrides=overrides), resolve=True)


@pytest.fixture
def slow_calls(monkeypatch):
    calls = []
    original = compose._compose_slow

    def counted(*args):
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(compose, "_compose_slow", counted)
    return calls


def test_fast_path_is_hydra_byte_for_byte(monkeypatch, slow_calls):
    monkeypatch.setenv("SEEDRUN_TEACHERS", "/teachers/one")
    cases = [choices + values for choices, values in itertools.product(CHOICES, VALUES)]
    reference = {}  # Hydra's config of each case, composed once: the same overrides and environment both times
    for overrides in cases + cases:  # the second time from the caches
        key = json.dumps(overrides)
        if key not in reference:
            reference[key] = _hydra(overrides)
        fast, hydra = compose.compose_config(overrides), reference[key]
        assert json.dumps(fast) == json.dumps(hydra), overrides
        assert config_hash(fast) == config_hash(hydra)
    # the environment is an input of ${oc.env:...}: a new value is seen, not served from the cache
    monkeypatch.setenv("SEEDRUN_TEACHERS", "/teachers/two")
    moved = compose.compose_config(CHOICES[1] + ["distill.tau_teacher=0.3"])
    assert moved["teacher"]["checkpoint"].startswith("/teachers/two/") and moved == _hydra(CHOICES[1] + ["distill.tau_teacher=0.3"])


def test_a_thousand_runs_take_the_fast_path(slow_calls):
    """Hydra composes the recipes once; values that interpolations do not read never reach OmegaConf."""
    for i in range(1000):
        overrides = CHOICES[0] + [f"distill.tau_teacher={0.001 + i * 1e-4:.6g}", f"seed={i % 4}"]
        compose.compose_config(overrides)
    assert len(slow_calls) <= 1  # at most once, to resolve the teacher's interpolation
