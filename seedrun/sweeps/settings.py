"""A run's settings: the few config values that say which experiment it is, as one flat object.

Runs that agree on these are seeds of one experiment; paths, names and other bookkeeping in a
config never tell experiments apart. Tables group runs by them and `status` shows some of them.
They are stored next to the config (runs.settings, written when the run is recorded) because
reading 16 values out of 10,000 two-kilobyte configs costs more than the 0.3 s `seedrun table` may
take; from a 300-byte object it costs a few milliseconds, and SQLite can group runs by it.

No SQLAlchemy or torch here: the read path imports this.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

SETTING_KEYS = (
    "data.name",
    "distill.strategy", "distill.tau_teacher", "distill.tau_student", "distill.queue_size",
    "distill.lr", "distill.weight_decay", "distill.epochs",
    "teacher.arch", "teacher.method", "teacher.pretrain_epochs", "student.arch",
    "pretrain.method", "pretrain.arch", "pretrain.epochs", "pretrain.role",
)


def settings_of(config: Mapping[str, Any]) -> dict[str, Any]:
    """{dotted key: value} for every setting key the config has, in SETTING_KEYS order.

    The order is fixed so that equal settings serialise to equal JSON text, which SQL can group by.
    """
    settings: dict[str, Any] = {}
    for key in SETTING_KEYS:
        section, name = key.split(".")
        values = config.get(section)
        if isinstance(values, Mapping) and values.get(name) is not None:
            settings[key] = values[name]
    return settings


def settings_text(config: Mapping[str, Any]) -> str:
    """settings_of as the JSON text the database holds (json.dumps' defaults, as SQLAlchemy writes it)."""
    return json.dumps(settings_of(config))
