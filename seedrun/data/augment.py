"""The training augmentations applied to a whole batch on the tensor, drawn from one torch.Generator.

Which augmentation is seedrun.data.presets' business (the official SEED code's mocov2_aug, simclr_aug or
swav_aug, by the teacher's method); this applies a resolved preset. RandomResizedCrop + horizontal flip
are one affine_grid/grid_sample (a flip commutes with the colour operations and the symmetric blur, so
applying it first is the official order's result); colour jitter (its four operations in a random order
per image, as torchvision's ColorJitter), grayscale (before or after the jitter, as the preset says) and
Gaussian blur are tensor arithmetic. A batch costs a few ms, against hundreds for a training step, and
all randomness comes from the generator, so a resumed run draws exactly what it would have drawn.
Blur sigma is scaled by image_size / 224 so that 28 px images are blurred like 224 px ones. Hue is
rotated in YIQ space, a linear stand-in for torchvision's HSV hue shift.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from seedrun.data.presets import resolve


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _chance(n: int, p: float, generator: torch.Generator) -> Tensor:
    return torch.rand(n, generator=generator) < p


def crop_and_flip(x: Tensor, scale: tuple[float, float], flip: bool, generator: torch.Generator,
                  out_size: int | None = None) -> Tensor:
    """RandomResizedCrop (area `scale`, aspect 3/4 to 4/3) and a horizontal flip per image, as one
    grid_sample on x's device; the draws come from `generator` (on the CPU).

    As torchvision's RandomResizedCrop on a square image: up to 10 (area, aspect) draws, the first whose
    crop fits the image is taken, else the whole image; clamping an oversized side instead would make
    crops of scale near 1 smaller and squarer than the official ones. Positions are continuous."""
    n, tries = x.shape[0], 10
    area = scale[0] + (scale[1] - scale[0]) * torch.rand(n, tries, generator=generator)
    log_ratio = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * torch.rand(n, tries, generator=generator)
    ratio = torch.exp(log_ratio)
    widths, heights = torch.sqrt(area * ratio), torch.sqrt(area / ratio)
    fits = (widths <= 1) & (heights <= 1)
    first = fits.float().argmax(dim=1, keepdim=True)  # the first draw that fits (0 when none does)
    found = fits.any(dim=1)
    width = torch.where(found, widths.gather(1, first).squeeze(1), torch.ones(n))
    height = torch.where(found, heights.gather(1, first).squeeze(1), torch.ones(n))
    center_x = _uniform(n, -1, 1, generator) * (1 - width)
    center_y = _uniform(n, -1, 1, generator) * (1 - height)
    sign = torch.where(_chance(n, 0.5, generator), -1.0, 1.0) if flip else torch.ones(n)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = width * sign
    theta[:, 0, 2] = center_x
    theta[:, 1, 1] = height
    theta[:, 1, 2] = center_y
    shape = list(x.shape) if out_size is None else [x.shape[0], x.shape[1], out_size, out_size]
    grid = F.affine_grid(theta.to(x.device, x.dtype), shape, align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _gray(x: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def _hue_rotate(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate hue by `shift` turns in YIQ space (a linear stand-in for HSV's hue shift)."""
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    from_yiq = torch.linalg.inv(to_yiq)
    angle = shift * 2 * math.pi
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.zeros(len(shift), 3, 3)
    rotation[:, 0, 0] = 1
    rotation[:, 1, 1], rotation[:, 1, 2] = cos, -sin
    rotation[:, 2, 1], rotation[:, 2, 2] = sin, cos
    matrix = from_yiq @ rotation @ to_yiq  # (n, 3, 3)
    return torch.einsum("nij,njhw->nihw", matrix, x)


def _brightness(x: Tensor, factor: Tensor) -> Tensor:
    return (x * factor.view(-1, 1, 1, 1)).clamp(0, 1)


def _contrast(x: Tensor, factor: Tensor) -> Tensor:
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * factor.view(-1, 1, 1, 1) + mean).clamp(0, 1)


def _saturation(x: Tensor, factor: Tensor) -> Tensor:
    if x.shape[1] != 3:  # as torchvision: saturation and hue leave a one-channel image alone
        return x
    gray = _gray(x)
    return ((x - gray) * factor.view(-1, 1, 1, 1) + gray).clamp(0, 1)


def _hue(x: Tensor, shift: Tensor) -> Tensor:
    return x if x.shape[1] != 3 else _hue_rotate(x, shift).clamp(0, 1)


def _color_jitter(x: Tensor, strength: list[float], p: float, generator: torch.Generator) -> Tensor:
    """torchvision's RandomApply([ColorJitter(*strength)], p): brightness, contrast, saturation and hue
    factors drawn per image, applied in a random order per image; an operation of strength 0 is skipped."""
    n = x.shape[0]
    brightness, contrast, saturation, hue = (float(v) for v in strength)
    apply = _chance(n, p, generator)
    factors = [_uniform(n, 1 - brightness, 1 + brightness, generator),
               _uniform(n, 1 - contrast, 1 + contrast, generator),
               _uniform(n, 1 - saturation, 1 + saturation, generator),
               _uniform(n, -hue, hue, generator)]
    order = torch.rand(n, 4, generator=generator).argsort(dim=1)  # a random permutation per image
    operations = [(_brightness, brightness), (_contrast, contrast), (_saturation, saturation), (_hue, hue)]
    out = x.clone()
    for position in range(4):
        for op, (operation, amount) in enumerate(operations):
            chosen = (apply & (order[:, position] == op)).nonzero().flatten()
            if amount == 0 or not len(chosen):
                continue
            out[chosen] = operation(out[chosen], factors[op][chosen])
    return out


def _grayscale(x: Tensor, p: float, generator: torch.Generator) -> Tensor:
    gray = _chance(x.shape[0], p, generator).view(-1, 1, 1, 1)
    return torch.where(gray, _gray(x).expand_as(x), x)


def _gaussian_blur(x: Tensor, sigma_range: list[float], p: float, image_size: int, generator: torch.Generator) -> Tensor:
    n, c, h, w = x.shape
    apply = _chance(n, p, generator)
    sigma = _uniform(n, sigma_range[0], sigma_range[1], generator) * image_size / 224
    radius = max(1, int(math.ceil(3 * float(sigma_range[1]) * image_size / 224)))
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-(offsets[None] ** 2) / (2 * sigma[:, None] ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (n, 2r+1)
    kernel = kernel.repeat_interleave(c, dim=0)  # one per (image, channel)
    flat = x.reshape(1, n * c, h, w)
    flat = F.pad(flat, (radius, radius, 0, 0), mode="reflect")
    flat = F.conv2d(flat, kernel.view(n * c, 1, 1, -1), groups=n * c)
    flat = F.pad(flat, (0, 0, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel.view(n * c, 1, -1, 1), groups=n * c)
    return torch.where(apply.view(n, 1, 1, 1), flat.view(n, c, h, w), x)


def normalize(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """uint8 (or [0,1] float) images -> normalised float."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


def augment(images: Tensor, config: dict[str, Any], image_size: int, mean, std, generator: torch.Generator,
            crop_scale: tuple[float, float] | None = None, out_size: int | None = None) -> Tensor:
    """One augmented view of each uint8 image, normalised, as float32 (N, C, H, W) on the CPU.

    `config` is a data.augment block: resolved here against its preset (seedrun.data.presets.resolve,
    MoCo-v2's when it names none), so a resolved one passes through unchanged. `crop_scale` and
    `out_size` override the crop for SEED's small-patch views (scale 0.05-0.14 at 96 px).
    """
    config = resolve(config, None)
    x = images.float() / 255
    x = crop_and_flip(x, tuple(crop_scale or config["crop_scale"]), config["flip"], generator, out_size)
    if config["grayscale_first"]:  # simclr_aug: RandomGrayscale, then ColorJitter
        x = _grayscale(x, config["grayscale_p"], generator)
        x = _color_jitter(x, list(config["jitter"]), config["jitter_p"], generator)
    else:  # mocov2_aug, swav_aug: RandomApply(ColorJitter), then RandomGrayscale
        x = _color_jitter(x, list(config["jitter"]), config["jitter_p"], generator)
        x = _grayscale(x, config["grayscale_p"], generator)
    if config["blur_p"] > 0:  # simclr_aug has no blur: draw nothing for it
        x = _gaussian_blur(x, list(config["blur_sigma"]), config["blur_p"], image_size, generator)
    return normalize(x, mean, std)
