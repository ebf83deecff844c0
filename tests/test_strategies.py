"""The strategy registry is the one list of distillation strategies, and training uses what it names:
the same names everywhere (registry, training, `seedrun list`, recipes), each objective's loss is the
registered seedrun.losses function, and the registry imports no torch. Likewise the pre-training methods."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from seedrun.losses import KMeansTargets
from seedrun.models import catalog
from seedrun.sweeps.compose import compose_config, recipe_groups
from seedrun.sweeps.spec import pretrain_config
from seedrun.training import strategies
from seedrun.training.distill import batch_views
from seedrun.training.objectives import Objective
from seedrun.training.pretexts import PRETEXTS, create_pretext
from conftest import ROOT, TINY_BASE

# Sizes that fit the tiny inputs below (the recipes' defaults are ImageNet's).
SMALL = {"kmeans": ["distill.kmeans_k=10", "distill.kmeans_iterations=5"], "online_clustering": ["distill.prototypes=30"],
         "seed_mocov2": ["distill.moco_weight=0.5"]}  # a weight other than 1, so dropping it shows
BATCH, INPUT = 8, 12


@pytest.fixture(scope="module")
def seedrun_list():
    """`seedrun list` as a user runs it: {first words of a heading: [names]}, and the modules it imported."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "seedrun", "list"], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    sections: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        if not line.startswith(" "):
            heading = line.split(" (")[0].rstrip(":")  # headings may add a note in brackets
            sections[heading] = []
        elif line.strip():
            sections[heading].append(line.split()[0])
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    return sections, imported


def distill_settings(name: str) -> dict:
    return compose_config(TINY_BASE + [f"distill={name}"] + SMALL.get(name, []))


def trainable(name: str) -> bool:
    """Whether the distillation recipe's entry builds an objective for `distill.strategy=name`."""
    recipe = name if name in recipe_groups()["distill"] else "seed"  # a strategy's settings, if it has a recipe
    d = {**distill_settings(recipe)["distill"], "strategy": name}
    try:
        strategies.create_objective(d, 128, 0, torch.nn.Linear(INPUT, 128))
    except ValueError as exc:
        assert "known: " + ", ".join(strategies.STRATEGIES) in str(exc)
        return False
    return True


def test_every_list_of_strategies_is_the_registry(seedrun_list):
    registered = set(strategies.STRATEGIES)
    listed = set(seedrun_list[0]["distillation strategies"])
    recipes = set(recipe_groups()["distill"])
    accepted = {distill_settings(recipe)["distill"]["strategy"] for recipe in recipes}  # each recipe names one
    assert recipes == accepted
    candidates = registered | listed | recipes | {"nope"}
    assert {name for name in candidates if trainable(name)} == registered
    assert listed == registered and accepted == registered


def test_lookup_by_unknown_name_lists_the_known_ones():
    with pytest.raises(KeyError, match="unknown distillation strategy 'nope'; known: seed, binary_contrastive"):
        strategies.get_strategy("nope")
    with pytest.raises(ValueError, match="distill.strategy: .*known: seed"):
        strategies.create_objective({"strategy": "nope"}, 128, 0, torch.nn.Linear(INPUT, 128))
    with pytest.raises(ValueError, match="twice"):
        strategies.register_strategy(strategies.STRATEGIES["seed"])


def test_registry_and_seedrun_list_import_no_torch(seedrun_list):
    code = ("import sys, seedrun.training.strategies as s\n"
            "for name in s.STRATEGIES: s.get_strategy(name).description\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    assert "torch" not in seedrun_list[1]


def unit(*shape, generator):
    return F.normalize(torch.randn(*shape, generator=generator), dim=1)


def reference_arguments(name, objective, d, inputs):
    """The arguments with which the registered loss function must reproduce the objective's forward,
    taken from the settings d; only trained state (classifier, prototypes, momentum student) from the objective."""
    z_s, z_t, queue, indices, view, teacher_features = inputs
    if name == "seed":
        return z_s, z_t, queue, d["tau_student"], d["tau_teacher"]
    if name == "binary_contrastive":
        return z_s, z_t, queue, d["tau_student"]
    if name == "l2":
        return z_s, z_t
    if name == "kmeans":
        targets = KMeansTargets.fit(teacher_features, d["kmeans_k"], d["kmeans_iterations"], 0)
        return objective.classify.classifier(z_s), targets[indices]
    if name == "online_clustering":
        return (z_s, z_t, objective.cluster.prototypes, d["tau_student"], d["sinkhorn_epsilon"],
                d["sinkhorn_iterations"], queue)
    if name == "seed_mocov2":
        key = F.normalize(objective.momentum_student[0](view), dim=1)  # the momentum student after its update
        return (z_s, z_t, queue, d["tau_student"], d["tau_teacher"], z_s, key,
                objective.student_queue.embeddings, d["moco_tau"], d["moco_weight"])
    raise AssertionError(f"no reference for strategy {name!r}: add one here")


@pytest.mark.parametrize("name", list(strategies.STRATEGIES))
def test_objective_is_the_registered_loss_and_keeps_the_registered_state(name):
    strategy = strategies.get_strategy(name)
    loss = strategies.loss_for(name)
    assert loss.__module__.startswith("seedrun.losses.") and loss.__name__ == strategy.loss.split(":")[1]
    d = distill_settings(name)["distill"]
    dim = 128
    g = torch.Generator().manual_seed(7)
    inputs = (unit(BATCH, dim, generator=g), unit(BATCH, dim, generator=g), unit(d["queue_size"], dim, generator=g),
              torch.arange(BATCH), torch.randn(BATCH, INPUT, generator=g), unit(40, dim, generator=g))
    z_s, z_t, queue, indices, view, teacher_features = inputs

    objective = strategies.create_objective(d, dim, 0, torch.nn.Linear(INPUT, dim))
    assert isinstance(objective, Objective) and type(objective) is strategies.objective_class_for(name)
    objective.prepare(lambda: teacher_features)
    asked = []
    got = objective(z_s, z_t, queue, indices, lambda: asked.append(1) or view)
    want = loss(*reference_arguments(name, objective, d, inputs))
    # the registry says whether the objective encodes a second view, and the recipe asks the loader for it
    # (the stream loader decodes only the views asked: a strategy that needs one and is not given it fails)
    assert bool(asked) == strategy.second_view
    assert (1 in batch_views(d)) == strategy.second_view
    assert got.ndim == 0 and torch.isfinite(got)
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-7), (got, want)

    objective.after_step()
    kept = {key.split(".")[0] for key in objective.state_dict()} | set(objective.extra_state())
    assert kept == set(strategy.state)
    assert issubclass(strategies.loss_module_for(name), torch.nn.Module)


@pytest.mark.parametrize("name", list(strategies.STRATEGIES))
def test_the_registry_says_which_objectives_gather_across_ranks_in_their_forward(name, monkeypatch):
    """Under several processes the recipe must know of a collective in the objective's forward (the loop
    reports a failed rank through the step's all-reduce only where no other collective is pending).
    Seen here as a rank of 2 would see it: current() says 2 ranks, and the gathers are recorded."""
    from seedrun.training import distributed

    d = distill_settings(name)["distill"]
    g = torch.Generator().manual_seed(7)
    z_s, z_t, queue = unit(BATCH, 128, generator=g), unit(BATCH, 128, generator=g), unit(d["queue_size"], 128, generator=g)
    objective = strategies.create_objective(d, 128, 0, torch.nn.Linear(INPUT, 128))
    objective.prepare(lambda: unit(40, 128, generator=g))  # k-means fits here, in one process
    gathered = []
    monkeypatch.setattr(distributed, "current", lambda: distributed.Ranks(0, 0, 2))
    monkeypatch.setattr(distributed, "concat_all_gather", lambda t: gathered.append(t) or torch.cat([t, t]))
    objective(z_s, z_t, queue, torch.arange(BATCH), lambda: torch.randn(BATCH, INPUT, generator=g))
    assert bool(gathered) == strategies.get_strategy(name).gathers_in_forward


# ---------------------------------------------------------------- pre-training methods


def test_pretrain_methods_are_one_list(seedrun_list):
    in_recipes = {compose_config([f"teacher={name}"])["teacher"]["method"] for name in recipe_groups()["teacher"]}
    catalogued = {method.name for method in catalog.METHODS}
    assert set(PRETEXTS) == catalogued == set(seedrun_list[0]["self-supervised methods"])
    assert in_recipes <= catalogued
    with pytest.raises(ValueError, match="known: mocov2, simclr, swav"):
        create_pretext({"method": "nope"}, torch.nn.Linear(INPUT, 8), 0)


@pytest.mark.parametrize("method", list(PRETEXTS))
def test_pretext_calls_its_loss(method):
    from seedrun.losses import infonce_loss, ntxent_loss, swav_loss

    p = {**pretrain_config(compose_config(["data=tiny", f"teacher=small_resnet_{method}"]))["pretrain"], "dim": 16}
    if method == "mocov2":
        p["queue_size"] = 32
    if method == "swav":
        p["prototypes"] = 10
    g = torch.Generator().manual_seed(3)
    encoder = torch.nn.Linear(INPUT, p["dim"])
    view_a, view_b = torch.randn(BATCH, INPUT, generator=g), torch.randn(BATCH, INPUT, generator=g)
    pretext = create_pretext(p, encoder, 0)
    assert type(pretext) is PRETEXTS[method]
    got = pretext(encoder, view_a, view_b)
    if method == "mocov2":
        key = F.normalize(pretext.key_encoder(view_b), dim=1)
        want = infonce_loss(F.normalize(encoder(view_a), dim=1), key, pretext.queue.embeddings, p["tau"])
    elif method == "simclr":
        want = ntxent_loss(encoder(view_a), encoder(view_b), p["tau"])
    else:
        scores = [F.normalize(encoder(v), dim=1) @ pretext.prototypes.T for v in (view_a, view_b)]
        want = swav_loss(scores, p["tau"], p["sinkhorn_epsilon"], p["sinkhorn_iterations"])
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-7), (got, want)
