"""The stream loader: images read and decoded one at a time by DataLoader worker processes, for sets too
big to hold in memory (ImageNet). Nothing but the file list (seedrun.data.formats) is held.

Each worker reads a file (or a TSV row) and makes each training view as the official SEED code does
(seedrun.data.presets: mocov2_aug, simclr_aug or swav_aug), on Pillow's uint8 kernels: the view's
parameters are drawn first (seedrun.data.draws: torchvision's own draws, in the official order), so that
the JPEG is decoded at the smallest DCT scale that still gives every crop its output size (PIL draft);
then crop + resize, colour jitter and grayscale (in the preset's order), Gaussian blur (Pillow's, sigma
scaled by size / 224), flip (seedrun.data.pillow_ops). With `data.augment_on: gpu` the workers stop after
the crop and hand each view's drawn parameters along; StreamBatch.view applies the rest batched on the
run's device (seedrun.data.batched_ops). Evaluation views are Resize(256 * s / 224) -> CenterCrop(s),
decoded by `data.decoder` (torchvision.io's decode_image by default, or PIL). Views travel as uint8
(4x less than float through the workers' shared memory, pinned when there is a GPU) and are normalised
on the training device by `StreamBatch.view`.

Randomness: a view's parameters are drawn from torch's CPU generator seeded by
seedrun.data.sampling.stream_seed(seed, epoch, index, view), distinct for any number of views, and
restored afterwards (seedrun.data.draws.seeded), so they do not depend on the worker, the batch the image
lands in or where a run was resumed; a resumed run is bit-identical on the CPU.

A file that cannot be read or decoded is reported (path and error) with its batch; the caller counts
and logs them (seedrun.data.loader). In a training batch its slot is filled with another image of the
same batch (index, label and views), so that batch sizes, and the queue arithmetic that depends on them,
hold; the budget data.max_bad_images bounds how much of an epoch that can repeat. In an evaluation
batch it is left out: a copy of another test image and its label would count that image twice in the
metric, so the evaluation sees one image fewer and counts the skipped ones (seedrun.evaluate).
"""

from __future__ import annotations

import base64
import functools
import io
import os
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader, Dataset

from seedrun.data.formats import AUGMENT_ON, DECODERS, FileList
from seedrun.data.presets import resolve
from seedrun.data.sampling import SAMPLE_STREAM, stream_seed
from seedrun.data.sampler import SequentialBatchSampler, ShardedBatchSampler


def sample_seed(seed: int, epoch: int, index: int, view: int) -> int:
    return stream_seed(SAMPLE_STREAM, seed, epoch, index, view)


def eval_transform(size: int):
    """Resize the short side to 256 * s / 224, then the central s x s (224 -> 256 -> 224 on ImageNet)."""
    from torchvision.transforms import v2

    return v2.Compose([v2.Resize(round(256 * size / 224), antialias=True), v2.CenterCrop(size)])


class ImageStream(Dataset):
    """Items are (sample index, epoch); epoch -1 gives the evaluation view. Returns a dict with the
    index, label and {view: uint8 (H, W, bands) array} (evaluation: {0: uint8 (C, H, W) tensor}), plus
    {view: drawn parameters} when the device augments; or the index, path and error when unreadable."""

    def __init__(self, files: FileList, data_cfg: dict[str, Any], seed: int = 0,
                 views: Optional[dict[int, Optional[tuple]]] = None, decoder: str = "torchvision"):
        from seedrun.data.draws import Drawer

        if decoder not in DECODERS:
            raise ValueError(f"data.decoder: expected one of {', '.join(DECODERS)}, got {decoder!r}")
        self.augment_on = data_cfg.get("augment_on") or "cpu"
        if self.augment_on not in AUGMENT_ON:
            raise ValueError(f"data.augment_on: expected one of {', '.join(AUGMENT_ON)}, got {self.augment_on!r}")
        self.files, self.seed, self.decoder = files, seed, decoder
        self.channels, size = data_cfg["channels"], data_cfg["image_size"]
        self.mode = "L" if self.channels == 1 else "RGB"
        self.views = views or {0: None}
        aug = resolve(data_cfg.get("augment"), None)
        self.grayscale_first = bool(aug["grayscale_first"])
        self.drawers, self.sizes = {}, {}
        for view, spec in self.views.items():
            scale, out = spec or (None, None)
            self.drawers[view], self.sizes[view] = Drawer(aug, size, scale), out or size
        self.eval = eval_transform(size)
        self.eval_side = round(256 * size / 224)
        self._tsv, self._tsv_pid = None, None

    def __len__(self) -> int:
        return len(self.files)

    def _read(self, index: int) -> tuple[bytes, int]:
        files = self.files
        if files.kind == "folders":
            with open(files.path(index), "rb") as f:
                return f.read(), files.label(index)
        if self._tsv is None or self._tsv_pid != os.getpid():  # one handle per worker process
            self._tsv, self._tsv_pid = open(files.folder, "rb"), os.getpid()
        self._tsv.seek(files.offset(index))
        fields = self._tsv.readline().rstrip(b"\r\n").split(b"\t")
        if len(fields) < 3:
            raise ValueError("expected key<TAB>label<TAB>base64 image")
        return base64.b64decode(fields[-1], validate=True), int(fields[1])

    def _decode(self, raw: bytes, side: int) -> torch.Tensor:
        if self.decoder == "torchvision":
            from torchvision.io import ImageReadMode, decode_image

            mode = ImageReadMode.GRAY if self.channels == 1 else ImageReadMode.RGB
            image = decode_image(torch.frombuffer(bytearray(raw), dtype=torch.uint8), mode=mode)
            # channels-last (H, W, C in memory): torchvision's uint8 antialiased resize is twice as fast so
            return image.permute(1, 2, 0).contiguous().permute(2, 0, 1)
        import numpy as np
        from PIL import Image

        with Image.open(io.BytesIO(raw)) as image:
            if image.format == "JPEG":
                image.draft("L" if self.channels == 1 else "RGB", (side, side))
            array = np.asarray(image.convert("L" if self.channels == 1 else "RGB"))
        tensor = torch.from_numpy(array.copy())
        return tensor[None] if tensor.dim() == 2 else tensor.permute(2, 0, 1)  # channels-last, as decoded

    def train_views(self, raw: bytes, epoch: int, index: int) -> dict[str, Any]:
        """Every asked view of one image: {"views": {view: uint8 array}} and, when the device augments,
        {"params": {view: FIELDS' numbers}}."""
        from seedrun.data import pillow_ops as ops
        from seedrun.data.draws import seeded

        image = ops.open_image(raw)
        full_size, drawn = image.size, {}
        for view, drawer in self.drawers.items():
            with seeded(sample_seed(self.seed, epoch, index, view)):
                drawn[view] = drawer.draw(*full_size)
        d = ops.reduction(image, [(drawn[view], self.sizes[view]) for view in drawn])
        decoded = ops.decode(image, self.mode, d)
        views = {}
        for view, params in drawn.items():
            crop = ops.crop(decoded, params.box, self.sizes[view], full_size)
            if self.augment_on == "cpu":
                crop = ops.augment(crop, params, self.grayscale_first)
            views[view] = ops.to_array(crop)
        if self.augment_on == "cpu":
            return {"views": views}
        return {"views": views, "params": {view: params.row() for view, params in drawn.items()}}

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        index, epoch = item
        try:
            raw, label = self._read(index)
            if epoch >= 0:
                return {"index": index, "label": label, **self.train_views(raw, epoch, index)}
            image = self._decode(raw, self.eval_side)
        except Exception as exc:  # corrupt, truncated, unreadable: reported by the caller, never a crash
            return {"index": index, "bad": f"{self.files.path(index)}: {type(exc).__name__}: {exc}"}
        return {"index": index, "label": label, "views": {0: self.eval(image)}}


def _stack(views: list, channels: int) -> torch.Tensor:
    """A batch of views as uint8 (B, C, H, W): evaluation tensors stacked; training arrays (H, W, bands)
    transposed into it, a grey view's band repeated over the channels. Transposing here costs a worker
    0.04 ms a colour view and saves 0.14 on a grey one (a strided broadcast), and the training process
    0.09 (its float copy reads a contiguous batch). In a worker the batch is made in shared memory,
    where the main process receives it, so it is written once, not copied there afterwards."""
    if isinstance(views[0], torch.Tensor):
        return torch.stack(views)
    shape = (len(views), channels, *views[0].shape[:2])
    out = _shared(shape) if torch.utils.data.get_worker_info() is not None else torch.empty(shape, dtype=torch.uint8)
    target = out.numpy()
    for i, view in enumerate(views):
        target[i] = view.transpose(2, 0, 1)
    return out


def _shared(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised uint8 tensor in shared memory, allocated there directly as torch's own
    default_collate does (UntypedStorage._new_shared): share_memory_() on a new tensor would copy it
    there, 0.14 ms an image, 4% of a worker's time."""
    numel = 1
    for size in shape:
        numel *= size
    new_shared = getattr(torch.UntypedStorage, "_new_shared", None)
    if new_shared is None:  # a torch without it: allocate, then move
        return torch.empty(shape, dtype=torch.uint8).share_memory_()
    return torch.empty(0, dtype=torch.uint8).set_(new_shared(numel)).view(shape)


def collate(items: list[dict[str, Any]], channels: int = 3, fill: bool = True) -> dict[str, Any]:
    """Stack a batch. An unreadable image's slot is filled with a readable one of the batch (fill: training,
    whose batch size must hold), or left out (evaluation, whose metric must not count an image twice)."""
    good = [item for item in items if "bad" not in item]
    bad = [item["bad"] for item in items if "bad" in item]
    # which images they were: a training run meets the same unreadable file every epoch, and a budget of
    # distinct images must not count it again each time (messages differ: PIL names a fresh buffer)
    bad_indices = [item["index"] for item in items if "bad" in item]
    if not good:
        return {"indices": torch.empty(0, dtype=torch.int64), "labels": torch.empty(0, dtype=torch.int64),
                "views": {}, "bad": bad, "bad_indices": bad_indices, "size": len(items)}
    filled = [item if "bad" not in item else good[i % len(good)] for i, item in enumerate(items)] if fill else good
    batch = {"indices": torch.tensor([item["index"] for item in filled], dtype=torch.int64),
             "labels": torch.tensor([item["label"] for item in filled], dtype=torch.int64),
             "views": {k: _stack([item["views"][k] for item in filled], channels) for k in filled[0]["views"]},
             "bad": bad, "bad_indices": bad_indices, "size": len(items)}
    if "params" in filled[0]:  # the device augments: each view's drawn parameters, one row an image
        batch["params"] = {k: torch.tensor([item["params"][k] for item in filled], dtype=torch.float64)
                           for k in filled[0]["params"]}
    return batch


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)  # one decode a process: the workers are the parallelism


def default_workers() -> int:
    """The CPUs of the task, minus one for the training process."""
    cpus = int(os.environ.get("SLURM_CPUS_PER_TASK", 0)) or len(os.sched_getaffinity(0))
    return max(0, cpus - 1)


def make_loader(dataset: ImageStream, batch_sampler, workers: int, prefetch: int, persistent: bool,
                generator: Optional[torch.Generator] = None, fill: bool = True) -> DataLoader:
    return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=workers,
                      collate_fn=functools.partial(collate, channels=dataset.channels, fill=fill),
                      pin_memory=torch.cuda.is_available(), worker_init_fn=_worker_init,
                      persistent_workers=persistent and workers > 0,
                      prefetch_factor=prefetch if workers > 0 else None, generator=generator)


def train_loader(files: FileList, data_cfg: dict[str, Any], seed: int, batch_size: int,
                 views: dict[int, Optional[tuple]], rank: int = 0, world: int = 1,
                 workers: Optional[int] = None) -> tuple[DataLoader, ShardedBatchSampler]:
    """A DataLoader over rank `rank`'s batches; set the sampler's epoch (and start) before each iter()."""
    sampler = ShardedBatchSampler(len(files), batch_size, seed, rank, world)
    dataset = ImageStream(files, data_cfg, seed, views, data_cfg.get("decoder") or "torchvision")
    workers = default_workers() if workers is None else workers
    return make_loader(dataset, sampler, workers, int(data_cfg.get("prefetch") or 2), persistent=True), sampler


def eval_loader(files: FileList, data_cfg: dict[str, Any], batch_size: int, workers: Optional[int] = None,
                batches=None) -> DataLoader:
    """Every image once, in order, as its evaluation view; or, given `batches` (lists of sample indices),
    those batches in that order (fine-tuning reads its shuffled labelled subset so). Unreadable images
    are left out of their batch (reported in its "bad"), never replaced."""
    dataset = ImageStream(files, data_cfg, decoder=data_cfg.get("decoder") or "torchvision")
    workers = default_workers() if workers is None else workers
    sampler = (SequentialBatchSampler(len(files), batch_size) if batches is None
               else [[(int(index), -1) for index in batch] for batch in batches])
    # a generator of its own: each iter() of a DataLoader draws a seed from the generator it is given, by
    # default torch's global one, which would shift what the caller draws next (a fine-tuning head's
    # initialisation) away from what it draws with the in-memory loader; evaluation views are not random
    return make_loader(dataset, sampler, workers, int(data_cfg.get("prefetch") or 2), persistent=False,
                       generator=torch.Generator(), fill=False)
