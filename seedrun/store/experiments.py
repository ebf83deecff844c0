"""Experiments: runs whose configs are equal except for the seed are seeds of one experiment.

The experiment key is the run's config hash (seedrun.sweeps.spec.config_hash, so what does not change a
result is left out there too) computed with the seed left out: the top-level `seed` and a pre-training
run's `pretrain.seed`. Tables average runs of one experiment only; settings (seedrun.sweeps.settings)
stay what rows and columns are labelled by.

No SQLAlchemy or torch here.
"""

from __future__ import annotations

from typing import Any, Mapping

SEED_KEYS = (("seed",), ("pretrain", "seed"))


def experiment_of(config: Mapping[str, Any]) -> str:
    """The config hash with the seed left out (sha256 hex)."""
    from seedrun.sweeps.spec import config_hash

    content = {key: value for key, value in (config or {}).items() if key != "seed"}
    if isinstance(content.get("pretrain"), Mapping):
        content["pretrain"] = {k: v for k, v in content["pretrain"].items() if k != "seed"}
    return config_hash(content)
