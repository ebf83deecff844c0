"""Data sets: Fashion-MNIST IDX files found where the user points, a clear error where they are not,
and the batched augmentation."""

from __future__ import annotations

import gzip
import struct

import pytest
import torch

from seedrun.data.augment import augment
from seedrun.sweeps.compose import compose_config
from seedrun.data.datasets import IDX_FILES, SYSTEM_FASHION_MNIST, DataNotFound, load, locate
from conftest import write_sweep


def write_idx(folder, n=40, size=28):
    """A tiny Fashion-MNIST in the real IDX format: image i is filled with value i, label i % 10."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in IDX_FILES.items():
        pixels = bytes(i for i in range(n) for _ in range(size * size))
        with gzip.open(folder / f"{images}.gz", "wb") as f:
            f.write(struct.pack(">IIII", 2051, n, size, size) + pixels)
        with gzip.open(folder / f"{labels}.gz", "wb") as f:
            f.write(struct.pack(">II", 2049, n) + bytes(i % 10 for i in range(n)))
    return folder


def test_data_root_and_environment_point_elsewhere(tmp_path, monkeypatch):
    data = compose_config(["data=fashion_mnist"])["data"]
    root = write_idx(tmp_path / "mine" / "fashion-mnist")
    assert locate(data, str(tmp_path / "mine")) == root  # --data-root (its fashion-mnist/ sub-folder)
    monkeypatch.setenv("SEEDRUN_DATA", str(root))
    assert locate(data) == root  # $SEEDRUN_DATA
    train = load(data, "train")
    assert train.images.shape == (40, 1, 28, 28) and train.images.dtype == torch.uint8
    assert train.images[7].float().mean() == 7 and train.labels[7] == 7


def test_an_explicit_root_without_the_files_is_an_error_not_a_download(tmp_path):
    data = compose_config(["data=fashion_mnist"])["data"]
    with pytest.raises(DataNotFound, match="no Fashion-MNIST IDX files"):
        locate(data, str(tmp_path))


def test_cli_refuses_a_missing_data_root(cli, tmp_path):
    path = write_sweep(tmp_path / "s.yaml", "name: s\nbase: [data=fashion_mnist]\n")
    result = cli("sweep", str(path), "--data-root", str(tmp_path / "empty"), check=False)
    assert result.returncode == 2
    assert "data: data set 'fashion_mnist' not found: no Fashion-MNIST IDX files" in result.stderr
    assert not cli.db.exists()


@pytest.mark.skipif(not SYSTEM_FASHION_MNIST.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_package_is_found_and_subsets_are_class_balanced():
    data = compose_config(["data=fashion_mnist", "data.train_subset=1000", "data.image_size=16"])["data"]
    assert locate(data) == SYSTEM_FASHION_MNIST
    train = load(data, "train")
    assert train.images.shape == (1000, 1, 16, 16)
    assert torch.bincount(train.labels, minlength=10).tolist() == [100] * 10


def test_augmentation_is_deterministic_per_generator_and_varies_across_seeds():
    data = compose_config(["data=tiny"])["data"]
    images = load(data, "train").images[:16]
    view = lambda seed: augment(images, data["augment"], data["image_size"], data["mean"], data["std"],  # noqa: E731
                                torch.Generator().manual_seed(seed))
    a, b, c = view(0), view(0), view(1)
    assert a.shape == (16, 3, 16, 16) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    small = augment(images, data["augment"], data["image_size"], data["mean"], data["std"],
                    torch.Generator().manual_seed(0), crop_scale=(0.05, 0.14), out_size=8)
    assert small.shape == (16, 3, 8, 8)
