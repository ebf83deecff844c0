"""One interface to a split of a data set, whichever loader reads it (`data.loader: auto|memory|stream`).

    memory   the whole split decoded once into a uint8 tensor (seedrun.data.datasets) and augmented a
             batch at a time on the tensor (seedrun.data.augment): small sets (Fashion-MNIST, the tiny
             generated set, small folder trees).
    stream   images read, decoded and augmented one at a time by DataLoader workers
             (seedrun.data.stream), nothing held but the file list: ImageNet-size trees and TSV files.
    auto     memory for sets whose decoded training size (N x C x s x s bytes) fits `data.memory_budget_mb`
             (default 2048), stream otherwise; TSV files always stream.

What the training recipes and evaluation use, the same for both:

    data = open_split(data_cfg, "train", data_root, log, method)   # method: what picks data.augment.preset=auto
    len(data), data.num_classes, data.mean, data.std, data.kind ("memory" or "stream")
    batches = data.batches(seed, batch_size, views)       # views: {view id: None or (crop_scale, out_size)}
    batches.steps_per_epoch
    for batch in batches.epoch(epoch, start):              # start: the step within the epoch to resume at
        batch.indices; batch.view(k, device)               # normalised float (B, C, s, s) on `device`
    for images, labels in data.chunks(512): ...            # uint8 evaluation views, in data-set order
    for images, labels in data.gather([idx, ...]): ...     # the same, of given batches of indices (fine-tuning)
    data.labels                                            # every label, no image read (a TSV's label column)

Training views are augmented with the preset seedrun.data.presets resolves from `data.augment` and the
`method` open_split is given (the teacher's for a distillation run, the run's own for pre-training);
both loaders apply the same resolved settings. The memory loader draws view k of step t from
seedrun.data.sampling.step_generator(seed, t, k); the stream loader computes every view in `views`
ahead, in the workers, each image's from sampling.stream_seed too. Unreadable images met while streaming are
logged with their path and skipped: in a training batch their slot is filled by another image of the batch
(the batch size holds), an evaluation leaves them out and counts them. More than `data.max_bad_images`
(default 100) distinct ones in one attempt raise DataError, which the job records as failure class data_error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

from seedrun.data.augment import augment, normalize
from seedrun.data.datasets import ImageSet, load, locate
from seedrun.data.formats import LOADERS, DataError, DataInvalid, file_list, layout
from seedrun.data.presets import resolve
from seedrun.data.sampling import epoch_order, step_generator, stream_seed

Views = dict[int, Optional[tuple]]
#: the stream tag of a training DataLoader's generator (seedrun.data.sampling's own streams are 1 and 2)
LOADER_STREAM = 3


def choose_loader(data_cfg: dict[str, Any], data_root: Optional[str] = None, log=None) -> str:
    """"memory" or "stream" for this data set, from `data.loader`."""
    loader = data_cfg.get("loader") or "auto"
    if loader not in LOADERS:
        raise DataInvalid(f"data.loader: expected one of {', '.join(LOADERS)}, got {loader!r}")
    if data_cfg["format"] != "imagefolder":
        if loader == "stream":
            raise DataInvalid(f"data.loader=stream reads ImageFolder trees and TSV files; "
                              f"{data_cfg['format']!r} data sets load into memory (data.loader: memory or auto)")
        return "memory"
    root = Path(locate(data_cfg, data_root))
    if layout(root) == "tsv":
        if loader == "memory":
            raise DataInvalid(f"{root}: TSV data sets stream; expected data.loader: stream or auto")
        return "stream"
    if loader != "auto":
        return loader
    n = len(file_list(root, "train", log))
    n = min(n, int(data_cfg.get("train_subset") or n))
    decoded = n * data_cfg["channels"] * data_cfg["image_size"] ** 2
    return "memory" if decoded <= float(data_cfg.get("memory_budget_mb") or 2048) * 2 ** 20 else "stream"


def open_split(data_cfg: dict[str, Any], split: str, data_root: Optional[str] = None,
               log: Callable[[str], None] = print, method: Optional[str] = None):
    """The split ("train" or "test") through the loader `data.loader` picks: MemoryData or StreamData.

    `method` (mocov2, simclr, swav) picks the augmentation preset when `data.augment.preset` is auto: the
    teacher's method for distillation, the run's own for pre-training; None (evaluation) means MoCo-v2's.
    The data config the split keeps holds the resolved settings, so both loaders read the same ones."""
    data_cfg = {**data_cfg, "augment": resolve(data_cfg.get("augment"), method)}
    if choose_loader(data_cfg, data_root, log) == "memory":
        return MemoryData(load(data_cfg, split, data_root), data_cfg)
    root = Path(locate(data_cfg, data_root))
    files = file_list(root, split, log)
    subset = data_cfg.get("train_subset" if split == "train" else "test_subset")
    return StreamData(files.subset(int(subset), data_cfg["num_classes"]) if subset else files, data_cfg, log)


class MemoryBatch:
    """One rank's part (`part`, a slice) of a step's global batch `images`: the whole global batch is
    augmented from the step's generator and sliced, so W ranks see exactly what one process would."""

    def __init__(self, images: torch.Tensor, indices: torch.Tensor, step: int, seed: int, data: "MemoryData",
                 views: Views, aug: dict[str, Any], image_size: int, part: slice = slice(None)):
        self.images, self.indices, self.step, self._part = images, indices[part], step, part
        self._seed, self._data, self._views, self._aug, self._size = seed, data, views, aug, image_size

    def view(self, k: int, device=None) -> torch.Tensor:
        scale, out = self._views.get(k) or (None, None)
        return augment(self.images, self._aug, self._size, self._data.mean, self._data.std,
                       step_generator(self._seed, self.step, k), crop_scale=scale, out_size=out)[self._part].to(device)


class MemoryBatches:
    """batch_size is the rank's; rank r of W takes part r of each global batch of W x batch_size."""

    def __init__(self, data: "MemoryData", seed: int, batch_size: int, views: Views, data_cfg: dict[str, Any],
                 rank: int = 0, world: int = 1):
        self.data, self.seed, self.batch_size, self.views = data, seed, batch_size * world, views
        self.aug, self.image_size = data_cfg["augment"], data_cfg["image_size"]
        self.steps_per_epoch = len(data) // self.batch_size
        self.part = slice(None) if world == 1 else slice(rank * batch_size, (rank + 1) * batch_size)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[MemoryBatch]:
        order, b = epoch_order(len(self.data), self.seed, epoch), self.batch_size
        for position in range(start, self.steps_per_epoch):
            indices = order[position * b:(position + 1) * b]
            yield MemoryBatch(self.data.images[indices], indices, epoch * self.steps_per_epoch + position, self.seed,
                              self.data, self.views, self.aug, self.image_size, self.part)


class MemoryData:
    """A split held whole as uint8 (N, C, H, W): the in-memory loader."""

    kind = "memory"

    def __init__(self, images: ImageSet, data_cfg: dict[str, Any]):
        self.set, self.data_cfg = images, data_cfg
        self.images, self.labels = images.images, images.labels
        self.num_classes, self.mean, self.std = images.num_classes, images.mean, images.std

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, seed: int, batch_size: int, views: Views, rank: int = 0, world: int = 1) -> MemoryBatches:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in 0..{world - 1}")
        return MemoryBatches(self, seed, batch_size, views, self.data_cfg, rank, world)

    def chunks(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self.images), batch_size):
            yield self.images[start:start + batch_size], self.labels[start:start + batch_size]

    def gather(self, batches) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The images and labels of each batch of sample indices, in order (fine-tuning's batches)."""
        for batch in batches:
            yield self.images[batch], self.labels[batch]


class StreamBatch:
    def __init__(self, raw: dict[str, Any], mean, std):
        self.indices, self.labels, self._views, self._mean, self._std = raw["indices"], raw["labels"], raw["views"], mean, std
        self._params = raw.get("params") or {}

    def view(self, k: int, device=None) -> torch.Tensor:
        """View k normalised on `device`: the uint8 batch travels (pinned, 4x smaller than float), then
        is normalised where the networks run; with data.augment_on=gpu the workers' crops are augmented
        there first, batched, with each image's drawn parameters (seedrun.data.batched_ops)."""
        if k not in self._views:
            raise KeyError(f"view {k} was not asked of the stream loader (asked: {sorted(self._views)})")
        images = self._views[k].to(device, non_blocking=True)
        if k in self._params:
            from seedrun.data.batched_ops import augment_batch

            return normalize(augment_batch(images, self._params[k]), self._mean, self._std)
        # normalize's arithmetic, in place on one float copy (not three new tensors: on the CPU each
        # 38 MB batch of 224 px images costs its page faults again)
        x = images.to(torch.float32).div_(255)
        mean = torch.tensor(self._mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self._std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return x.sub_(mean).div_(std)


class BadImages:
    """Counts, logs and bounds the distinct unreadable images of one attempt: the same file met again in a
    later epoch is counted once, else one corrupt JPEG would fail a 200-epoch run at epoch 101."""

    def __init__(self, limit: int, log: Callable[[str], None]):
        self.limit, self.log, self.seen, self.images = limit, log, [], set()

    def report(self, bad: list[str], indices: Optional[list[int]] = None) -> None:
        for message, index in zip(bad, indices if indices is not None else [None] * len(bad)):
            if index is not None:
                if index in self.images:
                    continue
                self.images.add(index)
            self.seen.append(message)
            self.log(f"skipped an unreadable image ({len(self.seen)} so far): {message}")
        if len(self.seen) > self.limit:
            raise DataError(f"{len(self.seen)} unreadable images, more than data.max_bad_images={self.limit}; "
                            f"last: {self.seen[-1]}")


class StreamBatches:
    def __init__(self, data: "StreamData", seed: int, batch_size: int, views: Views, rank: int, world: int):
        from seedrun.data.stream import train_loader

        self.data, self.seed = data, seed
        self.loader, self.sampler = train_loader(data.files, data.data_cfg, seed, batch_size, views, rank, world,
                                                 data.workers)
        self.steps_per_epoch = self.sampler.steps_per_epoch

    def epoch(self, epoch: int, start: int = 0) -> Iterator[StreamBatch]:
        self.sampler.set_epoch(epoch, start)
        if start >= self.steps_per_epoch:
            return
        # iter() draws the workers' base seed from the loader's generator, by default torch's global one,
        # which a student's dropout draws from: a run resumed mid-epoch (one iter() fewer or more) would draw
        # other masks than the uninterrupted run. A generator seeded from (seed, epoch) leaves that stream alone.
        self.loader.generator = torch.Generator().manual_seed(stream_seed(LOADER_STREAM, self.seed, epoch))
        for raw in self.loader:
            self.data.bad.report(raw["bad"], raw.get("bad_indices"))
            if not len(raw["indices"]):
                raise DataError(f"every image of a batch is unreadable: {raw['bad'][0]}")
            yield StreamBatch(raw, self.data.mean, self.data.std)


class StreamData:
    """A split read image by image by worker processes: the stream loader."""

    kind = "stream"

    def __init__(self, files, data_cfg: dict[str, Any], log: Callable[[str], None] = print):
        from seedrun.data.stream import default_workers

        self.files, self.data_cfg = files, data_cfg
        self.num_classes, self.mean, self.std = data_cfg["num_classes"], tuple(data_cfg["mean"]), tuple(data_cfg["std"])
        workers = data_cfg.get("workers")
        self.workers = default_workers() if workers is None else int(workers)
        self.bad = BadImages(int(data_cfg.get("max_bad_images", 100)), log)

    def __len__(self) -> int:
        return len(self.files)

    def batches(self, seed: int, batch_size: int, views: Views, rank: int = 0, world: int = 1) -> StreamBatches:
        return StreamBatches(self, seed, batch_size, views, rank, world)

    @property
    def labels(self) -> torch.Tensor:
        """Every image's label, in order, without reading an image (a TSV's label column is read once)."""
        self.files = self.files.labelled()
        return torch.from_numpy(self.files.label_array())

    def chunks(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.gather(None, batch_size)

    def gather(self, batches, batch_size: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Evaluation views (uint8) and labels of each batch of sample indices, in order, decoded ahead by
        the workers; batches=None: every image once, in chunks of batch_size. An unreadable image is left
        out of its batch (seedrun.evaluate counts what it skipped), never replaced by another."""
        from seedrun.data.stream import eval_loader

        for raw in eval_loader(self.files, self.data_cfg, batch_size, self.workers, batches):
            self.bad.report(raw["bad"], raw.get("bad_indices"))
            if len(raw["indices"]):
                yield raw["views"][0], raw["labels"]
