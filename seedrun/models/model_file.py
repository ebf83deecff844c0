"""seedrun's own model format: the finished network a run leaves in its folder (`model.pt`), which
later stages load as a teacher or evaluate. `save_model` is its only writer and `load_own_model` its
reader; seedrun.models.teacher_formats recognises it among the official layouts by its "seedrun" key:

    {"seedrun": {"format": 1, "arch", "width", "small_images", "in_chans", "method", "head_shape", ...},
     "backbone": state_dict, "head": state_dict or None}
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from seedrun.atomic import atomic_torch_save
from seedrun.models.heads import head_from_state_dict, head_shape
from seedrun.models.registry import create_backbone

MODEL = "model.pt"  # the file name in a run's folder
FORMAT_VERSION = 1


def save_model(path: str | os.PathLike, backbone: nn.Module, head: nn.Module | None, *, arch: str, width: int,
               small_images: bool, in_chans: int, method: str | None = None, extra: Mapping | None = None) -> str:
    """Write a network in seedrun's format atomically; returns the file's sha256."""
    marker = {
        "format": FORMAT_VERSION, "arch": arch, "width": int(width), "small_images": bool(small_images),
        "in_chans": int(in_chans), "method": method, "head_shape": list(head_shape(head) or []), **dict(extra or {}),
    }
    state = {
        "seedrun": marker,
        "backbone": {k: v.detach().cpu() for k, v in backbone.state_dict().items()},
        "head": None if head is None else {k: v.detach().cpu() for k, v in head.state_dict().items()},
    }
    return sha256_file(atomic_torch_save(state, path))


def load_own_model(path: Path, channels: int) -> tuple[nn.Module, nn.Module]:
    """A seedrun model.pt: the backbone by name, the head (any method's) sized from its tensors."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = state["seedrun"]
    backbone, _ = create_backbone(net["arch"], small_images=net["small_images"], in_chans=channels, width=net["width"],
                                  **build_of(net, state["backbone"]))
    backbone.load_state_dict(state["backbone"])
    head = head_from_state_dict(state["head"])
    head.load_state_dict(state["head"])
    return backbone, head


#: the students whose build is a setting (issue 21): a file that names no layout is read by its keys
REBUILT_STUDENTS = ("mobilenetv3_large", "efficientnet_b0", "efficientnet_b1")


def build_of(marker: Mapping, keys: Iterable[str] = ()) -> dict[str, str]:
    """The `bn` and `layout` a model file's network was built with (seedrun.models.catalog.STUDENT_BUILD).
    A file that does not say (written before the setting, or by a caller that did not pass it) is told
    by its backbone's keys: torchvision's blocks are `features.N...block`, the official code's are not."""
    if "layout" not in marker and marker.get("arch") in REBUILT_STUDENTS:
        build = "torchvision" if any(".block." in key for key in keys) else "official"
        return {"bn": build, "layout": build}
    return {key: marker[key] for key in ("bn", "layout") if marker.get(key)}


def build_marker(section: Mapping) -> dict[str, str]:
    """What a model file records of how its network was built: a config section's `bn` and `layout`
    (None there is the official build) for the students whose build is a setting, nothing for others."""
    if section.get("arch") not in REBUILT_STUDENTS:
        return {}
    return {key: section.get(key) or "official" for key in ("bn", "layout")}


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
