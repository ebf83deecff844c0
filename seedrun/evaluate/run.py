"""An evaluation run: one protocol applied to one finished run's model, without retraining it.

The run's config names the protocol and its settings and the source run (by hash); the source's
model.pt is only read. Frozen features are cached per (model sha256, data set, split, size) under
$SEEDRUN_HOME/features, so every linear or transfer probe of a model extracts them once. Metrics are
recorded on the evaluation run and, under the same names, on the source run at its final epoch, so
tables read a student's linear top-1 where they read its k-NN.

The linear probe's `settings.recipe` names its protocol (seedrun.evaluate.linear, seedrun.store.protocols):
`moco`, the published one, trains the fc on fresh RandomResizedCrop + flip views through the frozen
backbone every epoch, streamed through the split's loader (seedrun.evaluate.probe_views; never cached,
so ImageNet-size sets work), the backbone under no_grad in the training's precision (bf16 autocast on a
GPU), the fc in float32; `cached` and `compress` train on the cached features. A `recipe: moco` without
`crop_scale` is an evaluation configured before the augmented protocol existed: it runs, as it did, on
cached features (`cached`).

A test or training image the stream loader cannot read is left out, never replaced by a copy of another
image and its label (which would count that one twice): the metric is over the images read, and
`<protocol>_skipped_images` and `<protocol>_test_images` are recorded beside it whenever one was
skipped (seedrun.evaluate.sharded_features.skipped_images).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from seedrun.data.loader import open_split
from seedrun.evaluate.features import cached_features, extract_features, file_sha256
from seedrun.evaluate.knn import knn_variants
from seedrun.evaluate.linear import PROTOCOLS as LINEAR_PROTOCOLS
from seedrun.evaluate.linear import augmented_probe, linear_probe
from seedrun.evaluate.semisup import finetune, labelled_subset, save_subset
from seedrun.evaluate.sharded_features import skipped_images

PROTOCOLS = ("knn", "linear", "semisup", "transfer")


def _features(model_path: Path, backbone: nn.Module, images, mean, std, what: dict[str, Any], device) -> torch.Tensor:
    from seedrun.store.locations import seedrun_home

    key = {"checkpoint_sha256": file_sha256(model_path), **what}
    return cached_features(seedrun_home() / "features", key,
                           lambda: extract_features(backbone, images, mean, std, device=device))


def evaluate(config: dict[str, Any], run_dir: Path, source_dir: Path, data_root: Optional[str] = None,
             log=print) -> dict[str, float]:
    from seedrun.models.model_file import MODEL, load_own_model
    from seedrun.training.loop import setup_torch

    device = setup_torch(config)
    protocol, settings, data_cfg = config["protocol"], config["settings"], config["data"]
    model_path = source_dir / MODEL
    backbone, _head = load_own_model(model_path, data_cfg["channels"])
    backbone = backbone.to(device).eval()
    train, test = open_split(data_cfg, "train", data_root, log), open_split(data_cfg, "test", data_root, log)
    data_key = {"dataset": data_cfg["name"], "size": data_cfg["image_size"], "train_subset": data_cfg.get("train_subset"),
                "test_subset": data_cfg.get("test_subset"), "transform": "none"}

    def feats(split, data) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and labels of a split: from the uint8 tensor in memory, or streamed a chunk at a time
        (evaluation views Resize(256 s / 224) -> CenterCrop(s); TSV labels come with the images)."""
        if data.kind == "memory":
            return _features(model_path, backbone, data.images, data.mean, data.std, {**data_key, "split": split},
                             device), data.labels
        from seedrun.store.locations import seedrun_home
        from seedrun.training.loop import embed

        # "unreadable": features cached before unreadable images were skipped held copies of other images
        key = {"checkpoint_sha256": file_sha256(model_path), **data_key, "split": split,
               "transform": "resize-centercrop", "files": len(data), "unreadable": "skipped"}
        value = cached_features(seedrun_home() / "features", key,
                                lambda: dict(zip(("features", "labels"), embed(backbone, data, device))))
        return value["features"], value["labels"]

    if protocol == "knn":
        variants = tuple((int(k), tau) for k, tau in settings["variants"])
        (train_f, train_labels), (test_f, test_labels) = feats("train", train), feats("test", test)
        # on the accelerator when there is one: the similarity matmul is the whole cost
        return {**knn_variants(train_f.to(device), train_labels.to(device), test_f.to(device),
                               test_labels.to(device), train.num_classes, variants=variants),
                **_skipped("knn", log, (train, train_f), (test, test_f))}
    if protocol == "linear":
        probe = _linear_protocol(settings)
        if probe.views == "cached":
            (train_f, train_labels), (test_f, test_labels) = feats("train", train), feats("test", test)
            result = linear_probe(train_f, train_labels, test_f, test_labels, train.num_classes,
                                  protocol=probe, batch_size=settings["batch_size"], seed=config["seed"],
                                  epochs=settings.get("epochs"), device=device)
            read = _skipped("linear", log, (train, train_f), (test, test_f))
        else:  # training views are the loader's training batches (a bad image's slot filled, as in training)
            result, test_read = _augmented_linear(config, backbone, train, test, probe, data_root, device, log)
            read = _skipped("linear", log, (test, test_read))
        return {"linear_top1": result["linear_top1"], "linear_top5": result["linear_top5"],
                "linear_best_epoch": result["best_epoch"], **read}
    if protocol == "semisup":
        # one path for both loaders: fine-tuning reads each batch of the labelled subset through the split
        # (memory: indexed; stream: decoded by the workers, evaluation views) and the test set in chunks
        metrics, labels = {}, train.labels  # a TSV's label column is read once, no image
        for fraction in settings["fractions"]:
            subset = labelled_subset(labels, fraction, seed=settings["subset_seed"])
            save_subset(run_dir / f"subset-{fraction:g}.json", subset, seed=settings["subset_seed"], fraction=fraction,
                        labels=labels)
            # the fine-tuning head's initialisation (and the student's dropout) from the run's seed, one
            # fraction independent of the others: not from whatever state a fresh process starts in
            torch.manual_seed(int(config["seed"]))
            student, _ = load_own_model(model_path, data_cfg["channels"])
            head = nn.Linear(_feature_dim(student, data_cfg, device), train.num_classes)
            counted = ReadCount(test)  # the test images fine-tuning's evaluation read
            result = finetune(student, head, train, labels, subset, counted, None,
                              train.mean, train.std, epochs=settings["epochs"], lr=settings["lr"],
                              batch_size=settings["batch_size"], seed=config["seed"], device=device,
                              augment=_finetune_augmentation(settings.get("crop_scale"), config["seed"]))
            percent = f"{100 * fraction:g}".replace(".", "_")
            metrics[f"semisup{percent}_top1"] = result["finetune_top1"]
            metrics[f"semisup{percent}_top5"] = result["finetune_top5"]
            metrics.update(_skipped(f"semisup{percent}", log, (test, range(counted.read))))
            log(f"semi-supervised {100 * fraction:g}% labels ({len(subset)} images): top-1 {result['finetune_top1']:.2f}")
        return metrics
    if protocol == "transfer":
        metrics = {}
        for name in settings["datasets"]:
            data = _transfer_data(name, settings, data_cfg, log)
            what = {"dataset": f"transfer-{name}", "size": data_cfg["image_size"], "transform": "none"}
            if isinstance(data, StreamedTransfer):  # a tree too big for memory: features a chunk at a time
                (train_f, train_labels), (test_f, test_labels) = (data.features(model_path, backbone, split, what, device)
                                                                  for split in ("train", "test"))
            else:
                train_labels, test_labels = data.train_labels, data.test_labels
                train_f = _features(model_path, backbone, data.train_images, data.mean, data.std, {**what, "split": "train"}, device)
                test_f = _features(model_path, backbone, data.test_images, data.mean, data.std, {**what, "split": "test"}, device)
            result = linear_probe(train_f, train_labels, test_f, test_labels, data.num_classes,
                                  protocol=settings["recipe"], batch_size=settings["batch_size"], seed=config["seed"],
                                  epochs=settings.get("epochs"), device=device)
            metrics[f"transfer_{name}_top1"] = result["linear_top1"]
            if isinstance(data, StreamedTransfer):
                metrics.update(_skipped(f"transfer_{name}", log, (data.train, train_f), (data.test, test_f)))
            log(f"transfer to {name}: linear top-1 {result['linear_top1']:.2f}")
        return metrics
    raise ValueError(f"unknown evaluation protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")


def _skipped(prefix: str, log, *splits) -> dict[str, int]:
    """skipped_images for (split, features of the images read) pairs, logged when there are any."""
    counts = skipped_images(prefix, *((len(data), len(features)) for data, features in splits))
    if counts:
        log(f"{prefix}: {counts[f'{prefix}_skipped_images']} unreadable images skipped; the metric is over "
            f"the {counts[f'{prefix}_test_images']} test images read")
    return counts


class ReadCount:
    """A split whose chunks count the images they yield (the stream loader leaves out unreadable ones), for
    a protocol that reads the split itself; everything else is the split's."""

    def __init__(self, data):
        self.data, self.read = data, 0

    def __len__(self) -> int:
        return len(self.data)

    def __getattr__(self, name: str):
        return getattr(self.data, name)

    def chunks(self, batch_size: int):
        for images, labels in self.data.chunks(batch_size):
            self.read += len(labels)
            yield images, labels


def _linear_protocol(settings: dict[str, Any]):
    """The LinearProtocol the settings name (a `recipe: moco` from before the augmented protocol: `cached`)."""
    from dataclasses import replace

    from seedrun.errors import InputError
    from seedrun.store.protocols import linear_recipe

    recipe = linear_recipe(settings)
    if recipe not in LINEAR_PROTOCOLS:
        raise InputError("eval.protocols.linear", "recipe", f"expected one of {', '.join(LINEAR_PROTOCOLS)}, got {recipe!r}")
    probe = LINEAR_PROTOCOLS[recipe]
    for key in ("batch_size",) + (("epochs",) if settings.get("epochs") is not None else ()):
        value = settings.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError("eval.protocols.linear", key, f"expected a positive integer, got {value!r}")
    if probe.views == "augmented":
        scale = settings.get("crop_scale")
        if (not isinstance(scale, (list, tuple)) or len(scale) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scale)
                or not 0 < scale[0] <= scale[1] <= 1):
            raise InputError("eval.protocols.linear", "crop_scale",
                             f"expected [min, max] areas with 0 < min <= max <= 1, got {scale!r}")
        probe = replace(probe, crop_scale=(float(scale[0]), float(scale[1])))
    return probe


def _augmented_linear(config: dict[str, Any], backbone: nn.Module, train, test, probe, data_root, device, log):
    """The published linear probe: fresh crop + flip views of the training split through the frozen backbone
    every epoch (either loader), validated on the test split's evaluation views (seedrun.evaluate.probe_views)."""
    from seedrun.evaluate.probe_views import eval_features, train_views
    from seedrun.training.loop import autocast

    settings = config["settings"]
    # a set smaller than one batch still trains (one batch an epoch); the lr scales with the batch taken
    batch = min(int(settings["batch_size"]), len(train))
    precision = lambda: autocast(config, device)  # noqa: E731 -- bf16 on a GPU, as the training's forward
    views = train_views(train, config["data"], data_root, config["seed"], batch, probe.crop_scale, device, log)
    test_f, test_labels = eval_features(backbone, test, device, precision)
    log(f"linear probe ({probe.name}): {len(train)} training images as crop + flip views, batch {batch}, "
        f"{settings.get('epochs') or probe.epochs} epochs; {len(test_f)} test images")
    return augmented_probe(backbone, views, test_f, test_labels, train.num_classes, protocol=probe, batch_size=batch,
                           seed=config["seed"], epochs=settings.get("epochs"), device=device, precision=precision,
                           log=log), test_f


def _transfer_data(name: str, settings: dict[str, Any], data_cfg: dict[str, Any], log=print):
    """A transfer data set at the student's input size and channels: digits (bundled with scikit-learn),
    CIFAR-10/100 (torchvision, under settings.roots.<name>), or any ImageFolder tree (SUN-397, ...) given
    as settings.roots.<name> with train/ and test/ (or val/) inside, or the official code's TSV files. A
    tree is read by the loader `data.loader` picks for it (seedrun.data.loader): in memory, or streamed
    (a StreamedTransfer)."""
    import torch.nn.functional as F

    from seedrun.evaluate import transfer

    size, channels = data_cfg["image_size"], data_cfg["channels"]
    if name == "digits":
        return transfer.load_digits_dataset(image_size=size, channels=channels)
    root = (settings.get("roots") or {}).get(name)
    if not root:
        raise FileNotFoundError(f"transfer data set {name!r}: set eval.protocols.transfer.roots.{name} to its folder")
    if name in ("cifar10", "cifar100"):
        data = transfer.cifar_dataset(name, root)
    elif (streamed := StreamedTransfer.open(name, root, data_cfg, log)) is not None:
        return streamed
    else:
        test = Path(root) / "test" if (Path(root) / "test").is_dir() else Path(root) / "val"
        data = transfer.imagefolder_transfer(Path(root) / "train", test, size, name=name)

    def fit(images):  # to the student's input: size and channels
        images = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True).round().clamp(0, 255)
        if images.shape[1] != channels:
            images = images.mean(dim=1, keepdim=True) if channels == 1 else images.expand(-1, channels, -1, -1)
        return images.to(torch.uint8)

    data.train_images, data.test_images = fit(data.train_images), fit(data.test_images)
    if len(data.mean) != channels:
        mean, std = sum(data.mean) / len(data.mean), sum(data.std) / len(data.std)
        data.mean, data.std = (mean,) * channels, (std,) * channels
    return data


def _finetune_augmentation(crop_scale, seed: int):
    """The fine-tuning views of the semi-supervised protocol (SimCLR's: random resized crop and flip),
    drawn from a generator of their own so that a repeated evaluation sees the same crops."""
    if not crop_scale:
        return None
    from seedrun.data.augment import crop_and_flip

    generator = torch.Generator().manual_seed(seed + 1)
    return lambda x: crop_and_flip(x, tuple(crop_scale), flip=True, generator=generator)


def _feature_dim(backbone: nn.Module, data_cfg: dict[str, Any], device) -> int:
    size = data_cfg["image_size"]
    with torch.no_grad():
        return int(backbone.eval().to(device)(torch.zeros(1, data_cfg["channels"], size, size, device=device)).shape[1])


class StreamedTransfer:
    """A transfer tree read by the stream loader: its train and test splits (seedrun.data.loader), the
    per-channel statistics of its training images' evaluation views (one streamed pass, cached, as the
    in-memory path computes them on its tensor), and frozen features a chunk at a time."""

    CHUNK = 256  # extract_features' batch: the same images give the in-memory path's features exactly

    def __init__(self, train, test, mean, std):
        self.train, self.test, self.num_classes, self.mean, self.std = train, test, train.num_classes, mean, std

    @classmethod
    def open(cls, name: str, root: str, data_cfg: dict[str, Any], log) -> Optional["StreamedTransfer"]:
        """The streamed tree, or None when the loader data.loader picks for it is the in-memory one."""
        from seedrun.data.formats import file_list
        from seedrun.data.loader import choose_loader
        from seedrun.evaluate.transfer import ChannelStats
        from seedrun.store.locations import seedrun_home

        cfg = {**data_cfg, "name": f"transfer-{name}", "format": "imagefolder", "root": str(root),
               "train_subset": None, "test_subset": None}
        if choose_loader(cfg, None, log) == "memory":
            return None
        files = file_list(Path(root), "train", log)
        cfg["num_classes"] = len(files.classes) or int(files.labelled().labels.max()) + 1  # a TSV: its labels
        train, test = open_split(cfg, "train", None, log), open_split(cfg, "test", None, log)

        def stats():
            accumulated = ChannelStats(data_cfg["channels"])
            for images, _ in train.chunks(cls.CHUNK):
                accumulated.add(images)
            return torch.tensor(accumulated.result(), dtype=torch.float64)

        key = {"dataset": cfg["name"], "root": str(Path(root).absolute()), "files": len(train),
               "size": data_cfg["image_size"], "channels": data_cfg["channels"], "what": "channel-stats"}
        mean, std = cached_features(seedrun_home() / "features", key, stats).tolist()
        return cls(train, test, tuple(mean), tuple(std))

    def features(self, model_path: Path, backbone: nn.Module, split: str, what: dict[str, Any],
                 device) -> tuple[torch.Tensor, torch.Tensor]:
        from seedrun.store.locations import seedrun_home

        data = self.train if split == "train" else self.test

        def compute():
            out, labels = [], []
            for images, chunk_labels in data.chunks(self.CHUNK):
                out.append(extract_features(backbone, images, self.mean, self.std, batch_size=self.CHUNK, device=device))
                labels.append(chunk_labels)
            return {"features": torch.cat(out), "labels": torch.cat(labels)}

        key = {"checkpoint_sha256": file_sha256(model_path), **what, "split": split, "transform": "resize-centercrop",
               "files": len(data), "channels": len(self.mean), "mean": list(self.mean), "unreadable": "skipped"}
        value = cached_features(seedrun_home() / "features", key, compute)
        return value["features"], value["labels"]


__all__ = ["PROTOCOLS", "evaluate"]
