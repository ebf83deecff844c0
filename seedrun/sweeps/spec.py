"""A run as data: its resolved config and the stable hash that names it everywhere.

The hash is the sha256 of the config's canonical JSON (sorted keys, no whitespace), leaving out what
changes where or how a run executes but not what it computes (launcher, device, threads, data root,
and a teacher checkpoint's path when its sha256 is there: teachers are known by content).
The same config always gets the same hash, so a run is trained once however many sweeps name it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Optional

# Keys that do not change a run's result: moving the data or the cluster must not retrain it.
EXECUTION_KEYS = ("launcher", "device", "threads")
# Which evaluations follow a run (eval.after, eval.protocols) are runs of their own: not this run's content.
EXECUTION_SUBKEYS = (("data", "root"), ("data", "loader_workers"), ("data", "workers"), ("data", "prefetch"),
                     ("data", "max_bad_images"), ("eval", "after"), ("eval", "protocols"))
# Keys left out while at these values, so that adding them to the recipes kept recorded runs' hashes.
DEFAULT_SUBKEYS = {("data", "loader"): "auto", ("distill", "sync_bn"): False, ("distill", "deterministic"): True,
                   ("distill", "compile"): False}


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def config_hash(config: dict[str, Any]) -> str:
    content = {key: value for key, value in config.items() if key not in EXECUTION_KEYS}
    teacher = content.get("teacher")
    if isinstance(teacher, dict) and teacher.get("checkpoint_sha256"):
        # a teacher file is known by its content (seedrun.sweeps.teachers): where it lies changes nothing
        content["teacher"] = {k: v for k, v in teacher.items() if k != "checkpoint"}
    for section, key in EXECUTION_SUBKEYS:
        if isinstance(content.get(section), dict) and key in content[section]:
            content[section] = {k: v for k, v in content[section].items() if k != key}
    for (section, key), default in DEFAULT_SUBKEYS.items():
        if isinstance(content.get(section), dict) and content[section].get(key, default) == default:
            content[section] = {k: v for k, v in content[section].items() if k != key}
    return hashlib.sha256(canonical_json(content).encode()).hexdigest()


@dataclass
class RunSpec:
    """One run of a sweep: stage "pretrain" (a self-supervised teacher or baseline) or "distill"."""

    stage: str
    config: dict[str, Any]
    axes: dict[str, Any] = field(default_factory=dict)  # the sweep's varied keys -> this run's values
    depends_on: Optional[str] = None  # hash of the run whose checkpoint this one needs
    hash: str = ""

    def __post_init__(self) -> None:
        self.config = {**self.config, "stage": self.stage}
        if self.depends_on:
            self.config["depends_on"] = self.depends_on
        self.hash = config_hash(self.config)

    @property
    def short(self) -> str:
        return self.hash[:12]


def pretrain_config(composed: dict[str, Any], section: str = "teacher") -> dict[str, Any]:
    """The config of the self-supervised run that trains `section`'s network (its own run, own hash).

    section "teacher": the teacher a distillation run needs. section "student": the student trained
    alone by the teacher's own recipe (MoCo-v2) for as many epochs as it is distilled, the baseline the
    paper compares every student with, with the settings its student recipe's `baseline:` names instead
    (`epochs_factor` times the distillation's epochs). Only what the pre-training uses goes in, so every
    run that names the same teacher (or baseline) shares it.
    """
    net = composed[section]
    recipe = dict(composed["teacher"]["pretrain"])
    if section == "student":
        # a student recipe's own MoCo-v2 settings (student.baseline) where the teacher's do not suit it
        recipe.update({key: value for key, value in (net.get("baseline") or {}).items() if value is not None})
        # epochs_factor: a student that needs a longer schedule than the distillation to learn anything alone
        epochs = max(1, round(composed["distill"]["epochs"] * recipe.pop("epochs_factor", 1)))
        recipe.update(epochs=epochs, seed=composed["seed"], dim=net.get("dim", 128))
    pretrain = {
        "role": "teacher" if section == "teacher" else "baseline",
        "method": composed["teacher"].get("method", "mocov2") if section == "teacher" else "mocov2",
        "arch": net["arch"],
        "width": net.get("width", 64),
        "small_images": net.get("small_images", False),
        # how the network is built (seedrun.models.catalog.STUDENT_BUILD), where its recipe says
        **{key: net[key] for key in ("bn", "layout") if key in net},
        **recipe,
    }
    return {
        "data": composed["data"],
        "pretrain": pretrain,
        "eval": composed["eval"],
        "precision": composed.get("precision", "auto"),
        **{key: composed[key] for key in EXECUTION_KEYS if key in composed},
    }


def evaluation_config(trained: "RunSpec", protocol: str) -> dict[str, Any]:
    """The config of evaluating `trained` with `protocol`: its own run, keyed by the trained run and the settings."""
    from seedrun.sweeps.launcher_values import stage_settings

    config = trained.config
    evaluation = {
        "protocol": protocol,
        "settings": config["eval"]["protocols"][protocol],
        "source": trained.hash,
        "data": config["data"],
        "seed": config.get("seed", 0),
        **{key: config[key] for key in EXECUTION_KEYS if key in config},
    }
    if isinstance(evaluation.get("launcher"), dict):  # one GPU, not the trained run's whole node (a sweep's eval block wins)
        evaluation["launcher"] = stage_settings(evaluation["launcher"], "eval")
    return evaluation
