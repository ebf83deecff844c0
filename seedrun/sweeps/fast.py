"""Value overrides on plain data: a 1,000-run sweep composes in milliseconds, not Hydra's 30 s.

Hydra composes a set of recipe choices once (seedrun.sweeps.compose); a run's value overrides
(`distill.tau_teacher=0.01`) are then set on a copy of that composed config as plain dicts and lists,
which is what OmegaConf.update(merge=False) does to an existing key. Interpolations are what makes
that not enough: `${.pretrain.epochs}` reads another value, `${oc.env:SEEDRUN_TEACHERS,...}` the
environment. Their resolved values are computed by the slow path itself (Hydra's config, OmegaConf's
resolver) the first time a combination of their inputs is seen, and reused while the inputs are the
same: the whole top-level section each reference points into, and each variable read. So the result
is the slow path's, byte for byte; anything this module cannot account for returns None and the caller
takes the slow path (a key that does not exist yet, a list index, `+key`, a resolver other than oc.env).
"""

from __future__ import annotations

import json
import marshal
import os
import re
from functools import lru_cache
from typing import Any, Callable, Iterator, Optional

_PLAIN = (str, int, float, bool, type(None))
_INTERPOLATION = re.compile(r"\$\{([^{}]*)\}")
_NODE = re.compile(r"(\.*)([A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*)*)")
_ENV = re.compile(r"oc\.env:([A-Za-z_][A-Za-z0-9_]*)(?:,[^{}]*)?")
#: (choices, interpolation sites, their inputs) -> {site: resolved value}
_RESOLVED: dict[tuple, dict[tuple[str, ...], Any]] = {}


def _copy(value: Any) -> Any:
    if type(value) is dict:
        return {key: _copy(item) for key, item in value.items()}
    if type(value) is list:
        return [_copy(item) for item in value]
    return value


def _plain(value: Any) -> bool:
    if type(value) is dict:
        return all(type(key) is str and _plain(item) for key, item in value.items())
    if type(value) is list:
        return all(_plain(item) for item in value)
    return type(value) in _PLAIN


def _sites(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str]]:
    """(path, text) of every string holding an interpolation; a list anywhere above one: ("!",)."""
    if type(node) is dict:
        for key, item in node.items():
            yield from _sites(item, path + (key,))
    elif type(node) is list:
        for item in node:
            if any(True for _ in _sites(item)):
                yield ("!",), ""  # an interpolation inside a list: not handled here
    elif type(node) is str and "${" in node:
        yield path, node


def _inputs(path: tuple[str, ...], text: str, touched: list[tuple[tuple[str, ...], Any]],
            config: dict) -> Optional[list]:
    """What the interpolations in `text` (at `path`) read, as hashable values; None if not understood.

    A reference into section S reads what the recipes put there (the same for the same choices) and
    what the overrides set in S, in order: those overrides stand for S's content.
    """
    found = _INTERPOLATION.findall(text)
    if len(found) != text.count("${"):
        return None  # nested or unterminated: leave it to OmegaConf
    inputs: list = []
    for inner in found:
        env = _ENV.fullmatch(inner)
        node = _NODE.fullmatch(inner)
        if env:
            inputs.append(("env", env.group(1), os.environ.get(env.group(1))))
        elif node:
            dots, dotted = len(node.group(1)), node.group(2).split(".")
            if dots:
                base = path[:-1]
                if dots - 1 > len(base):
                    return None
                target = base[:len(base) - (dots - 1)] + tuple(dotted)
            else:
                target = tuple(dotted)
            section = target[0]
            if section not in config:
                return None
            inputs.append(("node", section, tuple((keys, json.dumps(value, sort_keys=True))
                                                  for keys, value in touched if keys[0] == section)))
        else:
            return None
    return inputs


@lru_cache(maxsize=256)
def _template(choices: tuple[str, ...]) -> tuple[dict[str, Any], tuple]:
    from seedrun.sweeps.compose import unresolved

    config = unresolved(choices)
    return config, tuple(_sites(config))


def apply_values(choices: tuple[str, ...], values: list, slow: Callable[[], dict[str, Any]]) -> Optional[dict[str, Any]]:
    """The resolved config for recipe `choices` plus parsed value `overrides`, or None: take the slow path."""
    template, template_sites = _template(choices)
    config = marshal.loads(marshal.dumps(template))  # a deep copy of plain data, in C
    touched: list[tuple[tuple[str, ...], Any]] = []
    for override in values:
        if override.package is not None or override.is_add() or override.is_force_add():
            return None
        value = override.value()
        if not _plain(value):
            return None
        keys = tuple(override.key_or_group.split("."))
        node: Any = config
        for part in keys[:-1]:
            node = node.get(part) if type(node) is dict else None
        if type(node) is not dict or keys[-1] not in node:
            return None  # a new key or a list index: OmegaConf's rules
        node[keys[-1]] = _copy(value)
        touched.append((keys, value))
    sites = [(path, text) for path, text in template_sites
             if not any(path[:len(keys)] == keys for keys, _ in touched)]
    for keys, value in touched:
        sites += _sites(value, keys)
    if not sites:
        return config
    if any(path == ("!",) for path, _ in sites):
        return None
    inputs = []
    for path, text in sites:
        found = _inputs(path, text, touched, config)
        if found is None:
            return None
        inputs.append((path, text, tuple(found)))
    key = (choices, tuple(inputs))
    resolved = _RESOLVED.get(key)
    if resolved is None:
        full = slow()
        resolved = {path: _at(full, path) for path, _ in sites}
        if len(_RESOLVED) > 4096:
            _RESOLVED.clear()
        _RESOLVED[key] = resolved
    for path, value in resolved.items():
        _at(config, path[:-1])[path[-1]] = _copy(value)
    return config


def _at(config: dict, path: tuple[str, ...]) -> Any:
    node: Any = config
    for part in path:
        node = node[part]
    return node


class Value:
    """A `key=value` override with a plain key and a number, true/false or null: what Hydra's override
    grammar makes of it (seedrun.sweeps.compose uses Hydra's own parser for everything else)."""

    __slots__ = ("key_or_group", "_value")
    package = None

    def __init__(self, key: str, value: Any):
        self.key_or_group, self._value = key, value

    def value(self) -> Any:
        return self._value

    def is_add(self) -> bool:
        return False

    is_force_add = is_delete = is_sweep_override = is_add


_SIMPLE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)=(.*)")
_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")
_FLOAT = re.compile(r"-?(?:0|[1-9][0-9]*)\.[0-9]+(?:e[-+]?[0-9]+)?|-?[1-9](?:\.[0-9]+)?e[-+]?[0-9]+")
_WORDS = {"true": True, "false": False, "null": None}


def parse_simple(text: str) -> Optional[Value]:
    """`text` as a Value when it is a plain key set to an int, a float (as repr writes it), true, false
    or null; None for anything else (quoted text, choices, +key, sweeps: Hydra's parser takes those)."""
    match = _SIMPLE.fullmatch(text)
    if not match:
        return None
    key, raw = match.groups()
    if raw in _WORDS:
        return Value(key, _WORDS[raw])
    if _INT.fullmatch(raw):
        return Value(key, int(raw))
    if _FLOAT.fullmatch(raw):
        return Value(key, float(raw))
    return None
