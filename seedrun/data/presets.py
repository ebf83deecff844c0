"""The training augmentations, one preset per self-supervised method, as the official SEED code defines
them (jacobswan1/SEED tools/utils.py `mocov2_aug`, `simclr_aug`, `swav_aug`; main.py picks one by the
teacher's method). Both loaders apply what `resolve` returns: seedrun.data.augment (in memory, a batch
at a time) and seedrun.data.stream (per image, drawn as the official transforms draw: seedrun.data.draws).

    mocov2  RandomResizedCrop(scale 0.2-1), ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale p 0.2,
            Gaussian blur sigma 0.1-2 with p 0.5, horizontal flip
    swav    as mocov2 with RandomResizedCrop(scale 0.14-1)
    simclr  RandomResizedCrop(scale 0.2-1), grayscale p 0.2 *before* ColorJitter(0.4, 0.4, 0.4, 0.4)
            applied always, horizontal flip, no blur (the official code's simclr_aug is MoCo-v1's)

`data.augment.preset` picks one: `auto` (the default) is the method of what the run learns from, the
teacher's `teacher.method` for a distillation run and its own `pretrain.method` for a pre-training run
(teachers and student-alone baselines). Any other key of `data.augment` overrides that preset's value
(e.g. the tiny data set's larger crops). Resolved when the run starts, not when it is composed, so a
run's config (and hash) holds only what its recipe says.

Blur sigma is in 224 px units; the loaders scale it by image_size / 224. No torch here: the sweep
checks (seedrun.data.formats.check_settings) import it.
"""

from __future__ import annotations

from typing import Any, Optional

# The official values. `grayscale_first`: RandomGrayscale comes before ColorJitter (simclr_aug) rather
# than after it (mocov2_aug, swav_aug); the order matters, since jitter's saturation and hue act on colour.
PRESETS: dict[str, dict[str, Any]] = {
    "mocov2": {"crop_scale": [0.2, 1.0], "jitter": [0.4, 0.4, 0.4, 0.1], "jitter_p": 0.8, "grayscale_p": 0.2,
               "blur_p": 0.5, "blur_sigma": [0.1, 2.0], "flip": True, "grayscale_first": False},
    "swav": {"crop_scale": [0.14, 1.0], "jitter": [0.4, 0.4, 0.4, 0.1], "jitter_p": 0.8, "grayscale_p": 0.2,
             "blur_p": 0.5, "blur_sigma": [0.1, 2.0], "flip": True, "grayscale_first": False},
    "simclr": {"crop_scale": [0.2, 1.0], "jitter": [0.4, 0.4, 0.4, 0.4], "jitter_p": 1.0, "grayscale_p": 0.2,
               "blur_p": 0.0, "blur_sigma": [0.1, 2.0], "flip": True, "grayscale_first": True},
}
CHOICES = ("auto", *PRESETS)
# What a split opened outside a training recipe (evaluation, tools, tests) augments with when the preset
# is auto and no method is named: MoCo-v2's, SEED's main setting and what every data recipe held before.
FALLBACK = "mocov2"


def preset_name(augment: Optional[dict[str, Any]], method: Optional[str]) -> str:
    """The preset a run uses: `data.augment.preset`, or for auto the method it learns from."""
    choice = (augment or {}).get("preset") or "auto"
    if choice != "auto":
        return choice
    if method is None:
        return FALLBACK
    if method not in PRESETS:
        raise ValueError(f"data.augment.preset=auto: no augmentation preset for method {method!r}; "
                         f"expected one of {', '.join(PRESETS)} (or set data.augment.preset)")
    return method


def resolve(augment: Optional[dict[str, Any]], method: Optional[str]) -> dict[str, Any]:
    """Every augmentation setting, the preset's overridden by the recipe's own keys, plus `preset`."""
    name = preset_name(augment, method)
    overrides = {key: value for key, value in (augment or {}).items() if key != "preset" and value is not None}
    return {**PRESETS[name], **overrides, "preset": name}


def _numbers(value: Any, count: int) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == count
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))


def check(augment: Any) -> Optional[tuple[str, str]]:
    """The first bad `data.augment` setting as (key, what was expected), or None."""
    if augment is None:
        return None
    if not isinstance(augment, dict):
        return "data.augment", f"expected a mapping of augmentation settings, got {augment!r}"
    preset = augment.get("preset") or "auto"
    if preset not in CHOICES:
        return "data.augment.preset", f"expected one of {', '.join(CHOICES)}, got {preset!r}"
    for key, value in augment.items():
        where = f"data.augment.{key}"
        if key == "preset" or value is None:
            continue
        if key not in PRESETS["mocov2"]:
            return where, f"unknown setting; known: preset, {', '.join(PRESETS['mocov2'])}"
        if key in ("flip", "grayscale_first"):
            if not isinstance(value, bool):
                return where, f"expected true or false, got {value!r}"
        elif key.endswith("_p"):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                return where, f"expected a probability in [0, 1], got {value!r}"
        elif key == "jitter":
            if not _numbers(value, 4) or min(value) < 0:
                return where, f"expected [brightness, contrast, saturation, hue] >= 0, got {value!r}"
            if value[3] > 0.5:
                return where, f"expected a hue jitter <= 0.5, got {value[3]!r}"
        elif not _numbers(value, 2) or not 0 < value[0] <= value[1] or (key == "crop_scale" and value[1] > 1):
            bound = "0 < low <= high <= 1" if key == "crop_scale" else "0 < low <= high"
            return where, f"expected [low, high] with {bound}, got {value!r}"
    return None
