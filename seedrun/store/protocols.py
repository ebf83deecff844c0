"""Evaluation results per protocol: a `moco` and a `cached` linear probe of one run are two results,
not one overwritten by the other.

An evaluation run records its numbers under their plain names (linear_top1) on itself, and on the run
it evaluated under its protocol's names: `linear.moco.top1`, `linear.cached.top1`,
`linear.compress.top5`, `transfer.moco.digits_top1`, `knn.k200.top1`, ... (protocol, the probe's
recipe where it has one, the metric without the protocol's prefix). Tables read the protocol they
name (the paper's by default: PAPER_PROTOCOL), never whichever probe finished last, and compare with
the paper's published numbers only when they show the paper's protocol.

The linear probe recipes (seedrun.evaluate.linear):

    moco      the published SEED/MoCo protocol: fc trained on RandomResizedCrop + flip views of the frozen
              backbone, 100 epochs, SGD lr 30 x B/256, x0.1 at 60 and 80 (the paper's)
    cached    the same hyper-parameters on cached features of un-augmented images (fast, not the paper's)
    compress  CompRess/SimReg's probe on cached, L2-normalised, standardised features (not the paper's)

Before the protocols had names, `recipe: moco` trained on cached features. Such an evaluation run's
config has no `crop_scale` in its settings (the augmented protocol always has one), so
`linear_recipe` reads it as `cached`, and every result recorded from it from now on is filed under
`linear.cached.*`.

No SQLAlchemy or torch here.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

#: The protocol each paper table reports, unless `seedrun table --protocol` says otherwise.
PAPER_PROTOCOL = {"linear": "linear.moco", "transfer": "transfer.moco"}

#: The linear probe recipes, and what a table says of each.
LINEAR_RECIPES = {
    "moco": "RandomResizedCrop + flip views of the frozen backbone, SGD lr 30 x B/256, 100 epochs",
    "cached": "MoCo's hyper-parameters on cached features of un-augmented images",
    "compress": "CompRess's probe on cached, L2-normalised, standardised features",
}


def linear_recipe(settings: Mapping[str, Any]) -> Optional[str]:
    """The linear probe protocol an evaluation's settings name: `cached` for `recipe: moco` configured
    before the augmented protocol existed (no `crop_scale`: see the module doc), else the recipe."""
    recipe = settings.get("recipe")
    if recipe == "moco" and "crop_scale" not in settings:
        return "cached"
    return recipe


def protocol_key(config: Mapping[str, Any]) -> Optional[str]:
    """"linear.moco" for an evaluation run's config (protocol, then its recipe if it has one); None otherwise."""
    protocol = config.get("protocol")
    if not protocol:
        return None
    settings = config.get("settings") or {}
    recipe = linear_recipe(settings) if protocol == "linear" else settings.get("recipe")
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
    name = metric.removeprefix(family + "_")
    if family == "transfer" and recipe == "cached":
        # transfer probes always train on cached features: their `moco` recipe is MoCo's hyper-parameters
        # on cached features, the cached protocol under its older name
        return [f"{key}.{name}", f"transfer.moco.{name}", metric]
    return [f"{key}.{name}", metric]


def paper_recipe() -> str:
    return PAPER_PROTOCOL["linear"].split(".")[1]


def is_paper_protocol(recipe: Optional[str]) -> bool:
    """Whether a table read with `--protocol recipe` shows the protocol the paper published numbers of:
    only then is a Δ against the paper's linear and transfer numbers a comparison."""
    return recipe is None or recipe == paper_recipe()


def probe_family(metric: str) -> Optional[str]:
    """"linear" or "transfer" for a metric a probe protocol produces; None for the others (k-NN)."""
    family = metric.split("_")[0]
    return family if family in PAPER_PROTOCOL else None


def protocol_note(metrics: Any, recipe: Optional[str] = None) -> Optional[str]:
    """What a table says of the protocol its linear and transfer columns show, if it has any."""
    families = sorted({metric.split("_")[0] for metric in metrics} & set(PAPER_PROTOCOL))
    if not families:
        return None
    chosen = recipe or paper_recipe()
    what = LINEAR_RECIPES.get(chosen)
    columns = f"{' and '.join(families)} columns: the {chosen} probe protocol"
    if is_paper_protocol(recipe):
        return f"{columns} (the paper's), {what}; `--protocol` chooses another."
    return (f"{columns}; not the paper's{f' ({what})' if what else ''}: not comparable with the paper's published "
            f"{paper_recipe()}-probe numbers, so no Δ against them.")

__all__ = ["LINEAR_RECIPES", "PAPER_PROTOCOL", "candidates", "is_paper_protocol", "linear_recipe",
           "paper_recipe", "probe_family", "protocol_key", "protocol_note", "qualified"]
