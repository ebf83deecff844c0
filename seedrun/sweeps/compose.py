"""Recipes -> one resolved run config, through Hydra's compose API.

The recipes ship inside the package (seedrun/recipes/: config.yaml and one folder per group), so an
installed seedrun finds them from any folder. $SEEDRUN_RECIPES names folders of your own, separated
by ':' (os.pathsep), searched in that order before the packaged recipes: a file there of the same
group and name (or a config.yaml) replaces the packaged one, a new file adds a recipe, a new folder a
group. They are folders on Hydra's config search path, not copies.

Overrides use Hydra's grammar (`student=resnet18`, `distill.tau_teacher=0.01`). Before composing, each
override is checked against the recipes so that a mistake becomes one line naming the key and what
was expected (the known recipes of a group, or the keys of a section) rather than Hydra's traceback.
"""

from __future__ import annotations

import copy
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from seedrun.errors import InputError

PACKAGED_RECIPES = Path(__file__).resolve().parent.parent / "recipes"  # package data: in the wheel too


def recipe_dirs() -> tuple[Path, ...]:
    """The recipe folders Hydra searches, first match wins: those of $SEEDRUN_RECIPES, then the packaged ones."""
    dirs = []
    for entry in os.environ.get("SEEDRUN_RECIPES", "").split(os.pathsep):
        if not entry.strip():
            continue
        folder = Path(entry).expanduser().absolute()
        if not folder.is_dir():
            raise InputError("SEEDRUN_RECIPES", entry, "expected a folder of recipes; there is no such folder")
        dirs.append(folder)
    return (*dirs, PACKAGED_RECIPES)


def recipe_groups(dirs: tuple[Path, ...] | None = None) -> dict[str, list[str]]:
    """{group: [recipe names]} over the recipe folders (each group folder's *.yaml, merged)."""
    return _recipe_groups(dirs or recipe_dirs())


@lru_cache(maxsize=16)
def _recipe_groups(dirs: tuple[Path, ...]) -> dict[str, list[str]]:
    names: dict[str, set[str]] = {}
    for root in dirs:
        for group in root.iterdir():
            if group.is_dir() and not group.name.startswith((".", "_")):
                names.setdefault(group.name, set()).update(path.stem for path in group.glob("*.yaml"))
    return {group: sorted(names[group]) for group in sorted(names)}


def _split(override: str) -> tuple[str, str]:
    key, sep, value = override.partition("=")
    if not sep or not key.strip():
        raise ValueError("expected key=value")
    return key.strip(), value.strip()


def check_overrides(overrides: Iterable[tuple[str, str]], source: str) -> None:
    """Each (label, override): group choices must name a recipe; dotted keys must exist in the config.

    `label` is how the user wrote it (a sweep file's key path) and goes into the error line.
    """
    pairs = list(overrides)
    groups = recipe_groups()
    choices = {}
    for label, override in pairs:
        try:
            key, value = _split(override)
        except ValueError:
            raise InputError(source, label, f"expected key=value in Hydra's override grammar, got {override!r}")
        bare = key.lstrip("+~")
        if bare in groups:
            if value not in groups[bare]:
                raise InputError(source, label, f"unknown {bare} recipe {value!r}; known: {', '.join(groups[bare])}")
            choices[bare] = value
    base = _compose_cached(tuple(f"{group}={name}" for group, name in sorted(choices.items())))
    for label, override in pairs:
        key, _ = _split(override)
        if key.startswith(("+", "~")) or key in groups:
            continue
        node: Any = base
        for depth, part in enumerate(key.split(".")):
            if not isinstance(node, dict) or part not in node:
                where = ".".join(key.split(".")[:depth]) or "the root config"
                known = ", ".join(sorted(node)) if isinstance(node, dict) else "no sub-keys"
                raise InputError(source, label, f"unknown config key {key!r} ({where} has: {known})")
            node = node[part]


def _compose_cached(overrides: tuple[str, ...]) -> dict[str, Any]:
    return _compose_container(recipe_dirs(), overrides)


@lru_cache(maxsize=256)
def _compose_container(dirs: tuple[Path, ...], overrides: tuple[str, ...]) -> dict[str, Any]:
    return _to_container(_compose_groups(dirs, overrides))


@lru_cache(maxsize=256)
def _compose_groups(dirs: tuple[Path, ...], overrides: tuple[str, ...]):
    """Hydra's composition (unresolved) for a set of overrides; cached, since it costs ~0.2 s a call."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(dirs[-1]), version_base=None):  # the packaged recipes
        if len(dirs) > 1:
            _search_first(dirs[:-1])
        return compose(config_name="config", overrides=list(overrides))


def _search_first(folders: tuple[Path, ...]) -> None:
    """Put `folders`, in order, before the packaged recipes on Hydra's config search path.

    initialize_config_dir() takes one folder; this re-creates the Hydra it set up with a longer search
    path (what it does itself, in three lines), and leaving its `with` block still restores Hydra's state.
    """
    from hydra._internal.hydra import Hydra
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra

    search_path = copy.deepcopy(GlobalHydra.instance().config_loader().get_search_path())
    for folder in folders:
        search_path.prepend("seedrun", str(folder), anchor=SearchPathQuery(provider="main"))
    GlobalHydra.instance().clear()
    Hydra.create_main_hydra2(task_name="app", config_search_path=search_path)


def _to_container(cfg) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def compose_config(overrides: list[str], source: str = "overrides") -> dict[str, Any]:
    """The fully resolved config for a list of overrides (checked first; errors are InputError).

    Recipe choices (`student=resnet18`) go through Hydra's compose, once per set of choices. Value
    overrides are parsed by Hydra's own override grammar (once per distinct text) and set on a copy of
    the composed config as plain data; interpolations (`${oc.env:...}`, `${.pretrain.epochs}`) are
    resolved by OmegaConf the first time their inputs are seen and reused after (seedrun.sweeps.fast).
    Whatever that path cannot show to be the same (a new key, a delete, a sweep, a resolver it does not
    know) goes through Hydra and OmegaConf as before; both give byte-identical configs
    (tests/test_plan_view.py checks it), so run hashes do not depend on the path taken.
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        parsed = [_parse(text) for text in overrides]
        groups = set(recipe_groups())
        is_choice = [override.key_or_group in groups and override.package is None for override in parsed]
        choices = tuple(text for text, choice in zip(overrides, is_choice) if choice)
        values = [override for override, choice in zip(parsed, is_choice) if not choice]
        if any(override.is_delete() or override.is_sweep_override() for override in values):
            return _deep_copy(_compose_cached(tuple(overrides)))  # rare forms: let Hydra do all of it
        named = [_split(text) for text in choices]
        if len({group for group, _ in named}) == len(named):  # one choice per group: order does not matter,
            choices = tuple(f"{group}={name}" for group, name in sorted(named))  # and check_overrides' cache is hit
        if not values:
            return _deep_copy(_compose_cached(choices))
        from seedrun.sweeps.fast import apply_values

        fast = apply_values(choices, values, lambda: _compose_slow(choices, values))
        return fast if fast is not None else _compose_slow(choices, values)
    except (HydraException, OmegaConfBaseException) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(source, None, f"could not compose recipes with {' '.join(overrides)}: {first}") from None


@lru_cache(maxsize=4096)
def _parse(text: str):
    from seedrun.sweeps.fast import parse_simple

    simple = parse_simple(text)
    if simple is not None:
        return simple
    return _parser().parse_overrides(overrides=[text])[0]


@lru_cache(maxsize=1)
def _parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def _compose_slow(choices: tuple[str, ...], values: list) -> dict[str, Any]:
    """Hydra's way: the composed config copied, each value override applied by OmegaConf, then resolved."""
    from omegaconf import OmegaConf

    cfg = copy.deepcopy(_compose_groups(recipe_dirs(), choices))
    for override in values:
        OmegaConf.update(cfg, override.key_or_group, override.value(), merge=False,
                         force_add=override.is_add() or override.is_force_add())
    return _to_container(cfg)


def unresolved(choices: tuple[str, ...]) -> dict[str, Any]:
    """The composed config for a set of recipe choices as plain data, interpolations left as text (cached)."""
    return _unresolved(recipe_dirs(), choices)


@lru_cache(maxsize=256)
def _unresolved(dirs: tuple[Path, ...], choices: tuple[str, ...]) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(_compose_groups(dirs, choices), resolve=False)


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _deep_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_deep_copy(item) for item in value]
    return value
