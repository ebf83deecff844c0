"""MoCo-v2's augmentations applied to a whole batch on the tensor, drawn from one torch.Generator.

RandomResizedCrop + horizontal flip are one affine_grid/grid_sample; colour jitter, grayscale and
Gaussian blur are tensor arithmetic. A batch costs a few ms, against hundreds for a training step, and
all randomness comes from the generator, so a resumed run draws exactly what it would have drawn.
Blur sigma is scaled by image_size / 224 so that 28 px images are blurred like 224 px ones.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _chance(n: int, p: float, generator: torch.Generator) -> Tensor:
    return torch.rand(n, generator=generator) < p


def crop_and_flip(x: Tensor, scale: tuple[float, float], flip: bool, generator: torch.Generator,
                  out_size: int | None = None) -> Tensor:
    """RandomResizedCrop (area `scale`, aspect 3/4 to 4/3) and a horizontal flip per image, as one
    grid_sample on x's device; the draws come from `generator` (on the CPU)."""
    n = x.shape[0]
    area = _uniform(n, scale[0], scale[1], generator)
    log_ratio = _uniform(n, math.log(3 / 4), math.log(4 / 3), generator)
    ratio = torch.exp(log_ratio)
    width = torch.sqrt(area * ratio).clamp(max=1.0)
    height = torch.sqrt(area / ratio).clamp(max=1.0)
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


def _color_jitter(x: Tensor, strength: list[float], p: float, generator: torch.Generator) -> Tensor:
    n = x.shape[0]
    brightness, contrast, saturation, hue = strength
    apply = _chance(n, p, generator).view(n, 1, 1, 1)
    b = _uniform(n, 1 - brightness, 1 + brightness, generator).view(n, 1, 1, 1)
    c = _uniform(n, 1 - contrast, 1 + contrast, generator).view(n, 1, 1, 1)
    s = _uniform(n, 1 - saturation, 1 + saturation, generator).view(n, 1, 1, 1)
    h = _uniform(n, -hue, hue, generator)
    out = (x * b).clamp(0, 1)
    mean = _gray(out).mean(dim=(1, 2, 3), keepdim=True)
    out = ((out - mean) * c + mean).clamp(0, 1)
    if x.shape[1] == 3:
        gray = _gray(out)
        out = ((out - gray) * s + gray).clamp(0, 1)
        out = _hue_rotate(out, h).clamp(0, 1)
    return torch.where(apply, out, x)


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
    """One MoCo-v2 view of each uint8 image, normalised, as float32 (N, C, H, W) on the CPU.

    `crop_scale` and `out_size` override the crop for SEED's small-patch views (scale 0.05-0.14 at 96 px).
    """
    x = images.float() / 255
    x = crop_and_flip(x, tuple(crop_scale or config["crop_scale"]), config.get("flip", True), generator, out_size)
    x = _color_jitter(x, list(config["jitter"]), config["jitter_p"], generator)
    gray = _chance(x.shape[0], config["grayscale_p"], generator).view(-1, 1, 1, 1)
    x = torch.where(gray, _gray(x).expand_as(x), x)
    x = _gaussian_blur(x, list(config["blur_sigma"]), config["blur_p"], image_size, generator)
    return normalize(x, mean, std)
