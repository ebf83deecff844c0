"""The GPU augmentation path (`data.augment_on: gpu`, issue 22 item 4) on CPU tensors: the batched
operations give each image what it would get alone, and what the CPU path's Pillow operations give
for the same drawn parameters; the stream loader hands crops and parameters through its workers and
reads the same epoch twice alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from seedrun.data import batched_ops, pillow_ops as ops
from seedrun.data.draws import Drawer, seeded
from seedrun.data.presets import resolve
from stream_trees import FASHION, write_tree
from test_loader_augment import _photo, _spread


def _crops(method: str, count: int = 24, size: int = 40):
    """Worker output for `count` views of photos: uint8 crops (N, 3, s, s), parameter rows, and the CPU
    path's finished views (N, s, s, 3) for the same parameters."""
    aug = resolve({}, method)
    drawer = Drawer(aug, 224)
    crops, rows, finished = [], [], []
    for seed in range(count):
        picture = _photo(*[(90, 70), (64, 91)][seed % 2], seed=seed)
        with seeded(seed):
            params = drawer.draw(*picture.size)
        crop = ops.crop(picture, params.box, size, picture.size)
        crops.append(torch.from_numpy(np.asarray(crop).copy()).permute(2, 0, 1))
        rows.append(params.row())
        finished.append(_spread(ops.augment(crop, params, aug["grayscale_first"])))
    return torch.stack(crops), torch.tensor(rows, dtype=torch.float64), np.stack(finished)


def test_a_batch_gives_each_image_what_it_gets_alone():
    crops, rows, _ = _crops("mocov2")
    batched = batched_ops.augment_batch(crops, rows)
    alone = torch.cat([batched_ops.augment_batch(crops[i:i + 1], rows[i:i + 1]) for i in range(len(crops))])
    assert torch.allclose(batched, alone, atol=1e-6)
    assert batched.dtype == torch.float32 and 0 <= batched.min() and batched.max() <= 1
    # each image its own parameters: swapping two rows swaps the two results
    swapped = rows.clone()
    swapped[[0, 1]] = rows[[1, 0]]
    assert not torch.allclose(batched_ops.augment_batch(crops, swapped)[0], batched[0], atol=1e-3)


@pytest.mark.parametrize("method", ["mocov2", "simclr"])
def test_the_batched_path_gives_the_pillow_paths_views(method):
    crops, rows, finished = _crops(method)
    got = (batched_ops.augment_batch(crops, rows) * 255).permute(0, 2, 3, 1).numpy()
    difference = np.abs(got - finished.astype(float))
    # Pillow's arithmetic (truncating blends, byte HSV bands, rounded box-blur passes) is followed, so
    # only pixels at rounding ties differ (measured: 0.006 levels on average, 0.03-0.09% of values off by
    # more than one); plain float arithmetic without it was off 1.2 levels on average
    assert difference.mean() < 0.05
    assert (difference > 1.01).mean() < 0.003


def test_the_blur_is_pillows_gaussian_blur():
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8))
    x = torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1)[None].float() / 255
    for sigma in np.random.default_rng(1).uniform(0.1, 2.0, 12):
        rows = torch.zeros(1, len(batched_ops.FIELDS), dtype=torch.float64)
        rows[0, batched_ops.COLUMN["sigma"]] = sigma
        ours = (batched_ops.blur(x, rows)[0].permute(1, 2, 0) * 255).round().numpy()
        pillow = np.asarray(picture.filter(ImageFilter.GaussianBlur(float(sigma)))).astype(float)
        assert np.abs(ours - pillow).max() <= 1, sigma


@pytest.mark.skipif(not FASHION.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_the_stream_loader_hands_crops_and_parameters_to_the_device(tmp_path, monkeypatch):
    from seedrun.data.loader import open_split
    from seedrun.sweeps.compose import compose_config

    monkeypatch.setenv("SEEDRUN_CACHE", str(tmp_path / "cache"))
    root = write_tree(tmp_path / "tree", 64, 10)

    def first_batch(augment_on):
        data = compose_config(["data=imagenet", f"data.root={root}", "data.image_size=32", "data.loader=stream",
                               "data.workers=1"])["data"]
        split = open_split({**data, "augment_on": augment_on}, "train", log=lambda _: None)
        batch = next(iter(split.batches(0, 16, {0: None, 2: ([0.05, 0.14], 16)}).epoch(1)))
        return batch, batch.view(0), batch.view(2)

    gpu, again, cpu = first_batch("gpu"), first_batch("gpu"), first_batch("cpu")
    assert set(gpu[0]._params) == {0, 2} and gpu[0]._params[0].shape == (16, len(batched_ops.FIELDS))
    assert not cpu[0]._params
    assert torch.equal(gpu[1], again[1]) and torch.equal(gpu[2], again[2])  # seeded per image: a rerun is the same
    assert gpu[1].shape == cpu[1].shape == (16, 3, 32, 32) and gpu[2].shape == (16, 3, 16, 16)
    assert torch.equal(gpu[0].indices, cpu[0].indices)
    # the same draws on both paths: the same views up to Pillow's rounding (normalised units, std ~0.22)
    assert (gpu[1] - cpu[1]).abs().mean() < 0.02 and (gpu[2] - cpu[2]).abs().mean() < 0.02


def test_device_decoding_gives_the_workers_crops():
    # decode_jpeg over a list, then each box cropped and resized on the device (here the CPU): the
    # crops the workers make with Pillow, to one grey level
    from seedrun.data.device_decode import decode_crops
    from test_loader_augment import _jpeg

    drawer = Drawer(resolve({}, "mocov2"), 224)
    raws, boxes, workers = [], [], []
    for seed in range(12):
        picture = _photo(*[(300, 220), (200, 260)][seed % 2], seed=seed)
        raws.append(_jpeg(picture))
        with seeded(seed):
            boxes.append(drawer.draw(*picture.size).box)
        image = ops.open_image(raws[-1])
        workers.append(np.asarray(ops.crop(ops.decode(image, "RGB"), boxes[-1], 64, picture.size)))
    crops = decode_crops(raws, boxes, 64, "cpu")
    assert crops.shape == (12, 3, 64, 64) and crops.dtype == torch.uint8
    difference = np.abs(crops.permute(0, 2, 3, 1).numpy().astype(int) - np.stack(workers).astype(int))
    assert difference.max() <= 1 and difference.mean() < 0.05
