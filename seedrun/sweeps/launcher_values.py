"""Launcher settings, typed and checked before anything is submitted.

A sweep file is shared text: its `launcher:` block (and `launcher.*` overrides) ends up in `#SBATCH`
lines. submitit shell-quotes each value, but a newline still ends the comment line, and every line
after it becomes a shell command while the `#SBATCH` directives below it are silently ignored. So
every setting has a type (an integer, a number, or a string of the characters Slurm accepts for it),
`additional_parameters` keys must be sbatch long options, and no key or value may hold a control
character. A violation is one InputError naming the file and `launcher.<key>`: exit 2, nothing run.

Each stage may have its own block inside `launcher:` (`pretrain:`, `distill:`, `eval:`), over the
settings the stages share; evaluation, which runs on rank 0 alone, defaults to one GPU on one node
(`stage_settings`).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Callable, Optional

from seedrun.errors import InputError

# Slurm names: partitions (a comma-separated list), accounts, QOS, users' mail addresses.
_NAMES = re.compile(r"[A-Za-z0-9_.+-]+(,[A-Za-z0-9_.+-]+)*")
# A feature expression: features joined by & | , with counts, brackets and parentheses (sbatch --constraint).
_CONSTRAINT = re.compile(r"[A-Za-z0-9_.,&|*\[\]()!:=+-]+")
# sbatch's long options: letters, digits, '-' (submitit turns '_' into '-').
_OPTION = re.compile(r"[a-z][a-z0-9_-]*")
#: The stages a sweep's runs belong to (seedrun.sweeps.spec.RunSpec.stage), each with its optional launcher block.
STAGES = ("pretrain", "distill", "eval")
#: sbatch options seedrun sets itself; a sweep setting them would break requeueing, logs or dependencies.
RESERVED_OPTIONS = frozenset({"array", "dependency", "output", "error", "open-mode", "signal", "parsable",
                              "wrap", "chdir", "job-name", "export", "no-requeue", "requeue", "wckey"})
#: sbatch options that a typed setting asks for: through additional_parameters they would escape the request
#: check (seedrun.launchers.requests) and, for GPUs, start one task that uses one GPU of many.
TYPED_OPTIONS = {"gres": "gpus_per_node", "gpus": "gpus_per_node", "gpus-per-node": "gpus_per_node",
                 "gpus-per-task": "gpus_per_node", "gpus-per-socket": "gpus_per_node", "nodes": "nodes",
                 "ntasks": "tasks_per_node", "ntasks-per-node": "tasks_per_node", "cpus-per-task": "cpus_per_task",
                 "mem": "mem_gb", "time": "timeout_min", "partition": "partition", "account": "account",
                 "qos": "qos", "constraint": "constraint"}


def control_character(text: str) -> Optional[str]:
    """The first control (or line/paragraph separator) character in `text`, as repr, else None."""
    for char in text:
        if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp"):
            return repr(char)
    return None


def _integer(low: int) -> Callable[[Any], Optional[str]]:
    def check(value: Any) -> Optional[str]:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            return f"expected an integer >= {low}"
        return None
    return check


def _number(value: Any) -> Optional[str]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
        return "expected a number > 0"
    return None


def _text(pattern: re.Pattern, what: str) -> Callable[[Any], Optional[str]]:
    def check(value: Any) -> Optional[str]:
        if not isinstance(value, str) or not pattern.fullmatch(value):
            return f"expected {what}"
        return None
    return check


def _optional(check: Callable[[Any], Optional[str]]) -> Callable[[Any], Optional[str]]:
    def optional(value: Any) -> Optional[str]:
        if value is None:
            return None
        problem = check(value)
        return problem and f"{problem}, or null"
    return optional


# The job's budgets (seedrun.job.budgets), under either launcher; -1 = no limit.
BUDGET_SETTINGS = {key: _integer(-1) for key in ("max_preemptions", "max_timeouts", "max_failures")}
NAMES = "a Slurm name (letters, digits, _ . + -; a list separated by ',')"
SETTINGS: dict[str, dict[str, Callable[[Any], Optional[str]]]] = {
    "slurm": {
        "partition": _optional(_text(_NAMES, NAMES)),
        "account": _optional(_text(_NAMES, NAMES)),
        "qos": _optional(_text(_NAMES, NAMES)),
        "constraint": _optional(_text(_CONSTRAINT, "a feature expression (letters, digits, _ . , & | * [ ] ( ) ! : = + -)")),
        "nodes": _integer(1),
        "gpus_per_node": _integer(0),
        "tasks_per_node": _integer(0),
        "cpus_per_task": _integer(0),
        "mem_gb": _optional(_number),
        "timeout_min": _integer(1),
        "array_parallelism": _integer(1),
        "signal_delay_s": _integer(0),
        **BUDGET_SETTINGS,
    },
    "local": {
        "cpus_per_task": _integer(0),
        "timeout_min": _integer(0),
        "procs": _integer(1),
        **BUDGET_SETTINGS,
    },
}


def tasks_per_node(launcher: dict[str, Any]) -> int:
    """Processes a run starts on each node: `procs` locally; on Slurm `tasks_per_node`, else one per GPU
    (gpus_per_node: 8 starts 8 DDP ranks; global rank 0 records: seedrun.job.ranks)."""
    if launcher.get("name") == "local":
        return int(launcher.get("procs") or 1)
    return int(launcher.get("tasks_per_node") or launcher.get("gpus_per_node") or 1)


def processes(launcher: dict[str, Any]) -> int:
    """The world size of a run: tasks per node x nodes (one process per GPU)."""
    return tasks_per_node(launcher) * (1 if launcher.get("name") == "local" else int(launcher.get("nodes") or 1))


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_CHECKED: set[tuple[str, str]] = set()


def check_launcher(launcher: dict[str, Any], path: str, prefix: str = "launcher") -> None:
    """Raise InputError for the first launcher setting that is not of its type or holds a control character;
    `prefix` is where the settings were written (`launcher`, or a stage's block `launcher.eval`)."""
    key = (path, prefix, repr(launcher))  # every run of a sweep has the same few launchers: check each once
    if key in _CHECKED:
        return
    _check_launcher(launcher, path, prefix)
    _CHECKED.add(key)


def _check_launcher(launcher: dict[str, Any], path: str, prefix: str) -> None:
    name = launcher.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise InputError(path, "launcher.name", f"expected a launcher name (local, slurm), got {_describe(name)}")
    typed = SETTINGS.get(name, {})
    for key, value in launcher.items():
        where = f"{prefix}.{key}"
        if not isinstance(key, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", key):
            raise InputError(path, f"{prefix}.{key!r}", "expected a setting name (lower-case letters, digits, _)")
        if key == "name":
            continue
        if key == "additional_parameters":
            _check_additional(value, path, prefix)
            continue
        if isinstance(value, str) and control_character(value):
            raise InputError(path, where, f"control character {control_character(value)} in {_describe(value)}")
        check = typed.get(key)
        problem = check(value) if check else _scalar(value)
        if problem:
            raise InputError(path, where, f"{problem}, got {_describe(value)}")


def _scalar(value: Any) -> Optional[str]:
    """A setting without a declared type (a recipe of one's own): a plain value without control characters."""
    if value is None or isinstance(value, (bool, int, float)):
        return None
    if isinstance(value, str):
        return None
    return "expected a plain value (a string, a number, true/false or null)"


def _check_additional(value: Any, path: str, prefix: str = "launcher") -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise InputError(path, f"{prefix}.additional_parameters", "expected a mapping of sbatch option -> value")
    for key, item in value.items():
        where = f"{prefix}.additional_parameters.{key}"
        if not isinstance(key, str) or not _OPTION.fullmatch(key):
            raise InputError(path, f"{prefix}.additional_parameters[{_describe(key)}]",
                             "expected an sbatch long option name (lower-case letters, digits, - or _)")
        option = key.replace("_", "-")
        if option in RESERVED_OPTIONS:
            raise InputError(path, where, f"--{option} is set by seedrun itself; remove it")
        if option in TYPED_OPTIONS and not (option == "gres" and "gpu" not in str(item).lower()):
            typed = TYPED_OPTIONS[option]
            why = "one task per GPU, checked against the nodes" if typed == "gpus_per_node" else "checked against the nodes"
            raise InputError(path, where, f"--{option} is asked with launcher.{typed} ({why}); use that instead")
        if isinstance(item, bool):
            if item is not True:
                raise InputError(path, where, "expected true (a flag) or a value; false is not an sbatch option")
            continue
        if isinstance(item, (int, float)):
            continue
        if not isinstance(item, str) or not item:
            raise InputError(path, where, f"expected a non-empty string, a number or true, got {_describe(item)}")
        if control_character(item):
            raise InputError(path, where, f"control character {control_character(item)} in {_describe(item)}")


def split_stages(block: dict[str, Any], path: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A sweep's `launcher:` block as (the settings every stage shares, {stage: its own block})."""
    shared = {key: value for key, value in block.items() if key not in STAGES}
    stages: dict[str, dict[str, Any]] = {}
    for stage in STAGES:
        if stage not in block:
            continue
        own = block[stage]
        if not isinstance(own, dict):
            raise InputError(path, f"launcher.{stage}", f"expected a mapping of launcher settings for the {stage} stage")
        if "name" in own:
            raise InputError(path, f"launcher.{stage}.name", "expected no name: every stage runs under launcher.name")
        if own and shared.get("name") == "local":
            raise InputError(path, f"launcher.{stage}", "expected no stage block under the local launcher: it runs "
                             "every stage with the same settings, one run after another")
        stages[stage] = own
    return shared, stages


def stage_settings(settings: dict[str, Any], stage: str, own: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The launcher a run of `stage` is submitted with: the shared `settings`, then the stage's own block.

    Evaluation runs on global rank 0 alone (seedrun.job.ranks): unless its block says otherwise it asks one
    node, one task and, where the others ask GPUs, one GPU with that GPU's share of the node's memory,
    instead of holding a whole node to use one GPU of it.
    """
    resolved = dict(settings)
    if stage == "eval":
        if resolved.get("name") == "local":
            resolved["procs"] = 1
        else:
            gpus = int(resolved.get("gpus_per_node") or 0)
            resolved.update(nodes=1, tasks_per_node=0, gpus_per_node=min(gpus, 1))
            if gpus > 1 and resolved.get("mem_gb"):
                resolved["mem_gb"] = round(float(resolved["mem_gb"]) / gpus, 1)
    resolved.update(own or {})
    return resolved


def cli_launcher_settings(cli_overrides, path: str) -> tuple[list[str], set[str], dict[str, dict[str, Any]]]:
    """What the command line says of the launcher: (the overrides that go to Hydra, the shared settings they
    set, `launcher.KEY=V`, which win over the file's, {stage: its `launcher.STAGE.KEY=V` settings}, read as
    YAML reads a value and checked where the file's stage blocks are)."""
    import yaml

    from seedrun.sweeps.sweep_file import yaml_loader  # a sweep file's own reading of values (1e-4 a float)

    rest: list[str] = []
    shared: set[str] = set()
    stages: dict[str, dict[str, Any]] = {}
    for override in cli_overrides:
        key, _, text = override.partition("=")
        parts = key.strip().split(".")
        if len(parts) == 3 and parts[0] == "launcher" and parts[1] in STAGES:
            try:
                value = yaml.load(text, Loader=yaml_loader()) if text.strip() else None
            except yaml.YAMLError:
                raise InputError(path, f"command line {override!r}", "expected KEY=VALUE with a YAML value") from None
            stages.setdefault(parts[1], {})[parts[2]] = value
            continue
        setting = key.strip().lstrip("+~")  # `+launcher.qos=...` sets it too
        if setting.startswith("launcher.") and setting.count(".") == 1:
            shared.add(setting.split(".", 1)[1])
        rest.append(override)
    return rest, shared, stages
