"""Data sets for transfer evaluation, as uint8 image tensors ready for ``extract_features``.

* ``load_digits_dataset``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10
  classes; no download), scaled to uint8, resized bilinearly and replicated to ``channels``, with a
  deterministic stratified 70/30 split. Small enough for tests and CPU smoke runs.
* ``cifar_dataset``: CIFAR-10 / CIFAR-100 through torchvision (downloads only when asked).
* ``imagefolder_dataset`` / ``imagefolder_tensors``: any ImageFolder tree (``root/<class>/<img>``),
  e.g. SUN-397 arranged into train/ and test/ folders; the latter loads a small set into a uint8
  tensor at a fixed size (Resize shorter side, CenterCrop).

``mean`` and ``std`` are per-channel statistics of the training images on the [0, 1] scale
(the convention of ``seedrun.evaluate.features.normalize_batch``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ChannelStats",
    "ImageSet",
    "TransferDataset",
    "channel_stats",
    "cifar_dataset",
    "imagefolder_dataset",
    "imagefolder_tensors",
    "imagefolder_transfer",
    "load_digits_dataset",
]


@dataclass
class ImageSet:
    """Images as uint8 (N, C, H, W) and integer labels (N,)."""

    images: Tensor
    labels: Tensor
    classes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass
class TransferDataset:
    """A train/test pair with the training set's channel statistics."""

    name: str
    train_images: Tensor  # uint8 (N_train, C, H, W)
    train_labels: Tensor  # int64 (N_train,)
    test_images: Tensor  # uint8 (N_test, C, H, W)
    test_labels: Tensor  # int64 (N_test,)
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str] = field(default_factory=list)


class ChannelStats:
    """Per-channel mean and (population) std of uint8 (N, C, H, W) chunks on the [0, 1] scale, accumulated
    in float64 a chunk at a time: ``add`` each chunk (of a streamed set, say), then ``result()``."""

    def __init__(self, channels: int) -> None:
        self.total = torch.zeros(channels, dtype=torch.float64)
        self.total_sq = torch.zeros_like(self.total)
        self.count = 0

    def add(self, images: Tensor) -> None:
        x = images.to(torch.float64).div_(255.0)
        self.total += x.sum(dim=(0, 2, 3))
        self.total_sq += x.square().sum(dim=(0, 2, 3))
        self.count += images.shape[0] * images.shape[2] * images.shape[3]

    def result(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        mean = self.total / self.count
        std = (self.total_sq / self.count - mean.square()).clamp_min(0).sqrt()
        return tuple(mean.tolist()), tuple(std.tolist())


def channel_stats(images: Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 (N, C, H, W) images on the [0, 1] scale,
    accumulated in float64 chunk by chunk."""
    stats = ChannelStats(images.shape[1])
    for start in range(0, images.shape[0], chunk):
        stats.add(images[start : start + chunk])
    return stats.result()


def load_digits_dataset(
    image_size: int = 32, channels: int = 3, test_fraction: float = 0.3, seed: int = 0
) -> TransferDataset:
    """scikit-learn's 8x8 digits as a transfer task.

    Pixel values 0..16 are mapped to 0..255, resized bilinearly (``align_corners=False``) to
    ``image_size`` x ``image_size``, rounded to uint8 and replicated to ``channels``. The split is
    ``train_test_split(..., stratify=labels, random_state=seed)``: 1,257 train / 540 test with the
    defaults, the same on every call.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if image_size < 1 or channels < 1:
        raise ValueError("image_size and channels must be >= 1")
    digits = load_digits()
    pixels = torch.as_tensor(digits.images, dtype=torch.float32) * (255.0 / 16.0)  # (N, 8, 8)
    pixels = pixels.unsqueeze(1)
    if image_size != 8:
        pixels = F.interpolate(pixels, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = pixels.round_().clamp_(0, 255).to(torch.uint8).expand(-1, channels, -1, -1).contiguous()
    labels = torch.as_tensor(digits.target, dtype=torch.long)
    train_idx, test_idx = train_test_split(
        torch.arange(len(labels)).numpy(),
        test_size=test_fraction,
        stratify=labels.numpy(),
        random_state=seed,
    )
    train_idx, test_idx = torch.as_tensor(train_idx), torch.as_tensor(test_idx)
    mean, std = channel_stats(images[train_idx])
    return TransferDataset(
        name="digits",
        train_images=images[train_idx],
        train_labels=labels[train_idx],
        test_images=images[test_idx],
        test_labels=labels[test_idx],
        num_classes=10,
        mean=mean,
        std=std,
        classes=[str(c) for c in range(10)],
    )


def cifar_dataset(name: str, root: str | os.PathLike[str], download: bool = False) -> TransferDataset:
    """CIFAR-10 or CIFAR-100 (``name`` "cifar10" / "cifar100") from torchvision as uint8 tensors.

    Looks for the data under ``root`` and downloads it only when ``download=True``; otherwise a
    missing data set raises ``FileNotFoundError`` naming the folder.
    """
    from torchvision import datasets

    classes = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}
    key = name.lower().replace("-", "")
    if key not in classes:
        raise ValueError(f"unknown CIFAR data set {name!r}; expected one of {sorted(classes)}")
    splits = []
    for train in (True, False):
        try:
            ds = classes[key](root=os.fspath(root), train=train, download=download)
        except RuntimeError as err:  # torchvision: "Dataset not found or corrupted."
            raise FileNotFoundError(
                f"{name} not found under {os.fspath(root)!r}; pass download=True to fetch it"
            ) from err
        images = torch.as_tensor(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32) uint8
        splits.append((images, torch.as_tensor(ds.targets, dtype=torch.long), list(ds.classes)))
    (train_x, train_y, names), (test_x, test_y, _) = splits
    mean, std = channel_stats(train_x)
    return TransferDataset(key, train_x, train_y, test_x, test_y, len(names), mean, std, names)


def imagefolder_dataset(root: str | os.PathLike[str], transform=None):
    """``torchvision.datasets.ImageFolder(root, transform)``: classes are the sub-folders of
    ``root`` in sorted order. For large sets (SUN-397 at full size) iterate it with a DataLoader."""
    from torchvision import datasets

    return datasets.ImageFolder(os.fspath(root), transform=transform)


def imagefolder_tensors(
    root: str | os.PathLike[str],
    image_size: int,
    resize: int | None = None,
    max_per_class: int | None = None,
) -> ImageSet:
    """Load a (small) ImageFolder tree into memory: RGB, Resize(shorter side to ``resize``, default
    ``image_size``) then CenterCrop(``image_size``), as uint8 (N, 3, S, S).
    ``max_per_class`` keeps the first files of each class (sorted names), for smoke runs."""
    from torchvision import transforms
    from torchvision.transforms.functional import pil_to_tensor

    tf = transforms.Compose(
        [transforms.Resize(resize or image_size), transforms.CenterCrop(image_size)]
    )
    folder = imagefolder_dataset(root)
    samples = folder.samples
    if max_per_class is not None:
        seen: dict[int, int] = {}
        kept = []
        for path, label in samples:
            if seen.get(label, 0) < max_per_class:
                seen[label] = seen.get(label, 0) + 1
                kept.append((path, label))
        samples = kept
    images = torch.empty(len(samples), 3, image_size, image_size, dtype=torch.uint8)
    for i, (path, _) in enumerate(samples):
        images[i] = pil_to_tensor(tf(folder.loader(path).convert("RGB")))
    labels = torch.tensor([label for _, label in samples], dtype=torch.long)
    return ImageSet(images, labels, list(folder.classes))


def imagefolder_transfer(
    train_root: str | os.PathLike[str],
    test_root: str | os.PathLike[str],
    image_size: int,
    resize: int | None = None,
    name: str = "imagefolder",
) -> TransferDataset:
    """Train and test ImageFolder trees (same class folders) as a ``TransferDataset``."""
    train = imagefolder_tensors(train_root, image_size, resize)
    test = imagefolder_tensors(test_root, image_size, resize)
    if train.classes != test.classes:
        raise ValueError("train and test folders have different classes")
    mean, std = channel_stats(train.images)
    return TransferDataset(
        name, train.images, train.labels, test.images, test.labels, len(train.classes), mean, std,
        train.classes,
    )
