"""The stream loader's CPU augmentation: one view of one image on Pillow's uint8 kernels, the ones the
official SEED code runs (torchvision's PIL transforms call them), applied with parameters drawn by
seedrun.data.draws.

Why Pillow: it is the official code's arithmetic, so a view equals the official one for the same
parameters, and its kernels on uint8 beat torchvision's tensor ones on the CPU (benchmarks/loader.py
profiles both: hue and blur on tensors cost several times Pillow's). OpenCV would be no faithful
substitute: its 8-bit HSV has 180 hues, not Pillow's 256, its resize does not antialias, and its blur is
a sampled Gaussian, not Pillow's extended box blur.

What differs from calling torchvision's transforms, for speed, with the same result:
- decoding at a reduced DCT scale (PIL `draft`: libjpeg decodes at 1/2, 1/4 or 1/8) when every view's
  crop still covers at least its output size at that scale; the crop box is then scaled with it;
- brightness and contrast are Image.point lookup tables computing Image.blend's own formula
  (float32 a + f * (b - a), clipped, truncated) instead of blending with a whole degenerate image;
- hue shifts the H band with one lookup table inside Image.point, no numpy round trip;
- a view turned grey stays one band (blur, flip and any later jitter cost a third; the colour
  operations leave a grey image grey) and is spread to three channels when it is handed off.
tests/test_loader_augment.py checks each against torchvision's PIL transforms.
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
from PIL import Image, ImageFilter, ImageStat

from seedrun.data.draws import ViewParams

REDUCTIONS = (8, 4, 2)  # the DCT scales libjpeg decodes at (PIL draft)


def open_image(raw: bytes) -> Image.Image:
    """The image, not yet decoded: its size and format come from the header."""
    return Image.open(io.BytesIO(raw))


def reduction(image: Image.Image, views: list[tuple[ViewParams, int]]) -> int:
    """The largest DCT reduction (8, 4, 2, else 1) at which each (params, output size) view's crop still
    keeps at least its output size in both directions; 1 for anything but a JPEG."""
    if image.format != "JPEG":
        return 1
    for d in REDUCTIONS:
        if all(p.box[2] >= d * out and p.box[3] >= d * out for p, out in views):
            return d
    return 1


def decode(image: Image.Image, mode: str, d: int = 1) -> Image.Image:
    """Decode in `mode` ("RGB" or "L"), at 1/d scale when d > 1."""
    if d > 1:
        width, height = image.size
        image.draft(mode, (width // d, height // d))  # PIL picks the largest scale giving at least this
    return image.convert(mode) if image.mode != mode else _loaded(image)


def _loaded(image: Image.Image) -> Image.Image:
    image.load()
    return image


def crop(image: Image.Image, box: tuple[int, int, int, int], out: int, full_size: tuple[int, int]) -> Image.Image:
    """RandomResizedCrop's crop (top, left, height, width in full-image pixels) resized to out x out,
    bilinear with Pillow's antialiasing, as torchvision's resized_crop on a PIL image."""
    top, left, height, width = box
    if image.size == full_size:  # the official crop-then-resize (the filter sees only the crop)
        return image.crop((left, top, left + width, top + height)).resize((out, out), Image.BILINEAR)
    sx, sy = image.size[0] / full_size[0], image.size[1] / full_size[1]  # decoded at a reduced scale
    return image.resize((out, out), Image.BILINEAR, box=(left * sx, top * sy, (left + width) * sx, (top + height) * sy))


@lru_cache(maxsize=4096)
def _blend_lut(base: int, factor: float) -> np.ndarray:
    """Image.blend(constant `base`, image, factor) as a table: Pillow computes base + factor * (v - base)
    in float32, clips to [0, 255] and truncates."""
    v = np.arange(256, dtype=np.float32)
    out = np.float32(base) + np.float32(factor) * (v - np.float32(base))
    return np.clip(out, 0, 255).astype(np.uint8)


def _point(image: Image.Image, lut: np.ndarray) -> Image.Image:
    return image.point(np.tile(lut, len(image.getbands())).tolist())


def brightness(image: Image.Image, factor: float) -> Image.Image:
    """ImageEnhance.Brightness: a blend with black."""
    return _point(image, _blend_lut(0, factor))


def contrast(image: Image.Image, factor: float) -> Image.Image:
    """ImageEnhance.Contrast: a blend with the rounded mean of the image's luminance."""
    grey = image if image.mode == "L" else image.convert("L")
    return _point(image, _blend_lut(int(ImageStat.Stat(grey).mean[0] + 0.5), factor))


def saturation(image: Image.Image, factor: float) -> Image.Image:
    """ImageEnhance.Color: a blend with the image's luminance (a grey image is left as it is)."""
    if image.mode == "L":
        return image
    return Image.blend(image.convert("L").convert(image.mode), image, factor)


@lru_cache(maxsize=512)
def _hue_lut(shift: int) -> list[int]:
    return [(v + shift) % 256 for v in range(256)] + list(range(256)) * 2


def hue(image: Image.Image, factor: float) -> Image.Image:
    """torchvision's adjust_hue on PIL: H (0-255) shifted by int(factor * 255), wrapping round."""
    if image.mode == "L":
        return image
    return image.convert("HSV").point(_hue_lut(int(factor * 255))).convert(image.mode)


OPERATIONS = (brightness, contrast, saturation, hue)  # ColorJitter's operation ids 0-3


def jitter(image: Image.Image, params: ViewParams) -> Image.Image:
    """ColorJitter with the drawn order and factors (a None factor: that strength is 0, skipped)."""
    if not params.jitter:
        return image
    for k in params.order:
        if params.factors[k] is not None:
            image = OPERATIONS[k](image, params.factors[k])
    return image


def grayscale(image: Image.Image, params: ViewParams) -> Image.Image:
    """RandomGrayscale: Pillow's luminance, kept as one band until the hand-off."""
    return image.convert("L") if params.gray and image.mode != "L" else image


def blur(image: Image.Image, params: ViewParams) -> Image.Image:
    """MoCo's GaussianBlur: Pillow's filter with radius sigma."""
    return image if params.sigma is None else image.filter(ImageFilter.GaussianBlur(radius=params.sigma))


def flip(image: Image.Image, params: ViewParams) -> Image.Image:
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if params.flip else image


def augment(image: Image.Image, params: ViewParams, grayscale_first: bool) -> Image.Image:
    """The cropped view through the preset's remaining transforms, in the official order."""
    if grayscale_first:  # simclr_aug
        image = jitter(grayscale(image, params), params)
    else:  # mocov2_aug, swav_aug
        image = grayscale(jitter(image, params), params)
    return flip(blur(image, params), params)


def to_array(image: Image.Image) -> np.ndarray:
    """The view as uint8 (H, W, bands), as the workers hand it off (one band for a grey view)."""
    array = np.asarray(image)
    return array[:, :, None] if array.ndim == 2 else array
