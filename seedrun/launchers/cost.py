"""What a sweep will cost, before it is submitted: device-hours estimated from completed runs alike.

A run to run is priced only from completed runs of the same workload: the same stage, network (and,
for a distillation, the same teacher, whose forward pass is most of a step), data set and training
subset, image size and device kind (GPU or CPU). Their recorded epochs (epoch_seconds times the devices
they trained on: device-seconds an epoch, the median over the comparable runs) times the run's epochs
give its hours: GPU-hours on GPUs, CPU process-hours on CPUs, whatever number of devices it will hold
(assuming it scales with them, as data-parallel training nearly does). A run with no comparable
completed run is "unknown", never a guess.

No torch, no SQLAlchemy: the dry run reads the database through the read path's plain SQL.
"""

from __future__ import annotations

import statistics
from contextlib import closing
from typing import Any, NamedTuple, Optional

from seedrun.store.records import connect, parse_json


class Estimate(NamedTuple):
    hours: dict[str, float]  # {"GPU-hours" | "CPU-hours": total of the runs that could be priced}
    priced: int
    unknown: int

    def text(self) -> str:
        known = ", ".join(f"{hours:,.1f} {unit}" for unit, hours in sorted(self.hours.items()))
        if not self.priced:
            return f"cost: unknown ({self.unknown} runs: no completed run alike has been recorded)"
        return (f"cost: about {known} for {self.priced} runs, from completed runs alike"
                + (f"; {self.unknown} unknown (nothing alike recorded)" if self.unknown else ""))


def _device_kind(launcher: dict[str, Any]) -> str:
    if str(launcher.get("device") or "").startswith("cuda") or int(launcher.get("gpus_per_node") or 0) > 0:
        return "gpu"
    return "cpu"


def workload(stage: str, config: dict[str, Any], kind: str) -> Optional[tuple]:
    """What a run's time per epoch depends on; None for a stage that is not priced (evaluations)."""
    data = config.get("data") or {}
    common = (stage, data.get("name"), data.get("train_subset"), data.get("image_size"), kind)
    if stage == "pretrain":
        p = config.get("pretrain") or {}
        return common + (p.get("arch"), p.get("width"), p.get("method"))
    if stage == "distill":
        s, t = config.get("student") or {}, config.get("teacher") or {}
        return common + (s.get("arch"), s.get("width"), t.get("arch"), t.get("width"))
    return None


def _epochs(stage: str, config: dict[str, Any]) -> int:
    return int((config.get("pretrain" if stage == "pretrain" else "distill") or {}).get("epochs") or 0)


def _recorded_devices(provenance: dict[str, Any]) -> tuple[str, int]:
    """(device kind, devices) a completed run trained on, as its job recorded them."""
    gpus = int(provenance.get("gpus_used") or 0)
    return ("gpu", gpus) if gpus > 0 else ("cpu", max(1, int(provenance.get("training_ranks") or 1)))


def device_seconds(db_url: str, wanted: set[tuple]) -> dict[tuple, float]:
    """{workload: median device-seconds an epoch} over the completed runs of the wanted workloads."""
    connection, _ = connect(db_url)
    seconds: dict[tuple, list[float]] = {}
    with closing(connection):
        cursor = connection.cursor()
        cursor.execute("SELECT stage, config, provenance, summary FROM runs "
                       "WHERE state = 'completed' AND stage IN ('pretrain', 'distill')")
        for stage, config, provenance, summary in cursor.fetchall():
            summary = parse_json(summary) or {}
            if not summary.get("epoch_seconds"):
                continue
            kind, devices = _recorded_devices(parse_json(provenance) or {})
            key = workload(stage, parse_json(config) or {}, kind)
            if key in wanted:
                seconds.setdefault(key, []).append(float(summary["epoch_seconds"]) * devices)
    return {key: statistics.median(values) for key, values in seconds.items()}


def estimate(db_url: Optional[str], runs: list) -> Estimate:
    """The device-hours of `runs` (RunSpecs to run) at the pace of completed runs alike."""
    keyed = []
    for run in runs:
        launcher = run.config.get("launcher") or {}
        kind = _device_kind({**launcher, "device": run.config.get("device")})
        keyed.append((run, workload(run.stage, run.config, kind), kind))
    wanted = {key for _, key, _ in keyed if key is not None}
    paces = device_seconds(db_url, wanted) if db_url and wanted else {}
    hours: dict[str, float] = {}
    priced = unknown = 0
    for run, key, kind in keyed:
        pace = paces.get(key)
        if pace is None:
            unknown += 1
            continue
        unit = "GPU-hours" if kind == "gpu" else "CPU-hours"
        hours[unit] = hours.get(unit, 0.0) + _epochs(run.stage, run.config) * pace / 3600
        priced += 1
    return Estimate(hours, priced, unknown)
