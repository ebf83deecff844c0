"""Linear probes, feature extraction and cache, semi-supervised subsets and transfer data.

Everything runs on scikit-learn's bundled digits (no download) on one CPU thread in a few seconds.
The "frozen features" of the linear-probe tests are L2-normalised ReLU random projections of the
digit pixels (512-d, like a ResNet-18's), a stand-in for a backbone's pooled features.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from seedrun.evaluate.features import (
    cache_path,
    cached_features,
    extract_features,
    feature_key,
    file_sha256,
    normalize_batch,
)
from seedrun.evaluate.linear import (
    COMPRESS,
    MOCO,
    LinearProtocol,
    linear_probe,
    prepare_features,
    train_linear,
)
from seedrun.evaluate.semisup import (
    finetune,
    labelled_subset,
    labels_sha256,
    load_subset,
    save_subset,
    split_validation,
)
from seedrun.evaluate.transfer import (
    cifar_dataset,
    imagefolder_tensors,
    load_digits_dataset,
)

torch.set_num_threads(1)

sklearn = pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def digits():
    return load_digits_dataset(image_size=8, channels=1)


@pytest.fixture(scope="module")
def frozen(digits):
    """(train features, train labels, test features, test labels): 1257 / 540 x 512."""
    gen = torch.Generator().manual_seed(0)
    proj = torch.randn(64, 512, generator=gen) / 8
    feats = []
    for images in (digits.train_images, digits.test_images):
        pixels = images.flatten(1).float() / 255
        feats.append(torch.nn.functional.normalize(torch.relu(pixels @ proj), dim=1))
    return feats[0], digits.train_labels, feats[1], digits.test_labels


@pytest.fixture(scope="module")
def sklearn_accuracy(frozen):
    """scikit-learn's LogisticRegression (C=1, standardised inputs) on the same features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_x, train_y, test_x, test_y = frozen
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    clf.fit(train_x.numpy(), train_y.numpy())
    return 100.0 * clf.score(test_x.numpy(), test_y.numpy())


# --- linear probe -------------------------------------------------------------------------------


def test_protocol_configs_match_the_notes() -> None:
    assert (MOCO.lr, MOCO.scale_lr_with_batch, MOCO.momentum, MOCO.weight_decay) == (30.0, True, 0.9, 0.0)
    assert (MOCO.epochs, MOCO.milestones, MOCO.gamma, MOCO.init_std) == (100, (60, 80), 0.1, 0.01)
    assert not MOCO.l2_normalize and not MOCO.standardize and MOCO.select == "best"
    assert (COMPRESS.lr, COMPRESS.weight_decay, COMPRESS.momentum) == (0.01, 1e-4, 0.9)
    assert (COMPRESS.epochs, COMPRESS.milestones) == (40, (15, 30))
    assert COMPRESS.l2_normalize and COMPRESS.standardize and not COMPRESS.scale_lr_with_batch
    # lr 30 x B/256, x0.1 from epoch 60 and again from 80
    assert MOCO.lr_at(0, 512) == 60.0 and MOCO.lr_at(59, 256) == 30.0
    assert MOCO.lr_at(60, 256) == pytest.approx(3.0) and MOCO.lr_at(80, 256) == pytest.approx(0.3)
    assert COMPRESS.lr_at(15, 4096) == pytest.approx(0.001)
    assert MOCO.with_epochs(20).milestones == (12, 16)
    with pytest.raises(ValueError):
        LinearProtocol("x", 1.0, False, 0.9, 0.0, 10, (5,), select="median")


@pytest.mark.parametrize(("protocol", "epochs"), [(MOCO, 30), (COMPRESS, None)], ids=["moco", "compress"])
def test_linear_probe_matches_logistic_regression(frozen, sklearn_accuracy, protocol, epochs) -> None:
    train_x, train_y, test_x, test_y = frozen
    # Batch 32: with 1257 samples, batch 256 leaves too few SGD steps to converge in 30-40 epochs.
    result = linear_probe(
        train_x, train_y, test_x, test_y, 10, protocol, batch_size=32, seed=0, epochs=epochs
    )
    assert set(result) == {"linear_top1", "linear_top5", "best_epoch", "final_top1", "final_top5", "epochs"}
    assert result["epochs"] == (epochs or protocol.epochs)
    assert 1 <= result["best_epoch"] <= result["epochs"]
    assert result["linear_top1"] >= result["final_top1"]
    assert result["linear_top5"] >= result["linear_top1"]
    assert sklearn_accuracy > 95.0
    assert abs(result["linear_top1"] - sklearn_accuracy) <= 1.0, (result, sklearn_accuracy)


def test_linear_probe_is_deterministic_and_leaves_global_rng(frozen) -> None:
    train_x, train_y, test_x, test_y = frozen
    torch.manual_seed(123)
    state = torch.get_rng_state()
    args = (train_x[:400], train_y[:400], test_x, test_y, 10)
    first = linear_probe(*args, protocol="compress", batch_size=64, seed=3, epochs=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert linear_probe(*args, protocol=COMPRESS, batch_size=64, seed=3, epochs=5) == first
    last = linear_probe(*args, protocol=replace(COMPRESS, select="last"), batch_size=64, seed=3, epochs=5)
    assert last["linear_top1"] == last["final_top1"] == first["final_top1"]
    assert last["best_epoch"] == 5


@pytest.mark.parametrize("protocol", [MOCO, COMPRESS], ids=["moco", "compress"])
def test_hand_written_sgd_equals_autograd_and_torch_optim(frozen, protocol) -> None:
    """train_linear's update is torch.optim.SGD's on nn.Linear with cross-entropy, step for step."""
    train_x, train_y, _, _ = frozen
    x, y = train_x[:300], train_y[:300]
    proto = replace(protocol, epochs=4, milestones=(2,))  # one lr step inside the run
    x_prep, _ = prepare_features(x, x[:1], proto)
    weight, bias = train_linear(x_prep, y, 10, proto, batch_size=64, seed=5)

    # Reference: the same initialisation and shuffles from the same generator sequence.
    from seedrun.evaluate.linear import _init

    gen = torch.Generator().manual_seed(5)
    w0, b0 = _init(10, x.shape[1], proto.init_std, gen)
    fc = nn.Linear(x.shape[1], 10)
    with torch.no_grad():
        fc.weight.copy_(w0)
        fc.bias.copy_(b0)
    opt = torch.optim.SGD(fc.parameters(), lr=proto.lr_at(0, 64), momentum=proto.momentum,
                          weight_decay=proto.weight_decay)
    for epoch in range(proto.epochs):
        for group in opt.param_groups:
            group["lr"] = proto.lr_at(epoch, 64)
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), 64):
            idx = order[start : start + 64]
            loss = nn.functional.cross_entropy(fc(x_prep[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    torch.testing.assert_close(weight, fc.weight.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bias, fc.bias.detach(), rtol=1e-4, atol=1e-5)


def test_compress_standardises_with_training_statistics(frozen) -> None:
    train_x, _, test_x, _ = frozen
    tr, te = prepare_features(train_x * 7.0, test_x * 7.0, COMPRESS)  # scale is removed by L2
    torch.testing.assert_close(tr.mean(0), torch.zeros(512), atol=1e-4, rtol=0)
    assert tr.var(0, unbiased=False).max() <= 1.0 + 1e-3
    l2 = torch.nn.functional.normalize(train_x, dim=1)
    mean, var = l2.mean(0), l2.var(0, unbiased=False)
    torch.testing.assert_close(te, (torch.nn.functional.normalize(test_x, dim=1) - mean) / (var + 1e-5).sqrt())
    same, _ = prepare_features(train_x, test_x, MOCO)
    assert torch.equal(same, train_x)


def test_linear_probe_rejects_bad_input(frozen) -> None:
    train_x, train_y, test_x, test_y = frozen
    with pytest.raises(ValueError, match="labels must lie"):
        linear_probe(train_x, train_y, test_x, test_y, 5, COMPRESS, epochs=1)
    with pytest.raises(ValueError, match="feature dims"):
        linear_probe(train_x, train_y, test_x[:, :10], test_y, 10, COMPRESS, epochs=1)


# --- feature extraction and cache --------------------------------------------------------------


def tiny_backbone() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )


def test_extract_features_eval_mode_no_grad_batched(digits) -> None:
    net = tiny_backbone()
    with torch.no_grad():  # give BN non-trivial running statistics
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    images = digits.train_images[:50]
    net.train()
    feats = extract_features(net, images, digits.mean, digits.std, batch_size=7)
    assert feats.shape == (50, 8) and feats.dtype == torch.float32 and not feats.requires_grad
    assert net.training  # mode restored
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key  # BN statistics untouched
    net.eval()
    with torch.no_grad():
        expected = net(normalize_batch(images, digits.mean, digits.std))
    torch.testing.assert_close(feats, expected)
    whole = extract_features(net, images, digits.mean, digits.std, batch_size=1000)
    torch.testing.assert_close(feats, whole)
    manual = (images.float() / 255 - torch.tensor(digits.mean).view(1, -1, 1, 1)) / torch.tensor(
        digits.std
    ).view(1, -1, 1, 1)
    torch.testing.assert_close(normalize_batch(images, digits.mean, digits.std), manual)


def test_feature_cache_hits_and_leaves_checkpoint_alone(tmp_path, digits) -> None:
    ckpt = tmp_path / "student.pth"
    torch.save({"state_dict": tiny_backbone().state_dict()}, ckpt)
    ckpt_hash, ckpt_mtime = file_sha256(ckpt), os.stat(ckpt).st_mtime_ns
    assert ckpt_hash == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    calls = []

    def compute():
        calls.append(1)
        net = tiny_backbone()
        net.load_state_dict(torch.load(ckpt, weights_only=True)["state_dict"])
        return {
            "features": extract_features(net, digits.test_images, digits.mean, digits.std),
            "labels": digits.test_labels,
        }

    cache = tmp_path / "cache"
    key = feature_key(ckpt, "digits", "test", "none-8px", arch="tiny")
    assert key["checkpoint_sha256"] == ckpt_hash
    first = cached_features(cache, key, compute)
    second = cached_features(cache, dict(reversed(list(key.items()))), compute)  # key order irrelevant
    assert len(calls) == 1
    assert torch.equal(first["features"], second["features"])
    assert torch.equal(second["labels"], digits.test_labels)
    assert sorted(p.name for p in cache.iterdir()) == [cache_path(cache, key).name]  # no temporaries
    assert file_sha256(ckpt) == ckpt_hash and os.stat(ckpt).st_mtime_ns == ckpt_mtime

    cached_features(cache, {**key, "split": "train"}, compute)  # another key: computed again
    assert len(calls) == 2
    cache_path(cache, key).write_bytes(b"truncated")  # a damaged file is recomputed and replaced
    again = cached_features(cache, key, compute)
    assert len(calls) == 3 and torch.equal(again["features"], first["features"])
    assert cached_features(cache, key, compute)["features"].shape == (540, 8) and len(calls) == 3
    with pytest.raises(TypeError):
        cached_features(cache, {"x": object()}, compute)


# --- semi-supervised subsets and fine-tuning ---------------------------------------------------


def test_labelled_subset_balanced_reproducible_nested(digits) -> None:
    labels = digits.train_labels  # 1257 samples, 10 classes
    subset = labelled_subset(labels, 0.1, seed=0)
    counts = torch.bincount(labels[subset], minlength=10)
    assert counts.tolist() == [12] * 10  # floor(0.1 * 1257 / 10)
    assert subset.dtype == torch.long and torch.equal(subset, subset.sort().values)
    assert len(set(subset.tolist())) == len(subset)
    assert torch.equal(subset, labelled_subset(labels.tolist(), 0.1, seed=0))
    other = labelled_subset(labels, 0.1, seed=1)
    assert not torch.equal(subset, other)
    assert torch.bincount(labels[other], minlength=10).tolist() == [12] * 10
    smaller = labelled_subset(labels, 0.01, seed=0)  # floor(1.257) = 1 per class
    assert torch.bincount(labels[smaller], minlength=10).tolist() == [1] * 10
    assert set(smaller.tolist()) <= set(subset.tolist())  # nested for one seed
    assert len(labelled_subset(labels, 0.0001, seed=0)) == 10  # at least one per class
    assert len(labelled_subset(labels, seed=0, per_class=5)) == 50
    with pytest.raises(ValueError):
        labelled_subset(labels, 0.0, seed=0)
    with pytest.raises(ValueError, match="fewer than"):
        labelled_subset(labels, seed=0, per_class=500)


def test_validation_split_is_disjoint_and_balanced(digits) -> None:
    labels = digits.train_labels
    subset = labelled_subset(labels, 0.1, seed=0)
    val = split_validation(labels, per_class=20, seed=0, exclude=subset)
    assert torch.bincount(labels[val], minlength=10).tolist() == [20] * 10
    assert not set(val.tolist()) & set(subset.tolist())
    assert torch.equal(val, split_validation(labels, 20, seed=0, exclude=subset))
    # The other order: validation first, then the subset drawn around it.
    val_first = split_validation(labels, 20, seed=0)
    around = labelled_subset(labels, 0.1, seed=0, exclude=val_first)
    assert not set(val_first.tolist()) & set(around.tolist())
    assert torch.bincount(labels[around], minlength=10).tolist() == [12] * 10
    # Excluding only replaces the excluded samples; the rest keep their place.
    kept = set(subset.tolist()) - set(val_first.tolist())
    assert kept <= set(around.tolist())


def test_subset_files_round_trip(tmp_path, digits) -> None:
    labels = digits.train_labels
    subset = labelled_subset(labels, 0.1, seed=4)
    path = tmp_path / "subsets" / "digits_10pct_seed4.json"
    save_subset(path, subset, seed=4, fraction=0.1, labels=labels, dataset="digits")
    indices, meta = load_subset(path, labels=labels)
    assert torch.equal(indices, subset)
    assert meta["seed"] == 4 and meta["fraction"] == 0.1 and meta["per_class"] == 12
    assert meta["num_samples"] == 120 and meta["dataset"] == "digits"
    assert meta["labels_sha256"] == labels_sha256(labels)
    assert json.loads(path.read_text())["indices"] == subset.tolist()
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    with pytest.raises(ValueError, match="other labels"):
        load_subset(path, labels=labels.flip(0))


def test_finetune_on_subset(digits) -> None:
    torch.manual_seed(0)
    backbone = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Flatten()
    )
    head = nn.Linear(16 * 8 * 8, 10)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    subset = labelled_subset(digits.train_labels, seed=0, per_class=30)
    result = finetune(
        backbone, head, digits.train_images, digits.train_labels, subset,
        digits.test_images, digits.test_labels, digits.mean, digits.std,
        epochs=8, lr=0.05, batch_size=32, weight_decay=1e-4, seed=0,
    )
    assert set(result) == {"finetune_top1", "finetune_top5", "train_loss"}
    assert result["finetune_top1"] > 85.0, result
    assert result["finetune_top5"] >= result["finetune_top1"]
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, before[key])  # the caller's backbone is not modified


# --- transfer data -----------------------------------------------------------------------------


def test_digits_loader_shapes_and_split() -> None:
    data = load_digits_dataset(image_size=32, channels=3)
    assert data.train_images.shape == (1257, 3, 32, 32) and data.test_images.shape == (540, 3, 32, 32)
    assert data.train_images.dtype == torch.uint8 and data.train_labels.dtype == torch.long
    assert data.num_classes == 10 and len(data.mean) == len(data.std) == 3
    assert torch.equal(data.train_images[:, 0], data.train_images[:, 2])  # replicated channels
    assert int(data.train_images.max()) > 200 and int(data.train_images.min()) == 0
    mean = data.train_images.float().div(255).mean(dim=(0, 2, 3))
    torch.testing.assert_close(torch.tensor(data.mean, dtype=torch.float32), mean, rtol=1e-5, atol=1e-6)
    test_counts = torch.bincount(data.test_labels, minlength=10)
    all_counts = test_counts + torch.bincount(data.train_labels, minlength=10)
    assert ((test_counts - 0.3 * all_counts).abs() <= 1).all()  # stratified 30 % per class
    again = load_digits_dataset(image_size=32, channels=3)
    assert torch.equal(again.train_images, data.train_images) and torch.equal(again.test_labels, data.test_labels)


def test_linear_probe_on_resized_digit_pixels() -> None:
    data = load_digits_dataset(image_size=16, channels=3)
    train = data.train_images.flatten(1).float() / 255
    test = data.test_images.flatten(1).float() / 255
    result = linear_probe(train, data.train_labels, test, data.test_labels, 10, COMPRESS, batch_size=64)
    assert result["linear_top1"] > 80.0, result


def test_cifar_without_data_does_not_download(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="download=True"):
        cifar_dataset("cifar10", tmp_path / "none", download=False)
    with pytest.raises(ValueError, match="unknown"):
        cifar_dataset("cifar1000", tmp_path)


def test_imagefolder_tensors(tmp_path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, size in (("beach", (40, 30)), ("forest", (30, 50))):
        (tmp_path / cls).mkdir()
        for i in range(3):
            pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / cls / f"{i}.png")
    data = imagefolder_tensors(tmp_path, image_size=16)
    assert data.images.shape == (6, 3, 16, 16) and data.images.dtype == torch.uint8
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1] and data.classes == ["beach", "forest"]
    assert len(imagefolder_tensors(tmp_path, image_size=8, max_per_class=1)) == 2


def test_finetune_crops_and_flips_every_batch_reproducibly(digits) -> None:
    from seedrun.data.augment import crop_and_flip

    x = normalize_batch(digits.train_images[:16], digits.mean, digits.std)
    first = crop_and_flip(x, (0.5, 1.0), True, torch.Generator().manual_seed(3))
    assert first.shape == x.shape and not torch.allclose(first, x)
    assert torch.equal(first, crop_and_flip(x, (0.5, 1.0), True, torch.Generator().manual_seed(3)))

    def run(calls: list) -> dict:
        torch.manual_seed(0)
        backbone = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Flatten())
        generator = torch.Generator().manual_seed(1)

        def augment(batch):
            calls.append(batch.shape[0])
            return crop_and_flip(batch, (0.5, 1.0), True, generator)

        subset = labelled_subset(digits.train_labels, seed=0, per_class=30)
        return finetune(backbone, nn.Linear(16 * 8 * 8, 10), digits.train_images, digits.train_labels, subset,
                        digits.test_images, digits.test_labels, digits.mean, digits.std,
                        epochs=8, lr=0.05, batch_size=32, weight_decay=1e-4, seed=0, augment=augment)

    calls: list = []
    result = run(calls)
    assert sum(calls) == 8 * 300  # every labelled image, every epoch, through the augmentation
    assert result == run([])  # the same crops again
    assert result["finetune_top1"] > 70.0, result
