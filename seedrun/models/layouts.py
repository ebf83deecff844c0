"""The official checkpoint layouts told apart by their tensor names alone, without torch: shared by
seedrun.models.teacher_formats (names of a loaded checkpoint) and seedrun.sweeps.teachers (names read
from the file's pickle at plan time)."""

from __future__ import annotations

import re
from typing import Iterable, Optional


def layout_of(names: Iterable[str]) -> Optional[str]:
    """mocov2, swav, simclr or torchvision from a checkpoint's tensor names; None when none fits.
    (A seedrun model file is recognised by its "seedrun" marker before names are looked at.)"""
    names = list(names)
    if any(re.match(r"^(module\.)*encoder_q\.", name) for name in names):
        return "mocov2"
    stripped = {re.sub(r"^(module\.)+", "", name) for name in names}
    if any(name.startswith(("projection_head.", "prototypes")) for name in stripped):
        return "swav"
    if {"fc.0.weight", "fc.1.running_mean", "fc.3.weight"} <= stripped:
        return "simclr"
    if "conv1.weight" in stripped and any(name.startswith("layer1.") for name in stripped):
        if "fc.weight" in stripped or not any(name.startswith("module.") for name in names):
            return "torchvision"
        return "swav"  # module.-prefixed ResNet without head or classifier: SwAV's DDP backbone
    return None
