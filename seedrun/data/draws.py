"""Each training view's random parameters, drawn as the official SEED code's transforms draw them.

The official pipeline (SEED tools/utils.py mocov2_aug / swav_aug / simclr_aug, on torchvision's PIL
transforms) draws from torch's global generator, transform by transform, and only when a transform
runs: RandomResizedCrop's box, RandomApply's coin then ColorJitter's order and four factors, RandomGrayscale's
coin, RandomApply's coin then the blur's sigma, RandomHorizontalFlip's coin. `draw` makes the same calls
(torchvision's own get_params for the crop and the jitter, the same `p < rand` comparisons) in the
preset's order, so one seed gives the official parameters exactly; what applies them is another
module's business (seedrun.data.pillow_ops on the CPU, seedrun.data.batched_ops on the run's device).

Two differences from the official code, both of source, not of distribution: MoCo's GaussianBlur draws
sigma with Python's `random.uniform`, here torch's uniform_ (U(0.1, 2) either way), so that one seed
decides a whole view; and the caller seeds the generator per (seed, epoch, index, view)
(seedrun.data.sampling.stream_seed) rather than letting a worker's generator run on, so that a resumed
run redraws the same views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

# the layout of a view's parameters as one row of numbers (what the batched path receives from workers)
FIELDS = ("jitter", "order0", "order1", "order2", "order3", "brightness", "contrast", "saturation", "hue",
          "gray", "sigma", "flip", "gray_first")


@dataclass(frozen=True)
class ViewParams:
    """One view: the crop box (top, left, height, width in full-image pixels) and what follows it.
    A jitter factor is None where its strength is 0 (torchvision skips it); sigma is None when no blur."""

    box: tuple[int, int, int, int]
    jitter: bool = False
    order: tuple[int, ...] = (0, 1, 2, 3)
    factors: tuple[Optional[float], ...] = (None, None, None, None)
    gray: bool = False
    sigma: Optional[float] = None
    flip: bool = False
    gray_first: bool = False  # the preset's order: RandomGrayscale before ColorJitter (simclr_aug)

    def row(self) -> list[float]:
        """The parameters after the crop as numbers, in FIELDS' order (a skipped factor is its identity)."""
        identity = (1.0, 1.0, 1.0, 0.0)
        factors = [identity[k] if f is None else f for k, f in enumerate(self.factors)]
        return [float(self.jitter), *map(float, self.order), *factors, float(self.gray),
                float(self.sigma or 0.0), float(self.flip), float(self.gray_first)]


class Drawer:
    """Draws ViewParams for one resolved augmentation preset (seedrun.data.presets) from torch's global
    generator; the caller seeds it (`seeded`) before each view."""

    def __init__(self, aug: dict[str, Any], image_size: int, crop_scale=None):
        from torchvision import transforms

        self.scale = tuple(float(s) for s in (crop_scale or aug["crop_scale"]))
        self.ratio = (3.0 / 4.0, 4.0 / 3.0)
        # torchvision draws the aspect's log between the float32 logs of the ratio bounds
        self.log_ratio = tuple(float(v) for v in torch.log(torch.tensor(self.ratio)))
        # ColorJitter turns strengths into ranges (0.4 -> [0.6, 1.4], hue 0.1 -> [-0.1, 0.1]; 0 -> None)
        jitter = transforms.ColorJitter(*aug["jitter"])
        self.ranges = (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)
        self.jitter_p, self.gray_p, self.blur_p = float(aug["jitter_p"]), float(aug["grayscale_p"]), float(aug["blur_p"])
        self.gray_first, self.flip = bool(aug["grayscale_first"]), bool(aug["flip"])
        # sigma in 224 px units (the official sizes); a smaller image is blurred as its 224 px twin
        self.sigma = tuple(float(s) * image_size / 224 for s in aug["blur_sigma"])
        self._jitter_params = transforms.ColorJitter.get_params

    def crop(self, width: int, height: int) -> tuple[int, int, int, int]:
        """RandomResizedCrop's box (top, left, height, width) for a width x height image: the same torch
        calls as torchvision's get_params, in the same order, so the same box from the same generator
        (tests/test_loader_augment.py compares them). Not theirs called: it builds tensors and logs API
        use on every call, half of a view's drawing time."""
        area = height * width
        for _ in range(10):  # draws that do not fit are drawn again, up to 10 times
            target = area * torch.empty(1).uniform_(self.scale[0], self.scale[1]).item()
            aspect = math.exp(torch.empty(1).uniform_(self.log_ratio[0], self.log_ratio[1]).item())
            w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, size=(1,)).item())
                return top, int(torch.randint(0, width - w + 1, size=(1,)).item()), h, w
        ratio = width / height  # none fitted: the central crop of the nearest allowed aspect
        if ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif ratio > self.ratio[1]:
            w, h = int(round(height * self.ratio[1])), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def _jitter(self) -> dict[str, Any]:
        # RandomApply runs its transforms unless p < rand; simclr_aug's ColorJitter is not wrapped (p 1)
        if self.jitter_p <= 0 or (self.jitter_p < 1 and self.jitter_p < float(torch.rand(1))):
            return {}
        order, *factors = self._jitter_params(*self.ranges)
        return {"jitter": True, "order": tuple(int(k) for k in order), "factors": tuple(factors)}

    def _gray(self) -> dict[str, Any]:
        if self.gray_p <= 0:  # not in the preset: no transform, no draw
            return {}
        return {"gray": bool(float(torch.rand(1)) < self.gray_p)}

    def draw(self, width: int, height: int) -> ViewParams:
        """One view's parameters for a width x height image, in the preset's transform order."""
        params: dict[str, Any] = {"box": self.crop(width, height), "gray_first": self.gray_first}
        if self.gray_first:  # simclr_aug: RandomGrayscale, then ColorJitter
            params.update(self._gray())
            params.update(self._jitter())
        else:  # mocov2_aug, swav_aug: RandomApply(ColorJitter), then RandomGrayscale
            params.update(self._jitter())
            params.update(self._gray())
        if self.blur_p > 0 and not self.blur_p < float(torch.rand(1)):
            params["sigma"] = float(torch.empty(1).uniform_(self.sigma[0], self.sigma[1]))
        if self.flip:
            params["flip"] = bool(float(torch.rand(1)) < 0.5)
        return ViewParams(**params)


def seeded(seed: int):
    """A context in which torch's global CPU generator is seeded with `seed` and restored afterwards.

    Only the CPU generator: torch.manual_seed also queues a seed for every lazy device back end (CUDA,
    XPU, MTIA), formatting a stack trace for each, about 0.7 ms an image on a CUDA build, more than a
    whole colour jitter; the draws use the CPU generator alone."""
    return _Seeded(seed)


class _Seeded:
    def __init__(self, seed: int):
        self.seed, self.state = seed, None

    def __enter__(self):
        self.state = torch.default_generator.get_state()
        torch.default_generator.manual_seed(self.seed)

    def __exit__(self, *exc):
        torch.default_generator.set_state(self.state)
        return False
