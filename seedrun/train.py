"""The two training recipes, each a loop you can read top to bottom: MoCo-v2 pre-training and SEED
distillation. Both checkpoint atomically every N steps and resume bit-identically.

Determinism: model init and the queue come from `seed`; the data order of an epoch and the
augmentation of a step come from generators seeded by (seed, epoch) and (seed, step), so a resumed
run needs only its step to draw exactly what an uninterrupted run would have drawn.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from seedrun.augment import augment, normalize
from seedrun.datasets import ImageSet, load
from seedrun.evaluate.knn import knn_accuracy
from seedrun.models.heads import head_from_state_dict, mlp_head, teacher_head
from seedrun.models.registry import create_backbone
from seedrun.losses import seed_loss
from seedrun.objectives import create_objective
from seedrun.pretext import create_pretext
from seedrun.queue import EmbeddingQueue

CHECKPOINT = "checkpoint.pt"  # training state, overwritten as training goes
MODEL = "model.pt"  # the finished network (backbone + head) that later stages load


class Interrupted(Exception):
    """Raised between steps when the job was asked to stop; a checkpoint has been written."""


class Hooks:
    """What a loop tells the job that runs it (job.py records it) and asks it (should it stop?)."""

    def log(self, message: str) -> None:
        print(message, flush=True)

    def epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        pass

    def should_stop(self) -> bool:
        return False


# ---- pieces both recipes use --------------------------------------------------------------------

def setup_torch(config: dict[str, Any]) -> torch.device:
    threads = int(config.get("threads") or 0) or int(os.environ.get("SLURM_CPUS_PER_TASK", 0)) or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    device = config.get("device", "auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    return torch.device(device)


def autocast(config: dict[str, Any], device: torch.device):
    """bf16 autocast on a GPU; fp32 on the CPU unless asked, since bf16 measured 13x slower on the
    2-core test machine (benchmarks/precision.py); `precision: bf16` forces it."""
    precision = config.get("precision", "auto")
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Linear warm-up, then cosine decay to 0 (official SEED and MoCo-v2 schedules)."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * 0.5 * (1 + math.cos(math.pi * progress))


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def step_generator(seed: int, step: int, view: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 4 + view)


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """Write, fsync, rename: a reader (or a requeued job) never sees half a checkpoint."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def load_checkpoint(run_dir: Path) -> Optional[dict[str, Any]]:
    path = run_dir / CHECKPOINT
    return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def network(arch: str, width: int, small_images: bool, channels: int, dim: int,
            head_layers: int = 2) -> tuple[nn.Module, nn.Module, int]:
    backbone, d = create_backbone(arch, small_images=small_images, in_chans=channels, width=width)
    return backbone, mlp_head(d, dim, layers=head_layers), d


def model_file(run_dir: Path, net: dict[str, Any], backbone: nn.Module, head: nn.Module) -> dict[str, Any]:
    """seedrun's own checkpoint format (seedrun.checkpoints detects it by the "seedrun" key)."""
    return {"seedrun": {"format": 1, **net}, "backbone": backbone.state_dict(), "head": head.state_dict()}


@torch.no_grad()
def features(backbone: nn.Module, data: ImageSet, device: torch.device, batch_size: int = 512) -> torch.Tensor:
    backbone.eval()
    out = []
    for start in range(0, len(data.images), batch_size):
        x = normalize(data.images[start:start + batch_size], data.mean, data.std).to(device)
        out.append(backbone(x).float().cpu())
    return torch.cat(out)


def evaluate_knn(backbone: nn.Module, train: ImageSet, test: ImageSet, config: dict[str, Any], device) -> dict[str, float]:
    knn = config["eval"]["knn"]
    train_f, test_f = features(backbone, train, device).to(device), features(backbone, test, device).to(device)
    result = knn_accuracy(train_f, train.labels.to(device), test_f, test.labels.to(device), train.num_classes,
                          k=knn["k"], tau=knn["tau"])
    return {"knn_top1": result["top1"], "knn_top5": result["top5"]}


class Loop:
    """Step bookkeeping shared by both recipes: schedule, periodic checkpoints, stop requests."""

    def __init__(self, run_dir: Path, hooks: Hooks, steps_per_epoch: int, epochs: int, warmup_epochs: float,
                 base_lr: float, checkpoint_every_steps: int, checkpoint_every_minutes: float = 0):
        self.run_dir, self.hooks = run_dir, hooks
        self.steps_per_epoch, self.epochs = steps_per_epoch, epochs
        self.total_steps = steps_per_epoch * epochs
        self.warmup_steps = int(round(warmup_epochs * steps_per_epoch))
        self.base_lr = base_lr
        self.every_steps = checkpoint_every_steps
        self.every_seconds = 60 * checkpoint_every_minutes
        self.last_save = time.monotonic()

    def set_lr(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        lr = lr_at(step, self.total_steps, self.warmup_steps, self.base_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr

    def after_step(self, step: int, state: Callable[[], dict[str, Any]]) -> None:
        """Checkpoint when due or asked to stop; raise Interrupted in the latter case."""
        if step % self.steps_per_epoch == 0:
            return  # end_epoch() saves, records, then honours a stop request
        stop = self.hooks.should_stop()
        due = (self.every_steps and step % self.every_steps == 0) or (
            self.every_seconds and time.monotonic() - self.last_save > self.every_seconds)
        if stop or due:
            save_atomic(state(), self.run_dir / CHECKPOINT)
            self.last_save = time.monotonic()
        if stop:
            raise Interrupted(f"stopped at step {step}")

    def end_epoch(self, epoch: int, step: int, losses: list[float], started: float,
                  state: Callable[[], dict[str, Any]]) -> None:
        """Checkpoint, record the epoch's metrics, then stop here if the job was asked to."""
        metrics = {"loss": sum(losses) / max(1, len(losses)), "epoch_seconds": time.monotonic() - started}
        self.hooks.log(f"epoch {epoch + 1}/{self.epochs} loss {metrics['loss']:.4f} ({metrics['epoch_seconds']:.0f}s)")
        save_atomic(state(), self.run_dir / CHECKPOINT)
        self.last_save = time.monotonic()
        self.hooks.epoch_end(epoch + 1, metrics)
        if self.hooks.should_stop():
            raise Interrupted(f"stopped at step {step}")


def sgd_and_loop(parameters, settings: dict[str, Any], batch_size: int, n_images: int, run_dir: Path,
                 hooks: Hooks) -> tuple[torch.optim.SGD, Loop]:
    """SGD with momentum and weight decay at lr x batch/256, under a warm-up + cosine Loop (both recipes)."""
    base_lr = settings["lr"] * batch_size / 256
    optimizer = torch.optim.SGD(parameters, lr=base_lr, momentum=settings["momentum"], weight_decay=settings["weight_decay"])
    loop = Loop(run_dir, hooks, n_images // batch_size, settings["epochs"], settings.get("warmup_epochs", 0), base_lr,
                settings.get("checkpoint_every_steps", 500), settings.get("checkpoint_every_minutes", 0))
    return optimizer, loop


def _batch_size(requested: int, n: int) -> int:
    return min(requested, n)


# ---- MoCo-v2 pre-training (He et al. 2020; Chen et al. 2020, official moco/builder.py) ---------

def pretrain(config: dict[str, Any], run_dir: Path, hooks: Hooks, data_root: Optional[str] = None) -> dict[str, float]:
    """Self-supervised pre-training with `pretrain.method` (MoCo-v2, SimCLR or SwAV; seedrun.pretext) on two views."""
    device = setup_torch(config)
    data_cfg, p = config["data"], config["pretrain"]
    train, test = load(data_cfg, "train", data_root), load(data_cfg, "test", data_root)
    seed = int(p["seed"])

    torch.manual_seed(seed)
    backbone, d = create_backbone(p["arch"], small_images=p["small_images"], in_chans=data_cfg["channels"], width=p["width"])
    head = teacher_head(p["method"], d, p["dim"])
    encoder = nn.Sequential(backbone, head).to(device)
    pretext = create_pretext(p, encoder, seed).to(device)
    batch_size = _batch_size(p["batch_size"], len(train.images))
    parameters = [param for param in list(encoder.parameters()) + list(pretext.parameters()) if param.requires_grad]
    optimizer, loop = sgd_and_loop(parameters, p, batch_size, len(train.images), run_dir, hooks)
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

    aug = data_cfg["augment"]
    for epoch in range(step // steps_per_epoch, p["epochs"]):
        encoder.train()
        order = epoch_order(len(train.images), seed, epoch)
        started, losses = time.monotonic(), []
        for position in range(step % steps_per_epoch, steps_per_epoch):
            images = train.images[order[position * batch_size:(position + 1) * batch_size]]
            view_a = augment(images, aug, data_cfg["image_size"], train.mean, train.std, step_generator(seed, step, 0)).to(device)
            view_b = augment(images, aug, data_cfg["image_size"], train.mean, train.std, step_generator(seed, step, 1)).to(device)
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

    net = {"arch": p["arch"], "width": p["width"], "small_images": p["small_images"],
           "in_chans": data_cfg["channels"], "dim": p["dim"], "method": p["method"]}
    save_atomic(model_file(run_dir, net, backbone, head), run_dir / MODEL)
    return {**evaluate_knn(backbone, train, test, config, device), **pixel_reference(train, test, config)}


def pixel_reference(train: ImageSet, test: ImageSet, config: dict[str, Any]) -> dict[str, float]:
    """k-NN on raw pixels with the same protocol: the floor a learned representation should clear."""
    knn = config["eval"]["knn"]
    flat = lambda data: normalize(data.images, data.mean, data.std).flatten(1)  # noqa: E731
    result = knn_accuracy(flat(train), train.labels, flat(test), test.labels, train.num_classes, k=knn["k"], tau=knn["tau"])
    return {"pixels_knn_top1": result["top1"], "pixels_knn_top5": result["top5"]}


# ---- SEED distillation (Fang et al. 2021, official seed/builder.py and main.py) -----------------

def load_own_model(path: Path, channels: int) -> tuple[nn.Module, nn.Module]:
    """A seedrun model.pt: the backbone by name, the head (any method's) sized from its tensors."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = state["seedrun"]
    backbone, _ = create_backbone(net["arch"], small_images=net["small_images"], in_chans=channels, width=net["width"])
    backbone.load_state_dict(state["backbone"])
    head = head_from_state_dict(state["head"])
    head.load_state_dict(state["head"])
    return backbone, head


def load_teacher(config: dict[str, Any], teacher_dir: Optional[Path]) -> tuple[nn.Module, nn.Module]:
    """The frozen teacher: a seedrun pre-training run's model, or an official checkpoint file."""
    channels = config["data"]["channels"]
    if teacher_dir is not None:
        return load_own_model(teacher_dir / MODEL, channels)
    from seedrun.checkpoints import load_teacher as load_official

    t = config["teacher"]
    backbone, head, _info = load_official(t["checkpoint"], t["arch"], width=t.get("width", 64),
                                          small_images=t.get("small_images", False), in_chans=channels)
    return backbone, head


def distill(config: dict[str, Any], run_dir: Path, hooks: Hooks, teacher_dir: Optional[Path],
            data_root: Optional[str] = None) -> dict[str, float]:
    """Distil a frozen teacher into the student with `distill.strategy` (SEED by default: the student matches
    softmax(z_T . [z_T; queue] / tau_T) with log_softmax(z_S . [z_T; queue] / tau_S))."""
    device = setup_torch(config)
    data_cfg, d, s = config["data"], config["distill"], config["student"]
    train, test = load(data_cfg, "train", data_root), load(data_cfg, "test", data_root)
    seed = int(config["seed"])

    teacher_backbone, teacher_head = load_teacher(config, teacher_dir)
    teacher = nn.Sequential(teacher_backbone, teacher_head).to(device).eval().requires_grad_(False)
    torch.manual_seed(seed)
    backbone, head, _ = network(s["arch"], s["width"], s["small_images"], data_cfg["channels"], s["dim"],
                                s.get("head_layers", 2))
    student = nn.Sequential(backbone, head).to(device)
    objective = create_objective(d, s["dim"], seed, student).to(device)
    queue = EmbeddingQueue(d["queue_size"], s["dim"], torch.Generator().manual_seed(seed)).to(device)
    # The appendix's small-patch distillation: extra small crops against a second queue of their own.
    small_patches = int(d.get("small_crops", 0))
    if small_patches and d["strategy"] != "seed":
        raise ValueError("distill.small_crops is SEED's small-patch variant: it needs distill.strategy=seed")
    small_queue = EmbeddingQueue(d["queue_size"], s["dim"], torch.Generator().manual_seed(seed + 2)).to(device)
    batch_size = _batch_size(d["batch_size"], len(train.images))
    parameters = list(student.parameters()) + list(objective.parameters())
    optimizer, loop = sgd_and_loop(parameters, d, batch_size, len(train.images), run_dir, hooks)
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
        set_rng_state(resumed["rng"])
        step = resumed["step"]
        hooks.log(f"resumed from step {step} (epoch {step // steps_per_epoch})")
    objective.prepare(lambda: F.normalize(features(teacher, train, device), dim=1))

    def state() -> dict[str, Any]:
        return {"student": student.state_dict(), "objective": objective.state_dict(),
                "objective_extra": objective.extra_state(), "optimizer": optimizer.state_dict(),
                "queue": queue.state_dict(), "small_queue": small_queue.state_dict(), "rng": rng_state(),
                "step": step, "epoch": step // steps_per_epoch}

    aug = data_cfg["augment"]
    for epoch in range(step // steps_per_epoch, d["epochs"]):
        student.train()
        order = epoch_order(len(train.images), seed, epoch)
        started, losses = time.monotonic(), []
        for position in range(step % steps_per_epoch, steps_per_epoch):
            indices = order[position * batch_size:(position + 1) * batch_size]
            images = train.images[indices]
            view = augment(images, aug, data_cfg["image_size"], train.mean, train.std, step_generator(seed, step)).to(device)
            another_view = lambda: augment(images, aug, data_cfg["image_size"], train.mean, train.std,  # noqa: E731
                                           step_generator(seed, step, 1)).to(device)
            loop.set_lr(optimizer, step)
            with autocast(config, device):
                with torch.no_grad():
                    z_teacher = F.normalize(teacher(view).float(), dim=1)
                z_student = F.normalize(student(view).float(), dim=1)
                loss = objective(z_student, z_teacher, queue.embeddings, indices, another_view)
                if small_patches:  # official main_small-patch.py: CE(large view) + mean CE(small views)
                    small_losses = []
                    for crop in range(small_patches):
                        small = augment(images, aug, data_cfg["image_size"], train.mean, train.std,
                                        step_generator(seed, step, 2 + crop), crop_scale=tuple(d["small_crop_scale"]),
                                        out_size=d["small_crop_size"]).to(device)
                        with torch.no_grad():
                            z_teacher_small = F.normalize(teacher(small).float(), dim=1)
                        z_student_small = F.normalize(student(small).float(), dim=1)
                        small_losses.append(seed_loss(z_student_small, z_teacher_small, small_queue.embeddings,
                                                      d["tau_student"], d["tau_teacher"]))
                    loss = loss + torch.stack(small_losses).mean()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            objective.after_step()
            queue.push(z_teacher)
            if small_patches:
                small_queue.push(z_teacher_small)
            losses.append(loss.item())
            step += 1
            loop.after_step(step, state)
        loop.end_epoch(epoch, step, losses, started, state)

    net = {"arch": s["arch"], "width": s["width"], "small_images": s["small_images"],
           "in_chans": data_cfg["channels"], "dim": s["dim"], "method": d["strategy"]}
    save_atomic(model_file(run_dir, net, backbone, head), run_dir / MODEL)
    return evaluate_knn(backbone, train, test, config, device)
