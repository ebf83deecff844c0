"""SEED distillation (Fang et al. 2021, official seed/builder.py and main.py), a loop you can read top
to bottom: a frozen teacher, the student, the queue of teacher embeddings, and `distill.strategy`'s loss.
Checkpoints atomically every N steps and resumes bit-identically.

Determinism: model init and the queue come from `seed`; the data order of an epoch and the
augmentation of a step come from generators seeded by (seed, epoch) and (seed, step), so a resumed
run needs only its step to draw exactly what an uninterrupted run would have drawn.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from seedrun.data.loader import open_split
from seedrun.evaluate.sharded_features import evaluate_knn_sharded, teacher_features
from seedrun.losses import seed_loss
from seedrun.models.model_file import MODEL, build_marker, load_own_model, save_model
from seedrun.models.registry import create_network
from seedrun.models.teacher_formats import load_teacher as load_official
from seedrun.training import distributed, kernels
from seedrun.training.checkpoints import load_checkpoint, rng_state, set_rng_state
from seedrun.training.loop import (Hooks, InDtype, autocast, batch_size_for, setup_torch, sgd_and_loop,
                                   training_dtype)
from seedrun.training.queue import EmbeddingQueue
from seedrun.training.strategies import create_objective, get_strategy


def load_teacher(config: dict[str, Any], teacher_dir: Optional[Path]) -> tuple[nn.Module, nn.Module]:
    """The frozen teacher: a seedrun pre-training run's model, or an official checkpoint file."""
    channels = config["data"]["channels"]
    if teacher_dir is not None:
        return load_own_model(teacher_dir / MODEL, channels)

    t = config["teacher"]
    backbone, head, _info = load_official(t["checkpoint"], t["arch"], width=t.get("width", 64),
                                          small_images=t.get("small_images", False), in_chans=channels)
    return backbone, head


def batch_views(d: dict[str, Any]) -> dict[int, Any]:
    """The views of each batch the loader is asked for, from the `distill` settings: 0 the one both networks
    see, 1 the student's own second view (strategies whose registry entry declares second_view: SEED +
    MoCo-v2), 2.. the small patches; the in-memory loader draws them on demand, the stream loader ahead."""
    small_patches = int(d.get("small_crops", 0))
    return {0: None, **({1: None} if get_strategy(d["strategy"]).second_view else {}),
            **{2 + crop: (tuple(d["small_crop_scale"]), d["small_crop_size"]) for crop in range(small_patches)}}


def distill(config: dict[str, Any], run_dir: Path, hooks: Hooks, teacher_dir: Optional[Path],
            data_root: Optional[str] = None) -> dict[str, float]:
    """Distil a frozen teacher into the student with `distill.strategy` (SEED by default: the student matches
    softmax(z_T . [z_T; queue] / tau_T) with log_softmax(z_S . [z_T; queue] / tau_S))."""
    ranks = distributed.current()  # one process unless the job set up a process group
    device = distributed.device_for(ranks, setup_torch(config))
    data_cfg, d, s = config["data"], config["distill"], config["student"]
    kernels.configure(d, device)  # distill.deterministic: exact kernels, or cudnn.benchmark
    # data.augment.preset=auto: the augmentation of the teacher's method, as the official main.py
    train = open_split(data_cfg, "train", data_root, hooks.log, method=config["teacher"].get("method", "mocov2"))
    test = open_split(data_cfg, "test", data_root, hooks.log)
    seed = int(config["seed"])
    dtype = training_dtype(config)  # float32; float64 for the tests that compare process layouts

    teacher_backbone, teacher_head = load_teacher(config, teacher_dir)
    teacher = kernels.prepare(nn.Sequential(teacher_backbone, teacher_head), device).to(dtype).eval().requires_grad_(False)
    torch.manual_seed(seed)
    backbone, head, _ = create_network(s["arch"], s["width"], s["small_images"], data_cfg["channels"], s["dim"],
                                       s.get("head_layers", 2), bn=s.get("bn"), layout=s.get("layout"))
    student = kernels.prepare(nn.Sequential(backbone, head), device).to(dtype)
    if ranks.active and d.get("sync_bn", False):  # BN over the global batch: N ranks compute what one process does
        student = kernels.convert_sync_bn(student, device)
    objective = create_objective(d, s["dim"], seed, student).to(device, dtype)
    queue = EmbeddingQueue(d["queue_size"], s["dim"], torch.Generator().manual_seed(seed)).to(device).to(dtype)
    # The appendix's small-patch distillation: extra small crops against a second queue of their own.
    small_patches = int(d.get("small_crops", 0))
    if small_patches and d["strategy"] != "seed":
        raise ValueError("distill.small_crops is SEED's small-patch variant: it needs distill.strategy=seed")
    small_queue = EmbeddingQueue(d["queue_size"], s["dim"], torch.Generator().manual_seed(seed + 2)).to(device).to(dtype)
    batch_size = batch_size_for(d["batch_size"], len(train))  # the global batch: lr and steps follow it
    rank_batch = distributed.split_batch(batch_size, ranks)
    if ranks.active and small_patches:
        raise ValueError("distill.small_crops does not run under several processes yet; use one process")
    parameters = list(student.parameters()) + list(objective.parameters())
    optimizer, loop = sgd_and_loop(parameters, d, batch_size, len(train), run_dir, hooks)
    steps_per_epoch = loop.steps_per_epoch

    step = 0
    resumed = load_checkpoint(run_dir)
    if resumed is not None:
        student.load_state_dict(resumed["student"])
        objective.load_state_dict(resumed["objective"])
        objective.load_extra_state(resumed["objective_extra"])
        optimizer.load_state_dict(resumed["optimizer"])
        queue.load_state_dict(resumed["queue"])
        small_queue.load_state_dict(resumed["small_queue"])
        per_rank = resumed.get("rng_ranks") or []  # several processes: each rank's own stream
        set_rng_state(per_rank[ranks.rank] if len(per_rank) == ranks.world else resumed["rng"])
        step = resumed["step"]
        hooks.log(f"resumed from step {step} (epoch {step // steps_per_epoch})")
    # K-Means: the teacher's features of the training set, each rank embedding its block, gathered on rank 0
    objective.prepare(lambda: teacher_features(InDtype(teacher, dtype), train, device))

    def state() -> dict[str, Any]:
        return {"student": student.state_dict(), "objective": objective.state_dict(),
                "objective_extra": objective.extra_state(), "optimizer": optimizer.state_dict(),
                "queue": queue.state_dict(), "small_queue": small_queue.state_dict(), "rng": rng_state(),
                "step": step, "epoch": step // steps_per_epoch,
                **({"rng_ranks": ranks.gather_object(rng_state()), "world": ranks.world,
                    # parameters; BN buffers only under sync_bn: else they stay per rank (distributed.per_rank_buffers,
                    # each rank's own half of the batch) and rank 0's are saved
                    "rank_digests": distributed.check_identical(ranks, "the student and the queue", [
                        *student.parameters(), *(student.buffers() if d.get("sync_bn") else ()),
                        queue.embeddings, torch.tensor(queue.pointer)])}
                   if ranks.active else {})}

    model = distributed.parallel_model(student, ranks, device, loop, run_dir)  # DDP under several processes

    model = kernels.maybe_compile(model, d)  # distill.compile (off by default)

    views = batch_views(d)
    batches = train.batches(seed, rank_batch, views, ranks.rank, ranks.world)
    curves = loop.open_curves(config, step, batch_size, ranks.is_main)  # TensorBoard on global rank 0
    # the forward runs collectives: sync_bn all-reduces BN statistics, some objectives gather (strategies' registry)
    forward_gathers = ranks.active and (d.get("sync_bn", False) or get_strategy(d["strategy"]).gathers_in_forward)
    try:
        for epoch in range(step // steps_per_epoch, d["epochs"]):
            student.train()
            started, losses = time.monotonic(), []
            for batch in loop.timed(batches.epoch(epoch, step % steps_per_epoch)):
                indices, view = batch.indices, kernels.as_input(batch.view(0, device).to(dtype), device)
                another_view = lambda: kernels.as_input(batch.view(1, device).to(dtype), device)  # noqa: E731
                loop.set_lr(optimizer, step)
                if forward_gathers:
                    loop.collectives_ahead()
                with autocast(config, device):
                    z_teacher = F.normalize(kernels.teacher_forward(teacher, view).to(dtype), dim=1)
                    z_student = F.normalize(model(view).to(dtype), dim=1)
                    loss = objective(z_student, z_teacher, queue.embeddings, indices, another_view)
                    if small_patches:  # official main_small-patch.py: CE(large view) + mean CE(small views)
                        small_losses = []
                        for crop in range(small_patches):
                            small = kernels.as_input(batch.view(2 + crop, device).to(dtype), device)
                            z_teacher_small = F.normalize(kernels.teacher_forward(teacher, small).to(dtype), dim=1)
                            z_student_small = F.normalize(student(small).to(dtype), dim=1)
                            small_losses.append(seed_loss(z_student_small, z_teacher_small, small_queue.embeddings,
                                                          d["tau_student"], d["tau_teacher"]))
                        loss = loss + torch.stack(small_losses).mean()
                # the step's one all-reduce: the loss over ranks (a NaN on one rank fails every rank at this
                # step), stop, checkpoint due and failed, agreed by every rank (training.loop.Loop.agree_step)
                loss_value = loop.agree_step(step + 1, loss)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                ranks.average_gradients(objective.parameters())  # the student's are DDP's
                optimizer.step()
                objective.after_step()
                queue.push(distributed.concat_all_gather(z_teacher))  # every rank's keys, in rank order
                if small_patches:
                    small_queue.push(z_teacher_small)
                losses.append(loss_value)
                step += 1
                loop.record_step(step, loss_value)
                loop.after_step(step, state)
            loop.end_epoch(epoch, step, losses, started, state)

        loop.collectives_ahead()  # training is over: no step's all-reduce follows to tell a failure in
        # global rank 0 writes the model while the others wait on the store (a long phase, not a step's collective)
        distributed.on_main("writing the model", lambda: save_model(
            run_dir / MODEL, backbone, head, arch=s["arch"], width=s["width"], small_images=s["small_images"],
            in_chans=data_cfg["channels"], method=d["strategy"], extra={"dim": s["dim"], **build_marker(s)}), ranks)
        # every rank embeds its shard of both splits; rank 0 gathers, classifies and returns the metrics ({} elsewhere)
        results = evaluate_knn_sharded(InDtype(backbone, dtype), train, test, config, device)
        curves.results(step, results)
        return results
    except BaseException as exc:
        loop.fail(exc)  # the other ranks stop at this step's all-reduce instead of waiting in a collective
        raise
    finally:
        curves.close()
