"""The distillation strategies the SEED paper compares, by name; importing this module does not import torch.

Each entry names the pure loss function and the nn.Module wrapping it as "module:attribute" paths,
resolved only by loss_for() / loss_module_for(), so the CLI can list strategies cheaply.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Strategy:
    name: str
    description: str
    loss: str  # "module:function"
    module: str  # "module:nn.Module class"


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in [
        Strategy(
            "seed",
            "SEED: soft cross-entropy between teacher and student similarities over [z_T; queue]",
            "seedrun.losses.seed:seed_loss",
            "seedrun.losses.seed:SEEDLoss",
        ),
        Strategy(
            "binary_contrastive",
            "InfoNCE: student query, same image's teacher embedding positive, queue negatives",
            "seedrun.losses.binary_contrastive:binary_contrastive_loss",
            "seedrun.losses.binary_contrastive:BinaryContrastiveLoss",
        ),
        Strategy(
            "l2",
            "squared l2 distance between normalised student and teacher embeddings",
            "seedrun.losses.l2:l2_loss",
            "seedrun.losses.l2:L2Loss",
        ),
        Strategy(
            "kmeans",
            "student classifies k-means pseudo-labels of the teacher's training-set features",
            "seedrun.losses.kmeans:kmeans_loss",
            "seedrun.losses.kmeans:KMeansLoss",
        ),
        Strategy(
            "online_clustering",
            "student predicts the teacher's Sinkhorn assignment to learnable prototypes",
            "seedrun.losses.online_clustering:online_clustering_loss",
            "seedrun.losses.online_clustering:OnlineClusteringLoss",
        ),
        Strategy(
            "seed_mocov2",
            "SEED loss plus the student's own two-view MoCo-v2 InfoNCE loss",
            "seedrun.losses.seed_mocov2:seed_mocov2_loss",
            "seedrun.losses.seed_mocov2:SEEDMoCoV2Loss",
        ),
    ]
}


def _get(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise KeyError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}") from None


def _resolve(path: str) -> Any:
    module, attribute = path.split(":")
    return getattr(importlib.import_module(module), attribute)


def loss_for(name: str) -> Callable[..., Any]:
    """The pure loss function of a strategy (imports torch on first use)."""
    return _resolve(_get(name).loss)


def loss_module_for(name: str) -> type:
    """The nn.Module class of a strategy's loss (imports torch on first use)."""
    return _resolve(_get(name).module)
