"""Budgets: how many preemptions, timeouts and failures a run may spend before it fails for good.

The counts live in run.provenance (`preemptions`, `timeouts`, `failures`; `progress_timeouts`: time limits
that ended an attempt which made progress, which spend nothing) with an `events` list;
the limits come from the launcher settings (config["launcher"], or the launcher recorded at submission).
"""

from __future__ import annotations

from typing import Any

from seedrun.store.folders import utcnow

#: Events kept in provenance["events"].
MAX_EVENTS = 50
DEFAULT_BUDGETS = {"max_preemptions": -1, "max_timeouts": 3, "max_failures": 0}


def budgets_of(launcher: dict[str, Any]) -> dict[str, int]:
    return {key: as_int(launcher.get(key), default) for key, default in DEFAULT_BUDGETS.items()}


def as_int(value: Any, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except (TypeError, ValueError):
        return default



def spends_budget(kind: str, progressed: bool) -> bool:
    """Whether an interruption counts against its budget. A time limit that ends an attempt which advanced
    the run (a checkpoint at a later step) spends nothing: a 200-epoch run under a 24-hour limit needs
    many attempts and must not fail after max_timeouts of them. Only a timeout whose attempt made no
    progress (stuck loading, a step longer than the limit) counts: that run would requeue forever.
    Preemptions count either way (the cluster's doing; max_preemptions is unlimited by default)."""
    return kind != "timeouts" or not progressed


def record_event(prov: dict[str, Any], attempt: int, kind: str, detail: str) -> None:
    events = list(prov.get("events") or [])
    events.append({"attempt": attempt, "event": kind, "detail": detail, "at": utcnow().isoformat(timespec="seconds")})
    prov["events"] = events[-MAX_EVENTS:]


