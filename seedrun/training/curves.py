"""Training curves as TensorBoard event files in the run's folder (and in W&B when asked), written by
global rank 0 while the run trains.

What a run's folder then shows to `tensorboard --logdir $SEEDRUN_HOME/runs`:

    train/loss, train/lr                 every LOG_EVERY_STEPS steps (at most POINTS_PER_EPOCH an epoch)
                                         and at each epoch's end: the loss averaged over the steps since
                                         the last point, the learning rate
    train/images_per_s                   global images (every rank's) per second of those steps
    train/data_wait_fraction             the part of those steps' time spent waiting for the next batch
    epoch/<metric>                       what the epoch recorded (metrics.jsonl): mean loss, seconds, ...
    eval/<metric>                        the run's evaluation at the end of training (k-NN top-1, ...)
    the TEXT tab's `run` and the HPARAMS tab: which run it is (setting and seed), as the config says

The x axis is the global step, counted over the whole run. A resumed run (a requeue, a retry, a
preemption) restarts from its checkpoint's step S: the new event file starts with purge_step S + 1,
so TensorBoard hides whatever an earlier attempt logged past the checkpoint and the curve carries on
with no repeated or backwards step. Points are flushed at every checkpoint, so nothing the checkpoint
covers is lost with a killed process.

Which loggers: SEEDRUN_LOGGERS, a comma-separated list (tensorboard by default; `tensorboard,wandb` adds
W&B, seedrun.training.wandb_run). An environment variable, not a config key: how a run is watched
must not change its hash, and the job inherits it from the shell that runs or submits the sweep.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Protocol

from seedrun.sweeps.settings import settings_of

#: a point of the train/ curves every this many steps at least (and at every epoch's end), and at most
#: POINTS_PER_EPOCH points an epoch: a 5,000-step ImageNet epoch gives 100 (20,000 over 200 epochs, a few
#: MB of events a tag that TensorBoard loads in seconds), a 39-step Fashion-MNIST epoch 4, a 10-step test one 1.
LOG_EVERY_STEPS = 10
POINTS_PER_EPOCH = 100


class Writer(Protocol):
    def scalars(self, step: int, values: dict[str, float]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


def loggers() -> list[str]:
    names = [name.strip().lower() for name in os.environ.get("SEEDRUN_LOGGERS", "tensorboard").split(",")]
    return [name for name in names if name]


def run_label(config: dict[str, Any]) -> str:
    """Which run this is, in a line: its sweep where the config names one, its setting and its seed."""
    sweep = f"{config['sweep']}: " if config.get("sweep") else ""
    if "pretrain" in config:
        p = config["pretrain"]
        return (f"{sweep}{p.get('role', 'pretrain')} {p.get('method')} {p.get('arch')} width {p.get('width')}, "
                f"{p.get('epochs')} epochs, seed {p.get('seed')}")
    d, s, t = config.get("distill", {}), config.get("student", {}), config.get("teacher", {})
    return (f"{sweep}distill ({d.get('strategy', 'seed')}) {t.get('arch')} -> {s.get('arch')} width {s.get('width')}, "
            f"tau_T {d.get('tau_teacher')}, {d.get('epochs')} epochs, seed {config.get('seed')}")


class TensorBoardWriter:
    """One event file per attempt in the run's folder (TensorBoard reads them all as one run)."""

    def __init__(self, run_dir: Path, start_step: int, label: str, config: dict[str, Any]):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        # purge_step: events an earlier attempt wrote past the checkpoint this attempt resumes from are
        # hidden (TensorBoard drops data at steps >= purge_step seen before this file's start marker)
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=start_step + 1, flush_secs=60)
        self.writer.add_text("run", label, global_step=start_step)
        settings = {key: value if isinstance(value, (int, float, str, bool)) else str(value)
                    for key, value in settings_of(config).items()}
        seed = config["pretrain"].get("seed") if "pretrain" in config else config.get("seed")
        if seed is not None:
            settings["seed"] = seed
        # the HPARAMS tab's columns, in this run's own event file (SummaryWriter.add_hparams would make a
        # second run in a subfolder)
        for summary in hparams(settings, {"eval/knn_top1": None}):
            self.writer.file_writer.add_summary(summary)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, global_step=step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Curves:
    """Times the steps and sends points to the writers (none on ranks other than 0: they only time).

    A writer that fails is dropped with one logged line and the run trains on: curves are for watching,
    never worth a run. That happens: under `scontrol requeue` Slurm sends SIGTERM to every process of the
    job, W&B's own service process included, so its connection is gone before the step boundary at which
    the run checkpoints and stops.
    """

    def __init__(self, writers: list[Writer], steps_per_epoch: int, images_per_step: int,
                 log: Callable[[str], None] = print):
        self.writers, self.steps_per_epoch, self.images_per_step = writers, steps_per_epoch, images_per_step
        self.log = log
        self.every = max(LOG_EVERY_STEPS, steps_per_epoch // POINTS_PER_EPOCH)
        self._interval = _Interval()
        self._epoch = _Interval()

    def timed(self, batches: Iterable) -> Iterator:
        """The batches of an epoch, with the time spent waiting for each counted as data wait. Time
        between epochs (the checkpoint, the record) counts neither as a step nor as a wait."""
        self._interval.restart()
        self._epoch.restart()
        iterator = iter(batches)
        while True:
            asked = time.monotonic()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            waited = time.monotonic() - asked
            self._interval.wait += waited
            self._epoch.wait += waited
            yield batch

    def step(self, step: int, loss: float, lr: float) -> None:
        """After step `step` (1-based, over the whole run) was taken with this loss and learning rate."""
        self._interval.add(loss)
        self._epoch.add(loss)
        if step % self.every and step % self.steps_per_epoch:
            return
        self._send(step, {"train/loss": self._interval.mean_loss(), "train/lr": lr,
                          **self._interval.rates(self.images_per_step, "train/")})
        self._interval.restart()

    def epoch_rates(self) -> dict[str, float]:
        """images_per_s and data_wait_fraction of the epoch's steps, for its metrics.jsonl line."""
        return self._epoch.rates(self.images_per_step)

    def epoch(self, step: int, metrics: dict[str, float]) -> None:
        self._send(step, {f"epoch/{name}": value for name, value in metrics.items()})
        self.flush()

    def results(self, step: int, metrics: dict[str, float]) -> None:
        self._send(step, {f"eval/{name}": value for name, value in metrics.items()
                          if isinstance(value, (int, float))})

    def flush(self) -> None:
        self._each(lambda writer: writer.flush())

    def close(self) -> None:
        self._each(lambda writer: writer.close())
        self.writers = []

    def _send(self, step: int, values: dict[str, float]) -> None:
        self._each(lambda writer: writer.scalars(step, values))

    def _each(self, call: Callable[[Writer], None]) -> None:
        for writer in list(self.writers):
            try:
                call(writer)
            except Exception as exc:  # noqa: BLE001 - any failure of a logger: see the class's docstring
                self.writers.remove(writer)
                self.log(f"{type(writer).__name__} stopped for this attempt: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: " + (str(exc).strip().splitlines() or [""])[0][:200]


class _Interval:
    """Steps, their summed loss and data wait since a restart."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self.started, self.steps, self.loss, self.wait = time.monotonic(), 0, 0.0, 0.0

    def add(self, loss: float) -> None:
        self.steps += 1
        self.loss += loss

    def mean_loss(self) -> float:
        return self.loss / max(1, self.steps)

    def rates(self, images_per_step: int, prefix: str = "") -> dict[str, float]:
        seconds = max(time.monotonic() - self.started, 1e-9)
        return {f"{prefix}images_per_s": self.steps * images_per_step / seconds,
                f"{prefix}data_wait_fraction": min(1.0, self.wait / seconds)}


def open_curves(config: dict[str, Any], run_dir: Path, start_step: int, steps_per_epoch: int, images_per_step: int,
                is_main: bool, log: Callable[[str], None] = print) -> Curves:
    """The curves of a run that (re)starts at `start_step`: writers on global rank 0 only. A writer that
    cannot open (W&B online with a bad key, say) is left out with one logged line, as Curves drops one
    that fails later."""
    writers: list[Writer] = []
    if is_main:
        wanted = loggers()
        label = run_label(config)
        for name in wanted:
            try:
                writer = _open_writer(name, run_dir, start_step, label, config, log)
            except Exception as exc:  # noqa: BLE001 - whatever a logger raises, the run trains without it
                log(f"{name} curves not written this attempt: {_first_line(exc)}")
                continue
            if writer is not None:
                writers.append(writer)
    return Curves(writers, steps_per_epoch, images_per_step, log)


def _open_writer(name: str, run_dir: Path, start_step: int, label: str, config: dict[str, Any],
                 log: Callable[[str], None]) -> Optional[Writer]:
    if name == "tensorboard":
        return TensorBoardWriter(run_dir, start_step, label, config)
    if name == "wandb":
        from seedrun.training.wandb_run import WandbWriter

        return WandbWriter.open(run_dir, label, config, log)
    log(f"SEEDRUN_LOGGERS: {name} ignored (known: tensorboard, wandb)")
    return None
