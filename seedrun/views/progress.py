"""Live progress of the runs that are training, for `seedrun status`: epoch of epochs, images a second
and when each should end, from what their last epochs recorded (metrics.jsonl's images_per_s and
epoch_seconds, in the run's summary once its folder is brought in). No torch, one small query.
"""

from __future__ import annotations

from contextlib import closing
from typing import Any, Optional

from seedrun.store.records import connect, parse_json


def eta_seconds(epoch: int, epochs: Optional[int], epoch_seconds: Optional[float]) -> Optional[float]:
    """What the remaining epochs take at the last epoch's pace; None before an epoch ended."""
    if not epochs or not epoch_seconds or epoch >= epochs:
        return None
    return (epochs - epoch) * float(epoch_seconds)


def duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{int(round(seconds))}s"
    minutes = int(round(seconds / 60))
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h" if days else f"{hours}h{minutes:02d}m" if hours else f"{minutes}m"


def running_progress(db_url: str, shown: Optional[set[str]] = None) -> list[tuple[str, str, str, str]]:
    """(run, epoch/epochs, images/s, ETA) of each running run (only those whose 12-digit hash is in
    `shown`, if given), as text."""
    connection, _ = connect(db_url)
    with closing(connection):
        cursor = connection.cursor()
        cursor.execute("SELECT hash, stage, epoch, settings, summary FROM runs WHERE state = 'running' ORDER BY id")
        rows = cursor.fetchall()
    lines = []
    for run_hash, stage, epoch, settings, summary in rows:
        if shown is not None and run_hash[:12] not in shown:
            continue
        settings: dict[str, Any] = parse_json(settings) or {}
        summary = parse_json(summary) or {}
        epochs = settings.get("pretrain.epochs" if stage == "pretrain" else "distill.epochs")
        speed = summary.get("images_per_s")
        lines.append((run_hash[:12], f"{epoch}/{epochs}" if epochs else str(epoch),
                      f"{speed:.0f} images/s" if speed else "-",
                      duration(eta_seconds(epoch or 0, epochs, summary.get("epoch_seconds")))))
    return lines


def hours_by_sweep(db_url: str, sweep: Optional[str] = None) -> dict[str, dict[str, float]]:
    """{sweep: {"gpu" | "cpu": device-hours its runs used}} (runs in no sweep under ""): GPU-hours of the
    GPUs a run trained on, or its processes' wall hours on CPUs, as its jobs recorded them. Summed from
    the provenance: where SQLite keeps them in narrow columns (migration 0005), status reads them in its
    listing's own query instead (seedrun.views.status)."""
    connection, mark = connect(db_url)
    totals: dict[str, dict[str, float]] = {}
    with closing(connection):
        cursor = connection.cursor()
        cursor.execute("SELECT coalesce(s.name, ''), r.provenance FROM runs r LEFT JOIN sweep_runs sr ON sr.run_id = r.id "
                       "LEFT JOIN sweeps s ON s.id = sr.sweep_id" + (f" WHERE s.name = {mark}" if sweep else ""),
                       (sweep,) if sweep else ())
        rows = [(name, *_used(parse_json(provenance) or {})) for name, provenance in cursor.fetchall()]
    for name, kind, hours in rows:
        if hours:
            per_kind = totals.setdefault(name, {})
            per_kind[kind] = per_kind.get(kind, 0.0) + float(hours)
    return totals


def _used(provenance: dict[str, Any]) -> tuple[str, Optional[float]]:
    """What the SQLite columns hold (migration 0004), from a provenance read in Python."""
    if (provenance.get("gpus_used") or 0) > 0:
        return "gpu", provenance.get("gpu_hours")
    wall = provenance.get("wall_hours")
    return "cpu", None if wall is None else wall * (provenance.get("training_ranks") or 1)


def hours_text(totals: dict[str, dict[str, float]]) -> list[str]:
    units = {"gpu": "GPU-hours", "cpu": "CPU-hours"}
    return [f"  {name or '(no sweep)'}: " + ", ".join(f"{hours:,.1f} {units[kind]}" for kind, hours in sorted(per.items()))
            for name, per in sorted(totals.items())]
