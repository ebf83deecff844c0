"""Self-supervised pre-training, the recipe that makes teachers and student-alone baselines: MoCo-v2
(He et al. 2020; Chen et al. 2020, official moco/builder.py), SimCLR or SwAV on two views, a loop you
can read top to bottom. Checkpoints atomically every N steps and resumes bit-identically.

Several processes (seedrun.training.distributed, seedrun.job.ranks): `pretrain.batch_size` is the global
batch, split evenly over the ranks; the encoder trains under DistributedDataParallel (BN buffers per rank,
as the official MoCo: each rank's BN running statistics are its own, rank 0's are saved), the momentum key
encoder is replicated (every rank applies the same update to the same averaged weights), and MoCo-v2 gathers
the keys of every rank into each rank's queue in rank order with shuffle BN across ranks (seedrun.training.
pretexts). SimCLR and SwAV run in one process only. Global rank 0 writes checkpoints and the model and
evaluates; a checkpoint holds each rank's RNG state and the digests that prove the replicas identical.
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
from seedrun.models.model_file import MODEL, build_marker, save_model
from seedrun.models.networks import without_dropout
from seedrun.models.registry import create_backbone
from seedrun.training import distributed
from seedrun.training.checkpoints import load_checkpoint, rng_state, set_rng_state
from seedrun.training.loop import Hooks, autocast, batch_size_for, evaluate_knn, setup_torch, sgd_and_loop
from seedrun.training.pretexts import check_ranks, create_pretext


def pretrain(config: dict[str, Any], run_dir: Path, hooks: Hooks, data_root: Optional[str] = None) -> dict[str, float]:
    """Self-supervised pre-training with `pretrain.method` (MoCo-v2, SimCLR or SwAV; seedrun.training.pretexts) on two views,
    on every rank of the job's process group (MoCo-v2 only when there are several)."""
    ranks = distributed.current()  # one process unless the job set up a process group
    data_cfg, p = config["data"], config["pretrain"]
    check_ranks(p["method"], ranks.world)
    device = distributed.device_for(ranks, setup_torch(config))
    train = open_split(data_cfg, "train", data_root, hooks.log, method=p["method"])  # augment.preset=auto: its own
    test = open_split(data_cfg, "test", data_root, hooks.log)
    seed = int(p["seed"])

    torch.manual_seed(seed)
    backbone, d = pretrain_backbone(p, data_cfg["channels"])
    head = teacher_head(p["method"], d, p["dim"], p.get("head", "auto"))
    encoder = nn.Sequential(backbone, head).to(device)
    pretext = create_pretext(p, encoder, seed).to(device)
    batch_size = batch_size_for(p["batch_size"], len(train))  # the global batch: lr and steps follow it
    rank_batch = distributed.split_batch(batch_size, ranks)
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
        per_rank = resumed.get("rng_ranks") or []  # several processes: each rank's own stream
        set_rng_state(per_rank[ranks.rank] if len(per_rank) == ranks.world else resumed["rng"])
        step = resumed["step"]
        hooks.log(f"resumed from step {step} (epoch {step // steps_per_epoch})")

    def state() -> dict[str, Any]:
        return {"encoder": encoder.state_dict(), "pretext": pretext.state_dict(), "pretext_extra": pretext.extra_state(),
                "optimizer": optimizer.state_dict(), "rng": rng_state(), "step": step, "epoch": step // steps_per_epoch,
                **({"rng_ranks": ranks.gather_object(rng_state()), "world": ranks.world,
                    # parameters and the queue, not BN buffers: those stay per rank (distributed.per_rank_buffers)
                    "rank_digests": distributed.check_identical(ranks, "the encoders and the queue", [
                        *encoder.parameters(), *pretext.parameters(), *pretext.replicated()])}
                   if ranks.active else {})}

    model = distributed.parallel_model(encoder, ranks, device, loop, run_dir)  # DDP under several processes

    # two views a batch, whichever loader; rank r takes part r of each global batch
    batches = train.batches(seed, rank_batch, {0: None, 1: None}, ranks.rank, ranks.world)
    curves = loop.open_curves(config, step, batch_size, ranks.is_main)  # TensorBoard on global rank 0
    try:
        for epoch in range(step // steps_per_epoch, p["epochs"]):
            encoder.train()
            started, losses = time.monotonic(), []
            for batch in loop.timed(batches.epoch(epoch, step % steps_per_epoch)):
                view_a, view_b = batch.view(0, device), batch.view(1, device)
                loop.set_lr(optimizer, step)
                if ranks.active:
                    loop.collectives_ahead()  # MoCo-v2's shuffle BN gathers the keys' batch in the forward
                with autocast(config, device):
                    loss = pretext(model, view_a, view_b, step)
                # the step's one all-reduce: the loss over ranks (a NaN on one rank fails every rank at this
                # step), stop, checkpoint due and failed, agreed by every rank (training.loop.Loop.agree_step)
                loss_value = loop.agree_step(step + 1, loss)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                pretext.after_step()
                losses.append(loss_value)
                step += 1
                loop.record_step(step, loss_value)
                loop.after_step(step, state)
            loop.end_epoch(epoch, step, losses, started, state)
        loop.collectives_ahead()  # training is over: no step's all-reduce follows to tell a failure in
        results = finish(config, backbone, head, train, test, device, run_dir, hooks) if ranks.is_main else {}
        curves.results(step, results)
        return results
    except BaseException as exc:
        loop.fail(exc)  # the other ranks stop at this step's all-reduce instead of waiting in a collective
        raise
    finally:
        curves.close()


def pretrain_backbone(p: dict[str, Any], in_chans: int) -> tuple[nn.Module, int]:
    """The network `pretrain` trains, as its settings build it (a student-alone run's baseline.dropout too)."""
    backbone, d = create_backbone(p["arch"], small_images=p["small_images"], in_chans=in_chans, width=p["width"],
                                  bn=p.get("bn"), layout=p.get("layout"))
    if p.get("dropout") is False:
        without_dropout(backbone)
    return backbone, d


def finish(config: dict[str, Any], backbone: nn.Module, head: nn.Module, train, test, device: torch.device,
           run_dir: Path, hooks: Hooks) -> dict[str, float]:
    """Global rank 0, after the last step: write the model and evaluate it."""
    data_cfg, p = config["data"], config["pretrain"]
    save_model(run_dir / MODEL, backbone, head, arch=p["arch"], width=p["width"], small_images=p["small_images"],
               in_chans=data_cfg["channels"], method=p["method"], extra={"dim": p["dim"], **build_marker(p)})
    results = evaluate_knn(backbone, train, test, config, device)
    if train.kind == "memory":  # it would need every image as float: computed only for in-memory sets
        results.update(pixel_reference(train, test, config))
    else:
        hooks.log("raw-pixel k-NN reference skipped: the data set streams (data.loader=stream)")
    if p.get("role") == "baseline":  # the student alone: is it better than the same network untrained?
        results.update(random_init_reference(config, data_cfg, train, test, device))
    return results


def random_init_reference(config: dict[str, Any], data_cfg: dict[str, Any], train, test,
                          device: torch.device) -> dict[str, float]:
    """k-NN of the same network as it was before training (rebuilt from the run's seed, which draws the
    same weights the run started from): a baseline below it learned nothing, whatever its number."""
    p = config["pretrain"]
    torch.manual_seed(int(p["seed"]))
    untrained, _ = pretrain_backbone(p, data_cfg["channels"])
    knn = evaluate_knn(untrained.to(device).eval(), train, test, config, device)
    return {f"init_{name}": value for name, value in knn.items() if name in ("knn_top1", "knn_top5")}


def pixel_reference(train, test, config: dict[str, Any]) -> dict[str, float]:
    """k-NN on raw pixels with the same protocol: the floor a learned representation should clear
    (in-memory sets only: seedrun.data.loader.MemoryData)."""
    knn = config["eval"]["knn"]
    flat = lambda data: normalize(data.images, data.mean, data.std).flatten(1)  # noqa: E731
    result = knn_accuracy(flat(train), train.labels, flat(test), test.labels, train.num_classes, k=knn["k"], tau=knn["tau"])
    return {"pixels_knn_top1": result["top1"], "pixels_knn_top5": result["top5"]}
