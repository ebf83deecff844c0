"""Evaluation results per protocol: a `moco` and a `compress` linear probe of one run are two results,
not one overwritten by the other.

An evaluation run records its numbers under their plain names (linear_top1) on itself, and on the run
it evaluated under its protocol's names: `linear.moco.top1`, `linear.compress.top5`,
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
    """`results` under the protocol's names (under their plain names where there is no protocol key)."""
    if not key:
        return dict(results)
    protocol = key.split(".")[0]
    return {f"{key}.{name.removeprefix(protocol + '_')}": value for name, value in results.items()}


def candidates(metric: str, recipe: Optional[str] = None) -> list[str]:
    """The names a table column's metric is read under, first found first: the protocol's (the paper's
    recipe unless `recipe` is given), then the plain name (runs recorded before results were kept per
    protocol, or that recorded the metric themselves)."""
    family = metric.split("_")[0]
    if family not in PAPER_PROTOCOL:
        return [metric]
    key = f"{family}.{recipe}" if recipe else PAPER_PROTOCOL[family]
    return [f"{key}.{metric.removeprefix(family + '_')}", metric]


def protocol_note(metrics: Any, recipe: Optional[str] = None) -> Optional[str]:
    """What a table says of the protocol its linear and transfer columns show, if it has any."""
    families = sorted({metric.split("_")[0] for metric in metrics} & set(PAPER_PROTOCOL))
    if not families:
        return None
    chosen = recipe or PAPER_PROTOCOL["linear"].split(".")[1]
    paper = " (the paper's)" if chosen == PAPER_PROTOCOL["linear"].split(".")[1] else ""
    return f"{' and '.join(families)} columns: the {chosen} probe protocol{paper}; `--protocol` chooses another."
