"""The GPU augmentation path (`data.augment_on: gpu`): what follows the crop, batched on the run's device.

The workers decode, crop and resize each view to uint8 at its output size and hand on the parameters
they drew for it (seedrun.data.draws, rows in FIELDS' order), so a view's randomness is still its
image's, seeded as on the CPU path, and a resumed run redraws it. Here a whole batch goes through
colour jitter (each image's own order and factors), grayscale, blur and flip as tensor arithmetic on
whatever device it is on, in float32 in [0, 1].

Pillow's arithmetic is followed where it changes a result beyond rounding: contrast blends with the
luminance mean rounded to a grey level, hue moves by whole steps of 1/255 of a turn (Pillow's H band),
the blur is Pillow's GaussianBlur, three extended box blurs a direction (Gwosdek et al. 2011) with
edge pixels repeated, not a sampled Gaussian. What remains is Pillow's rounding to uint8 after each
operation; tests/test_loader_gpu_path.py bounds the difference from the CPU path.
Nothing here is measured on a GPU yet (benchmarks/gpu_check.py --augment is the prepared check).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from seedrun.data.draws import FIELDS

COLUMN = {name: k for k, name in enumerate(FIELDS)}
# Pillow's L: (R * 19595 + G * 38470 + B * 7471 + 2^15) >> 16, ITU-R 601's 0.299, 0.587, 0.114 in 16 bits
LUMA = (19595 / 65536, 38470 / 65536, 7471 / 65536)


def _luma(x: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    weights = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def _per_image(values: Tensor) -> Tensor:
    return values.view(-1, 1, 1, 1)


def _truncated(x: Tensor) -> Tensor:
    """Pillow's blend result: clipped, truncated to a grey level (the small term keeps a value that is
    a whole level in exact arithmetic from falling one below)."""
    return torch.floor(x.clamp(0, 1) * 255 + 1e-3) / 255


def _rounded(x: Tensor) -> Tensor:
    return torch.round(x.clamp(0, 1) * 255) / 255


def brightness(x: Tensor, factor: Tensor) -> Tensor:
    return _truncated(x * _per_image(factor))


def contrast(x: Tensor, factor: Tensor) -> Tensor:
    mean = torch.floor(_luma(x).mean(dim=(1, 2, 3)) * 255 + 0.5) / 255  # ImageEnhance.Contrast's grey level
    mean = _per_image(mean)
    return _truncated(mean + _per_image(factor) * (x - mean))


def saturation(x: Tensor, factor: Tensor) -> Tensor:
    if x.shape[1] != 3:
        return x
    grey = _rounded(_luma(x))  # Pillow's L band
    return _truncated(grey + _per_image(factor) * (x - grey))


def hue(x: Tensor, factor: Tensor) -> Tensor:
    """Shift the hue by trunc(factor * 255) steps of Pillow's H band (256 steps a turn, wrapping at 256),
    as torchvision's adjust_hue does to a PIL image."""
    if x.shape[1] != 3:
        return x
    shift = torch.trunc(factor * 255).view(-1, 1, 1)
    r, g, b = x.unbind(dim=1)
    value, _ = x.max(dim=1)
    chroma = value - x.min(dim=1).values
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    h = torch.where(value == r, (g - b) / safe,
                    torch.where(value == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    h = torch.where(chroma > 0, torch.remainder(h / 6, 1.0), torch.zeros_like(h))
    s = torch.where(value > 0, chroma / torch.where(value > 0, value, torch.ones_like(value)), torch.zeros_like(value))
    # Pillow's HSV bands are bytes: hue and saturation truncated to 256 levels, the hue byte shifted mod 256
    h = torch.remainder(torch.floor(h * 255 + 1e-4) + shift, 256) / 255
    s = torch.floor(s * 255 + 1e-4) / 255
    # HSV -> RGB: each channel from its own offset on the hue circle (the closed form of the six sectors)
    k = torch.remainder(torch.stack([5 + h * 6, 3 + h * 6, 1 + h * 6], dim=1), 6)
    ramp = torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    return _rounded(value.unsqueeze(1) * (1 - s.unsqueeze(1) * ramp))


OPERATIONS = (brightness, contrast, saturation, hue)


def jitter(x: Tensor, params: Tensor) -> Tensor:
    """ColorJitter, each image in its own order with its own factors; only images whose jitter applies."""
    applies = params[:, COLUMN["jitter"]] > 0
    out = x.clone()
    for position in range(4):
        op_of = params[:, COLUMN[f"order{position}"]].long()
        for op, operation in enumerate(OPERATIONS):
            chosen = (applies & (op_of == op)).nonzero().flatten()
            if len(chosen):
                factor = params[chosen, COLUMN["brightness"] + op].to(x.dtype)
                out[chosen] = operation(out[chosen], factor)
    return out


def grayscale(x: Tensor, params: Tensor) -> Tensor:
    grey = _per_image(params[:, COLUMN["gray"]] > 0)
    return torch.where(grey, _rounded(_luma(x)).expand_as(x), x)


def box_radius(sigma: Tensor, passes: int = 3) -> Tensor:
    """The extended box radius Pillow's GaussianBlur uses for `sigma` over `passes` box blurs."""
    variance = sigma * sigma / passes
    length = torch.sqrt(12 * variance + 1)
    whole = torch.floor((length - 1) / 2)
    fraction = (2 * whole + 1) * (whole * (whole + 1) - 3 * variance) / (6 * (variance - (whole + 1) ** 2))
    return whole + fraction


def _box_kernels(radius: Tensor) -> Tensor:
    """(n, 2R+1) kernels: 1 over the whole radius, the fraction at each end, normalised."""
    whole, fraction = torch.floor(radius), radius - torch.floor(radius)
    reach = int(whole.max().item()) + 1
    offsets = torch.arange(-reach, reach + 1, device=radius.device, dtype=radius.dtype).abs()
    kernels = torch.where(offsets <= whole[:, None], torch.ones_like(offsets),
                          torch.where(offsets == whole[:, None] + 1, fraction[:, None], torch.zeros_like(offsets)))
    return kernels / (2 * radius[:, None] + 1)


def _box_pass(x: Tensor, kernels: Tensor) -> Tensor:
    """One box blur along the last dimension, per image (edge pixels repeated, as Pillow)."""
    n, c, h, w = x.shape
    reach = kernels.shape[1] // 2
    flat = F.pad(x.reshape(1, n * c, h, w), (reach, reach, 0, 0), mode="replicate")
    weights = kernels.repeat_interleave(c, dim=0).view(n * c, 1, 1, -1)
    return _rounded(F.conv2d(flat, weights, groups=n * c).view(n, c, h, w))  # Pillow rounds every pass


def blur(x: Tensor, params: Tensor, passes: int = 3) -> Tensor:
    """Pillow's GaussianBlur(sigma) on the images whose blur applies (sigma > 0)."""
    sigma = params[:, COLUMN["sigma"]]
    chosen = (sigma > 0).nonzero().flatten()
    if not len(chosen):
        return x
    kernels = _box_kernels(box_radius(sigma[chosen].to(x.dtype)))
    part = x[chosen]
    for _ in range(passes):
        part = _box_pass(part, kernels)
    part = part.transpose(2, 3)
    for _ in range(passes):
        part = _box_pass(part, kernels)
    out = x.clone()
    out[chosen] = part.transpose(2, 3)
    return out


def flip(x: Tensor, params: Tensor) -> Tensor:
    return torch.where(_per_image(params[:, COLUMN["flip"]] > 0), x.flip(-1), x)


def augment_batch(images: Tensor, params: Tensor) -> Tensor:
    """uint8 crops (B, C, H, W) and their parameter rows (B, len(FIELDS)) -> augmented float in [0, 1],
    on the images' device, in the preset's order (grayscale first for simclr_aug)."""
    params = params.to(images.device, torch.float64)
    x = images.float() / 255
    if params.shape[0] and bool(params[0, COLUMN["gray_first"]] > 0):
        x = jitter(grayscale(x, params), params)
    else:
        x = grayscale(jitter(x, params), params)
    return flip(blur(x, params), params)
