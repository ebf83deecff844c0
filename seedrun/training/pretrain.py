"""Self-supervised pre-training, the recipe that makes teachers and student-alone baselines: MoCo-v2
(He et al. 2020; Chen et al. 2020, official moco/builder.py), SimCLR or SwAV on two views, a loop you
can read top to bottom. Checkpoints atomically every N steps and resumes bit-identically.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from seedrun.data.augment import normalize
from seedrun.data.loader import open_split
from seedrun.evaluate.knn import knn_accuracy
from seedrun.models.heads import teacher_head
from seedrun.models.model_file import MODEL, save_model
from seedrun.models.registry import create_backbone
from seedrun.training import distributed
from seedrun.training.checkpoints import load_checkpoint, rng_state, set_rng_state
from seedrun.training.loop import Hooks, autocast, batch_size_for, evaluate_knn, setup_torch, sgd_and_loop
from seedrun.training.pretexts import create_pretext


def pretrain(config: dict[str, Any], run_dir: Path, hooks: Hooks, data_root: Optional[str] = None) -> dict[str, float]:
    """Self-supervised pre-training with `pretrain.method` (MoCo-v2, SimCLR or SwAV; seedrun.training.pretexts) on two views.

    One process: a run with several (launcher.procs, tasks_per_node) pre-trains on global rank 0 alone while
    the other ranks leave (seedrun.job.ranks); the pretexts keep keys, negatives and Sinkhorn codes per
    process, so DDP here would silently not be the one-process recipe (no gathered keys, no shuffle BN)."""
    if distributed.current().active:
        raise RuntimeError("pre-training runs in one process: seedrun.job.ranks runs it on global rank 0 alone")
    device = setup_torch(config)
    data_cfg, p = config["data"], config["pretrain"]
    train = open_split(data_cfg, "train", data_root, hooks.log, method=p["method"])  # augment.preset=auto: its own
    test = open_split(data_cfg, "test", data_root, hooks.log)
    seed = int(p["seed"])

    torch.manual_seed(seed)
    backbone, d = create_backbone(p["arch"], small_images=p["small_images"], in_chans=data_cfg["channels"], width=p["width"])
    head = teacher_head(p["method"], d, p["dim"])
    encoder = nn.Sequential(backbone, head).to(device)
    pretext = create_pretext(p, encoder, seed).to(device)
    batch_size = batch_size_for(p["batch_size"], len(train))
    parameters = [param for param in list(encoder.parameters()) + list(pretext.parameters()) if param.requires_grad]
    optimizer, loop = sgd_and_loop(parameters, p, batch_size, len(train), run_dir, hooks)
    steps_per_epoch = loop.steps_per_epoch

    step = 0
    resumed = load_checkpoint(run_dir)
    if resumed is not None:
        encoder.load_state_dict(resumed["encoder"])
        pretext.load_state_dict(resumed["pretext"])
        pretext.load_extra_state(resumed["pretext_extra"])
        optimizer.load_state_dict(resumed["optimizer"])
        set_rng_state(resumed["rng"])
        step = resumed["step"]
        hooks.log(f"resumed from step {step} (epoch {step // steps_per_epoch})")

    def state() -> dict[str, Any]:
        return {"encoder": encoder.state_dict(), "pretext": pretext.state_dict(), "pretext_extra": pretext.extra_state(),
                "optimizer": optimizer.state_dict(), "rng": rng_state(), "step": step, "epoch": step // steps_per_epoch}

    batches = train.batches(seed, batch_size, {0: None, 1: None})  # two views a batch, whichever loader
    for epoch in range(step // steps_per_epoch, p["epochs"]):
        encoder.train()
        started, losses = time.monotonic(), []
        for batch in batches.epoch(epoch, step % steps_per_epoch):
            view_a, view_b = batch.view(0, device), batch.view(1, device)
            loop.set_lr(optimizer, step)
            with autocast(config, device):
                loss = pretext(encoder, view_a, view_b)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            pretext.after_step()
            losses.append(loss.item())
            step += 1
            loop.after_step(step, state)
        loop.end_epoch(epoch, step, losses, started, state)

    save_model(run_dir / MODEL, backbone, head, arch=p["arch"], width=p["width"], small_images=p["small_images"],
               in_chans=data_cfg["channels"], method=p["method"], extra={"dim": p["dim"]})
    if train.kind != "memory":  # it would need every image as float: computed only for in-memory sets
        hooks.log("raw-pixel k-NN reference skipped: the data set streams (data.loader=stream)")
        return evaluate_knn(backbone, train, test, config, device)
    return {**evaluate_knn(backbone, train, test, config, device), **pixel_reference(train, test, config)}


def pixel_reference(train, test, config: dict[str, Any]) -> dict[str, float]:
    """k-NN on raw pixels with the same protocol: the floor a learned representation should clear
    (in-memory sets only: seedrun.data.loader.MemoryData)."""
    knn = config["eval"]["knn"]
    flat = lambda data: normalize(data.images, data.mean, data.std).flatten(1)  # noqa: E731
    result = knn_accuracy(flat(train), train.labels, flat(test), test.labels, train.num_classes, k=knn["k"], tau=knn["tau"])
    return {"pixels_knn_top1": result["top1"], "pixels_knn_top5": result["top5"]}
