"""JPEG decoding as one batch on the run's device (the optional first stage of the GPU path).

On CUDA, torchvision.io.decode_jpeg decodes a list of JPEGs in one call with nvJPEG (about 7,800
images/s on one A100, against about 1,200 a CPU core with libjpeg-turbo); each image is then cropped
and resized on the device (antialiased bilinear, as Pillow's resize) to the view's output size, with
the crop boxes the workers drew (seedrun.data.draws), so the views are the CPU path's up to the two
decoders' and resizers' rounding. Elsewhere the same calls run on the CPU, which is how the tests
check it. Not measured on a GPU yet: benchmarks/gpu_check.py --augment is the prepared check.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def decode_batch(raws: Sequence[bytes], device, channels: int = 3) -> list[Tensor]:
    """Each JPEG as uint8 (C, H, W) on `device`, decoded in one batched call."""
    from torchvision.io import ImageReadMode, decode_jpeg

    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    data = [torch.frombuffer(bytearray(raw), dtype=torch.uint8) for raw in raws]
    return decode_jpeg(data, mode=mode, device=torch.device(device))


def crop_batch(images: Sequence[Tensor], boxes: Sequence[Sequence[int]], size: int) -> Tensor:
    """RandomResizedCrop's boxes (top, left, height, width) of decoded images, each resized to
    size x size: uint8 (B, C, size, size) on the images' device."""
    from torchvision.transforms.v2 import functional as TF

    return torch.stack([TF.resized_crop(image, *map(int, box), [size, size], antialias=True)
                        for image, box in zip(images, boxes)])


def decode_crops(raws: Sequence[bytes], boxes: Sequence[Sequence[int]], size: int, device,
                 channels: int = 3) -> Tensor:
    """What the workers hand on with data.augment_on=gpu (the uint8 crops), made on `device` instead."""
    return crop_batch(decode_batch(raws, device, channels), boxes, size)
