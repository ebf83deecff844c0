"""Data sets as in-memory uint8 tensors: Fashion-MNIST (IDX files), ImageFolder trees, a generated tiny set.

Small data sets are held whole in memory as uint8 (N, C, H, W) and augmented a batch at a time on the
tensor (seedrun.data.augment), which costs under 1% of a step; decoding JPEGs per image would dominate.

Where Fashion-MNIST is found, in order: data.root; --data-root / $SEEDRUN_DATA (the folder or its
`fashion-mnist/` sub-folder); Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist); the
cache (~/.cache/seedrun/fashion-mnist); else torchvision downloads it into the cache.
`locate` imports nothing heavy so that `seedrun sweep --dry-run` can check a plan quickly.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
DOWNLOAD = "download"


class DataNotFound(Exception):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("SEEDRUN_CACHE", Path.home() / ".cache" / "seedrun"))


def _has_idx(folder: Path) -> bool:
    return all(
        any((folder / (name + suffix)).is_file() for suffix in ("", ".gz"))
        for pair in IDX_FILES.values() for name in pair
    )


def _explicit_root(data: dict[str, Any], data_root: Optional[str]) -> Optional[Path]:
    root = data.get("root") or data_root or os.environ.get("SEEDRUN_DATA")
    return Path(root).expanduser() if root else None


def locate(data: dict[str, Any], data_root: Optional[str] = None) -> Path | str:
    """Where the data set is (a folder), DOWNLOAD when it will be fetched, or raise DataNotFound."""
    fmt = data["format"]
    explicit = _explicit_root(data, data_root)
    if fmt == "synthetic":
        return "generated"
    if fmt == "fashion_mnist":
        if explicit is not None:
            for folder in (explicit, explicit / "fashion-mnist", explicit / "FashionMNIST" / "raw"):
                if _has_idx(folder):
                    return folder
            raise DataNotFound(f"no Fashion-MNIST IDX files in {explicit} (or its fashion-mnist/ sub-folder)")
        for folder in (SYSTEM_FASHION_MNIST, cache_dir() / "fashion-mnist", cache_dir() / "FashionMNIST" / "raw"):
            if _has_idx(folder):
                return folder
        return DOWNLOAD
    if fmt == "imagefolder":
        if explicit is None:
            raise DataNotFound("set data.root, --data-root or $SEEDRUN_DATA to a folder with train/ and val/")
        from seedrun.data.formats import layout

        for folder in (explicit, explicit / data["name"]):
            if layout(folder) is not None:  # train/ + val/ folders, or the official code's train.tsv + val.tsv
                return folder
        raise DataNotFound(f"expected {explicit}/train/<class>/ and {explicit}/val/<class>/ "
                           f"(or train.tsv and val.tsv with their .lineidx)")
    raise DataNotFound(f"unknown data format {fmt!r}")


@dataclass
class ImageSet:
    """uint8 images (N, C, H, W) and int64 labels, plus what normalises them."""

    images: Any
    labels: Any
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def load(data: dict[str, Any], split: str, data_root: Optional[str] = None) -> ImageSet:
    """One split ("train" or "test") of a data set, with its configured subset taken."""
    import torch

    where = locate(data, data_root)
    fmt = data["format"]
    if fmt == "synthetic":
        images, labels = _generate(data, split)
    elif fmt == "fashion_mnist":
        if where == DOWNLOAD:
            where = _download_fashion_mnist()
        images, labels = _read_idx(Path(where), split)
    else:
        images, labels = _read_imagefolder(Path(where) / ("train" if split == "train" else "val"), data["image_size"])
    subset = data.get("train_subset" if split == "train" else "test_subset")
    if subset:
        index = balanced_subset(labels, int(subset), data["num_classes"])
        images, labels = images[index], labels[index]
    size = data["image_size"]
    if images.shape[-1] != size or images.shape[-2] != size:
        # Resized once at load (antialiased), so every step trains at the configured size.
        images = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear",
                                                 antialias=True, align_corners=False).round().clamp(0, 255).to(torch.uint8)
    channels = data.get("channels", images.shape[1])
    if images.shape[1] != channels:
        images = images.expand(-1, channels, -1, -1).contiguous() if images.shape[1] == 1 else images[:, :channels]
    return ImageSet(images.contiguous(), labels.to(torch.int64), data["num_classes"],
                    tuple(data["mean"]), tuple(data["std"]))


def balanced_subset(labels, size: int, num_classes: int):
    """The first size/num_classes images of each class, in data-set order (the same every time)."""
    import torch

    per_class = max(1, size // num_classes)
    index = torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in range(num_classes)])
    return index.sort().values


def _open(path: Path):
    if path.is_file():
        return open(path, "rb")
    return gzip.open(str(path) + ".gz", "rb")


def _read_idx(folder: Path, split: str):
    import numpy as np
    import torch

    image_file, label_file = IDX_FILES[split]
    with _open(folder / image_file) as f:
        raw = f.read()
    count, rows, cols = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
    images = torch.from_numpy(np.frombuffer(raw, dtype=np.uint8, offset=16).copy()).view(count, 1, rows, cols)
    with _open(folder / label_file) as f:
        raw = f.read()
    labels = torch.from_numpy(np.frombuffer(raw, dtype=np.uint8, offset=8).copy()).to(torch.int64)
    return images, labels


def _download_fashion_mnist() -> Path:
    from torchvision.datasets import FashionMNIST

    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    FashionMNIST(str(root), train=True, download=True)
    FashionMNIST(str(root), train=False, download=True)
    return root / "FashionMNIST" / "raw"


def _read_imagefolder(folder: Path, size: int):
    """Decode a (small) ImageFolder tree to uint8 at size x size; large sets belong on a real loader."""
    import torch
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    transform = v2.Compose([v2.PILToTensor(), v2.Resize(size, antialias=True), v2.CenterCrop(size)])
    dataset = ImageFolder(str(folder), transform=transform)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    return images, torch.tensor(dataset.targets)


def _generate(data: dict[str, Any], split: str):
    """10 classes of oriented gratings with class-specific frequency and colour, plus noise (seeded)."""
    import math

    import torch

    size, channels, classes = data["image_size"], data["channels"], data["num_classes"]
    count = int(data.get("train_subset" if split == "train" else "test_subset") or 320)
    generator = torch.Generator().manual_seed(0 if split == "train" else 1)
    labels = torch.arange(count) % classes
    coords = torch.linspace(-1, 1, size)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    angle = labels.float() * math.pi / classes + 0.15 * torch.randn(count, generator=generator)
    freq = 2.0 + (labels % 3).float() * 1.5
    phase = 2 * math.pi * torch.rand(count, generator=generator)
    proj = x[None] * torch.cos(angle)[:, None, None] + y[None] * torch.sin(angle)[:, None, None]
    pattern = torch.sin(proj * freq[:, None, None] * math.pi + phase[:, None, None])
    tint = torch.stack([torch.cos(labels.float() * 2 * math.pi / classes + k) for k in range(channels)], dim=1)
    images = 0.5 + 0.3 * pattern[:, None] * (0.6 + 0.4 * tint[:, :, None, None])
    images = images + 0.08 * torch.randn(images.shape, generator=generator)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels
