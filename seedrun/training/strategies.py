"""The one table of distillation strategies (`distill.strategy`), and the way training gets one by name.

A strategy is its name and description; its loss, the function in seedrun.losses that training calls
(and the nn.Module wrapping it); the state it keeps beside the student (checkpointed with it); whether
it needs a second augmented view of each image; and the Objective class through which the distillation
recipe uses it (seedrun.training.objectives).
`seedrun list`, the recipe and the tests all read this table.

Callables are named as "module:attribute" and imported only when asked for, so that `seedrun list`
can import this module without importing torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class Strategy:
    name: str
    description: str
    loss: str  # "module:function" in seedrun.losses: what the objective's forward calls
    loss_module: str  # "module:class": the nn.Module wrapping that loss
    objective: str  # "module:class": the Objective the recipe trains with (forward, after_step, prepare...)
    # what the objective keeps beside the student, by the top-level name it has in the objective's
    # state_dict() or extra_state(): {name: what it is}
    state: dict[str, str] = field(default_factory=dict)
    # whether the objective encodes a second augmented view of each image (the `another_view` it is
    # given): the recipe asks the loader for that view only then (the stream loader decodes views ahead)
    second_view: bool = False
    # whether the objective's forward runs a collective across ranks under several processes (online
    # clustering all-gathers the teacher embeddings for Sinkhorn over the global batch): the recipe then
    # tells the loop (Loop.collectives_ahead) that a rank failing in the forward cannot report itself
    # through the step's all-reduce, since the others wait in that gather
    gathers_in_forward: bool = False


STRATEGIES: dict[str, Strategy] = {}


def register_strategy(strategy: Strategy) -> Strategy:
    """Add a strategy to the table; its name is what `distill.strategy` and `seedrun list` use."""
    if strategy.name in STRATEGIES:
        raise ValueError(f"strategy {strategy.name!r} is registered twice")
    STRATEGIES[strategy.name] = strategy
    return strategy


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise KeyError(f"unknown distillation strategy {name!r}; known: {', '.join(STRATEGIES)}") from None


def _resolve(path: str) -> Any:
    module, attribute = path.split(":")
    return getattr(importlib.import_module(module), attribute)


def loss_for(name: str) -> Callable[..., Any]:
    """The loss function a strategy's objective calls (imports torch on first use)."""
    return _resolve(get_strategy(name).loss)


def loss_module_for(name: str) -> type:
    """The nn.Module class wrapping a strategy's loss (imports torch on first use)."""
    return _resolve(get_strategy(name).loss_module)


def objective_class_for(name: str) -> type:
    """The Objective class of a strategy (imports torch on first use)."""
    return _resolve(get_strategy(name).objective)


def create_objective(d: dict[str, Any], dim: int, seed: int, student: Any) -> Any:
    """The objective `distill.strategy` names, built from the `distill` settings d; the only way the
    distillation recipe gets one, so every strategy in the table trains through the same entry."""
    try:
        objective = objective_class_for(d["strategy"])
    except KeyError as exc:
        raise ValueError(f"distill.strategy: {exc.args[0]}") from None
    return objective(d=d, dim=dim, seed=seed, student=student)


_OBJECTIVES = "seedrun.training.objectives"

register_strategy(Strategy(
    "seed",
    "SEED: soft cross-entropy between teacher and student similarities over [z_T; queue]",
    loss="seedrun.losses.seed:seed_loss",
    loss_module="seedrun.losses.seed:SEEDLoss",
    objective=f"{_OBJECTIVES}:SEED",
))
register_strategy(Strategy(
    "binary_contrastive",
    "InfoNCE: student query, same image's teacher embedding positive, queue negatives",
    loss="seedrun.losses.binary_contrastive:binary_contrastive_loss",
    loss_module="seedrun.losses.binary_contrastive:BinaryContrastiveLoss",
    objective=f"{_OBJECTIVES}:BinaryContrastive",
))
register_strategy(Strategy(
    "l2",
    "squared l2 distance between normalised student and teacher embeddings",
    loss="seedrun.losses.l2:l2_loss",
    loss_module="seedrun.losses.l2:L2Loss",
    objective=f"{_OBJECTIVES}:L2",
))
register_strategy(Strategy(
    "kmeans",
    "student classifies k-means pseudo-labels of the teacher's training-set features",
    loss="seedrun.losses.kmeans:kmeans_loss",
    loss_module="seedrun.losses.kmeans:KMeansLoss",
    objective=f"{_OBJECTIVES}:KMeans",
    state={
        "classify": "a linear classifier from the student embedding onto the k clusters (trained)",
        "kmeans": "each training image's pseudo-label and the centroids, fitted once on the teacher's embeddings",
    },
))
register_strategy(Strategy(
    "online_clustering",
    "student predicts the teacher's Sinkhorn assignment to learnable prototypes",
    loss="seedrun.losses.online_clustering:online_clustering_loss",
    loss_module="seedrun.losses.online_clustering:OnlineClusteringLoss",
    objective=f"{_OBJECTIVES}:OnlineClustering",
    state={"cluster": "the learnable prototypes (trained, renormalised after each step)"},
    gathers_in_forward=True,  # Sinkhorn over the global batch (seedrun.losses.online_clustering)
))
register_strategy(Strategy(
    "seed_mocov2",
    "SEED loss plus the student's own two-view MoCo-v2 InfoNCE loss",
    loss="seedrun.losses.seed_mocov2:seed_mocov2_loss",
    loss_module="seedrun.losses.seed_mocov2:SEEDMoCoV2Loss",
    objective=f"{_OBJECTIVES}:SEEDMoCoV2",
    second_view=True,
    state={
        "momentum_student": "a momentum copy of the student that encodes the second view into keys",
        "student_queue": "the queue of the momentum student's past keys, the InfoNCE negatives",
    },
))
