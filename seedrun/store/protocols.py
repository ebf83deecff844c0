"""Evaluation results per protocol: a `moco` and a `compress` linear probe of one run are two results,
not one overwritten by the other.

An evaluation run records its numbers under their plain names (linear_top1) on itself, and on the run
it evaluated under its protocol's names as well: `linear.moco.top1`, `linear.compress.top5`,
`transfer.moco.digits_top1`, `knn.k200.top1`, ... (protocol, the probe's recipe where it has one,
the metric without the protocol's prefix). Tables read the protocol they name (the paper's by
default: seedrun.tables.definitions), never whichever probe finished last.

No SQLAlchemy or torch here.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

#: The protocol each paper table reports, unless `seedrun table --protocol` says otherwise.
PAPER_PROTOCOL = {"linear": "linear.moco", "transfer": "transfer.moco"}


def protocol_key(config: Mapping[str, Any]) -> Optional[str]:
    """"linear.moco" for an evaluation run's config (protocol, then its recipe if it has one); None otherwise."""
    protocol = config.get("protocol")
    if not protocol:
        return None
    recipe = (config.get("settings") or {}).get("recipe")
    return f"{protocol}.{recipe}" if recipe else str(protocol)


def qualified(key: Optional[str], results: Mapping[str, Any]) -> dict[str, Any]:
    """`results` under their plain names and, with a protocol key, under the protocol's names too."""
    out = dict(results)
    if key:
        protocol = key.split(".")[0]
        for name, value in results.items():
            out[f"{key}.{name.removeprefix(protocol + '_')}"] = value
    return out
