"""What both training recipes share: torch set-up, the learning-rate schedule (`lr_schedule`: official,
the SEED code's per-epoch warm-up + cosine, or per_step), the step bookkeeping
(periodic checkpoints, stop requests, an epoch's end, the curves of seedrun.training.curves) and the k-NN
evaluation at the end of training.

Hooks is how a recipe talks to the job that runs it (seedrun.job records what it is told); Interrupted
is raised between steps once a stop was requested and a checkpoint written.

Under several processes a step has one all-reduce the ranks agree through (`Loop.agree_step`, after the
loss): the loss, a stop request, a checkpoint due and a failure of any rank, together; every rank then saves,
stops or fails at the same step. A rank that fails between a step's last collective and the next step's
all-reduce (reading data, a forward without collectives, asking whether to stop) joins that all-reduce
saying so (`Loop.fail`), so the others raise PeerFailed at once rather than wait in a collective until
the process group's timeout; rank 0 then records the failing rank's own class (seedrun.job.ranks).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from seedrun.data.augment import normalize
from seedrun.evaluate.knn import knn_accuracy
from seedrun.training.checkpoints import save_checkpoint
from seedrun.training.curves import Curves, open_curves
from seedrun.training.distributed import SINGLE, PeerFailed


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


def training_dtype(config: dict[str, Any]) -> torch.dtype:
    """float64 under `precision: fp64`, float32 otherwise. fp64 is for the tests that compare process
    layouts (2 ranks against 1 process): summation order changes float32 results by ~1e-4 within 20
    steps, differently on different CPUs; float64 keeps such differences near 1e-12."""
    return torch.float64 if config.get("precision") == "fp64" else torch.float32


class InDtype(nn.Module):
    """A network fed its own dtype: evaluation passes float32 views to a network trained in float64."""

    def __init__(self, net: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.net, self.dtype = net, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.to(self.dtype))


def autocast(config: dict[str, Any], device: torch.device):
    """bf16 autocast on a GPU; fp32 on the CPU unless asked, since bf16 measured 13x slower on the
    2-core test machine (benchmarks/precision.py); `precision: bf16` forces it."""
    precision = config.get("precision", "auto")
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)


# `distill.lr_schedule` / `pretrain.lr_schedule`; absent means official, so recipes without the key keep
# their hash (seedrun.sweeps.spec) and get the official schedule.
LR_SCHEDULES = ("official", "per_step")


def official_lr(epoch: int, epochs: int, warmup_epochs: float, lr: float, peak_lr: float) -> float:
    """The official SEED schedule (tools/utils.py adjust_learning_rate, called once an epoch by main.py),
    for epoch `epoch` (0-based). Warm-up: lr + (peak_lr - lr) / warmup_epochs x epoch, i.e. from the
    per-256 `lr` (not from 0) towards peak_lr = lr x batch/256, which it never quite reaches (at batch 256
    it is flat, below 256 it comes down). Afterwards peak_lr x 0.5 (1 + cos(pi x epoch / epochs)): the
    cosine counts from epoch 0, not from the warm-up's end, so it ends at one epoch's step above 0.
    MoCo-v2's main_moco.py is this with no warm-up."""
    if epoch < warmup_epochs:
        return lr + (peak_lr - lr) / warmup_epochs * epoch
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """The per_step schedule: linear warm-up from base_lr / warmup_steps to base_lr over warmup_steps,
    then cosine from the warm-up's end to 0, a new value every step (seedrun's schedule before the
    official one became the default)."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def embed(backbone: nn.Module, data, device: torch.device, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and labels of a split's evaluation views, a chunk at a time, whichever loader reads it
    (seedrun.data.loader): never the whole image set as float."""
    backbone.eval()
    out, labels = [], []
    for images, chunk_labels in data.chunks(batch_size):
        x = normalize(images, data.mean, data.std).to(device)
        out.append(backbone(x).float().cpu())
        labels.append(chunk_labels)
    return torch.cat(out), torch.cat(labels)


def features(backbone: nn.Module, data, device: torch.device, batch_size: int = 512) -> torch.Tensor:
    return embed(backbone, data, device, batch_size)[0]


def evaluate_knn(backbone: nn.Module, train, test, config: dict[str, Any], device) -> dict[str, float]:
    knn = config["eval"]["knn"]
    (train_f, train_labels), (test_f, test_labels) = embed(backbone, train, device), embed(backbone, test, device)
    result = knn_accuracy(train_f.to(device), train_labels.to(device), test_f.to(device), test_labels.to(device),
                          train.num_classes, k=knn["k"], tau=knn["tau"])
    from seedrun.evaluate.sharded_features import skipped_images  # unreadable images left out, counted

    return {"knn_top1": result["top1"], "knn_top5": result["top5"],
            **skipped_images("knn", (len(train), len(train_f)), (len(test), len(test_f)))}


class Loop:
    """Step bookkeeping shared by both recipes: schedule, periodic checkpoints, stop requests."""

    def __init__(self, run_dir: Path, hooks: Hooks, steps_per_epoch: int, epochs: int, warmup_epochs: float,
                 base_lr: float, checkpoint_every_steps: int, checkpoint_every_minutes: float = 0,
                 schedule: str = "official", start_lr: Optional[float] = None):
        if schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule: expected one of {', '.join(LR_SCHEDULES)}, got {schedule!r}")
        self.run_dir, self.hooks = run_dir, hooks
        self.steps_per_epoch, self.epochs = steps_per_epoch, epochs
        self.total_steps = steps_per_epoch * epochs
        self.warmup_epochs = warmup_epochs
        self.warmup_steps = int(round(warmup_epochs * steps_per_epoch))
        # base_lr is the peak (lr x batch/256); the official warm-up starts from the per-256 lr
        self.base_lr, self.schedule = base_lr, schedule
        self.start_lr = base_lr if start_lr is None else start_lr
        self.every_steps = checkpoint_every_steps
        self.every_seconds = 60 * checkpoint_every_minutes
        self.last_save = time.monotonic()
        # several processes (seedrun.training.distributed.parallel_model): sync is the step's all-reduce,
        # and save() gathers what each rank needs while global rank 0 writes
        self.sync: Callable[..., tuple[float, bool, bool, bool]] = SINGLE.sync
        self.agreed = (False, False)  # (stop, checkpoint due) of the current step, as every rank agreed
        self.agreed_step = 0  # the step those are of
        # open between a step's last collective and the next step's all-reduce: a failure here can be told
        self.window = True
        self.save: Callable[[Callable[[], dict[str, Any]]], None] = lambda state: save_checkpoint(state(), self.run_dir)
        self.curves = Curves([], steps_per_epoch, 0)  # times steps, writes nothing until open_curves()

    def open_curves(self, config: dict[str, Any], start_step: int, images_per_step: int, is_main: bool) -> Curves:
        """TensorBoard (and W&B) curves from `start_step` on, the step the run starts or resumes at; the
        recipe closes them when training ends, however it ends."""
        self.curves = open_curves(config, self.run_dir, start_step, self.steps_per_epoch, images_per_step, is_main,
                                  self.hooks.log)
        return self.curves

    def timed(self, batches):
        """An epoch's batches, timing the waits for data (seedrun.training.curves)."""
        return self.curves.timed(batches)

    def lr(self, step: int) -> float:
        """The learning rate of step `step` (0-based, counted over the whole run) under the schedule."""
        if self.schedule == "per_step":
            return lr_at(step, self.total_steps, self.warmup_steps, self.base_lr)
        return official_lr(step // self.steps_per_epoch, self.epochs, self.warmup_epochs, self.start_lr, self.base_lr)

    def set_lr(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        lr = self.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr

    def record_step(self, step: int, loss: float) -> None:
        """Step `step` (1-based, over the whole run) ended with this loss: a point of the curves when due.
        Called before after_step(), which may stop the run at this step."""
        self.curves.step(step, loss, self.lr(step - 1))

    def agree_step(self, step: int, loss: Optional[torch.Tensor]) -> float:
        """Step `step` (1-based) computed `loss`: the step's one all-reduce, of the loss, whether this rank is
        asked to stop, whether a checkpoint is due, and whether it failed asking. Returns the loss averaged
        over ranks; raises where any rank failed, or on a non-finite loss (on every rank at this step).
        A caller without a loss (after_step without agree) agrees on the flags alone."""
        stop = due = False
        failure: Optional[BaseException] = None
        try:
            stop = self.hooks.should_stop()
            due = bool((self.every_steps and step % self.every_steps == 0) or (
                self.every_seconds and time.monotonic() - self.last_save > self.every_seconds))
        except Exception as exc:  # e.g. rank 0's lease lost: the others must stop here too
            failure = exc
        value, stop, due, failed = self.sync(loss, stop, due, failure is not None)
        self.window = False  # the step's collectives follow (DDP's backward, gathers, a checkpoint)
        if failure is not None:
            raise failure
        if failed:
            raise PeerFailed(f"another rank failed before the all-reduce of step {step}")
        if loss is not None and not math.isfinite(value):
            raise FloatingPointError(f"loss is {value} at step {step - 1}")
        self.agreed, self.agreed_step = (stop, due), step
        return value

    def _agreed(self, step: int) -> tuple[bool, bool]:
        if self.agreed_step != step:  # the recipe did not agree at this step: the flags alone
            self.agree_step(step, None)
        return self.agreed

    def collectives_ahead(self) -> None:
        """The recipe's forward gathers across ranks (shuffle BN, sync_bn): a failure from here to the step's
        all-reduce cannot be told through it, since the others wait in another collective."""
        self.window = False

    def fail(self, exc: BaseException) -> None:
        """`exc` leaves the recipe's loop. Where this rank is between a step's last collective and the
        next all-reduce, the others are heading for that all-reduce: join it saying it failed, so they
        stop at once. Elsewhere they learn it from the broken collective or its timeout."""
        if not self.window or isinstance(exc, (PeerFailed, Interrupted)):
            return
        self.window = False
        try:
            self.sync(None, False, False, True)
        except Exception:  # the others are gone already: nothing left to tell
            pass

    def after_step(self, step: int, state: Callable[[], dict[str, Any]]) -> None:
        """Checkpoint when due or asked to stop (as agreed at this step); raise Interrupted in the latter case."""
        if step % self.steps_per_epoch == 0:
            return  # end_epoch() saves, records, then honours a stop request
        stop, due = self._agreed(step)
        if stop or due:
            self.save(state)
            self.curves.flush()  # the curves up to the checkpoint: a resumed run purges only what follows it
            self.last_save = time.monotonic()
        self.window = True
        if stop:
            raise Interrupted(f"stopped at step {step}")

    def end_epoch(self, epoch: int, step: int, losses: list[float], started: float,
                  state: Callable[[], dict[str, Any]]) -> None:
        """Checkpoint, record the epoch's metrics, then stop here if the job was asked to."""
        stop = self._agreed(step)[0]
        metrics = {"loss": sum(losses) / max(1, len(losses)), "epoch_seconds": time.monotonic() - started,
                   **self.curves.epoch_rates()}  # images/s and data wait: what `status` and `plot` can show
        self.hooks.log(f"epoch {epoch + 1}/{self.epochs} loss {metrics['loss']:.4f} ({metrics['epoch_seconds']:.0f}s)")
        self.save(state)
        self.last_save = time.monotonic()
        self.window = True  # rank 0's records below are its own work: a failure there is told at the next step
        self.hooks.epoch_end(epoch + 1, metrics)
        self.curves.epoch(step, metrics)
        if stop:  # agreed at the epoch's last step
            raise Interrupted(f"stopped at step {step}")


def sgd_and_loop(parameters, settings: dict[str, Any], batch_size: int, n_images: int, run_dir: Path,
                 hooks: Hooks) -> tuple[torch.optim.SGD, Loop]:
    """SGD with momentum and weight decay at lr x batch/256, under a warm-up + cosine Loop (both recipes):
    `lr_schedule` official (the default: per epoch, as the official SEED code) or per_step."""
    base_lr = settings["lr"] * batch_size / 256
    optimizer = torch.optim.SGD(parameters, lr=base_lr, momentum=settings["momentum"], weight_decay=settings["weight_decay"])
    loop = Loop(run_dir, hooks, n_images // batch_size, settings["epochs"], settings.get("warmup_epochs", 0), base_lr,
                settings.get("checkpoint_every_steps", 500), settings.get("checkpoint_every_minutes", 0),
                schedule=settings.get("lr_schedule") or "official", start_lr=settings["lr"])
    return optimizer, loop


def batch_size_for(requested: int, n: int) -> int:
    """The batch a recipe trains with: the requested one, or the whole set when it is smaller."""
    return min(requested, n)


