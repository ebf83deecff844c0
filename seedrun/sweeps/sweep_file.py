"""Sweep files -> RunSpecs, in a deterministic order, every value checked before anything runs.

A sweep file:

    name: demo                       # unique; runs are recorded under it
    ablation: temperature            # the table it feeds (`seedrun table --ablation ...`)
    base: [data=fashion_mnist, distill.epochs=3]     # overrides for every run (list or mapping)
    grid:                            # crossed: one run per combination, first key outermost
      distill.tau_teacher: [0.3, 0.1, 0.05, 0.01, 0.001]
    zip:                             # varied together: the i-th values form one point
      distill.lr: [0.03, 0.06]
      distill.weight_decay: [1e-4, 5e-4]
    seeds: [0, 1]                    # innermost axis (the student's `seed`)
    baselines: true                  # also train each student alone with MoCo-v2 (the paper's baseline)
    launcher: {name: local}          # or slurm: partition, timeout_min, ... (seedrun/recipes/launcher/)

With Slurm each stage may ask for its own resources: settings at the top of `launcher:` are shared,
and a block per stage (`pretrain:` teachers and baselines, `distill:`, `eval:`) sets what differs:

    launcher:
      name: slurm
      timeout_min: 1440
      distill: {gpus_per_node: 8, cpus_per_task: 10, mem_gb: 320}   # per task: CPUs; per node: GPUs, memory
      eval: {gpus_per_node: 1, cpus_per_task: 10, mem_gb: 40}       # default: one GPU of the shared request

Keys and values are Hydra overrides: `teacher: resnet50_mocov2` picks a recipe, `distill.K: ...` sets a
value. A teacher whose `checkpoint` is null becomes a pre-training run of its own that the
distillation runs depend on; two runs that name the same teacher share it.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from seedrun.sweeps.compose import check_overrides, compose_config, recipe_groups
from seedrun.errors import InputError
from seedrun.sweeps.launcher_values import (STAGES, check_launcher, cli_launcher_settings, control_character,
                                            processes, split_stages, stage_settings)
from seedrun.sweeps.spec import RunSpec, evaluation_config, pretrain_config

TOP_LEVEL_KEYS = {"name", "ablation", "description", "base", "grid", "zip", "seeds", "launcher", "baselines"}


@dataclass
class Sweep:
    name: str
    path: str
    ablation: Optional[str]
    runs: list[RunSpec]  # pre-training runs first, then distillation runs, each in sweep order
    axes: list[str]
    launcher: dict[str, Any]  # the settings every stage shares, as the file wrote them
    warnings: list[str] = field(default_factory=list)
    stage_blocks: dict[str, dict[str, Any]] = field(default_factory=dict)  # launcher.<stage> blocks as written
    stage_launchers: dict[str, dict[str, Any]] = field(default_factory=dict)  # each stage's resolved launcher
    # every axis's values as the file lists them (a student.baseline.* axis varies no distillation run)
    axis_values: dict[str, list] = field(default_factory=dict)

    def stage(self, stage: str) -> list[RunSpec]:
        return [run for run in self.runs if run.stage == stage]


def _override_value(value: Any) -> str:
    """A YAML value as Hydra override text; strings are quoted so shell or grammar characters stay inert."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(_override_value(item) for item in value) + "]"
    text = str(value)
    if text.replace("_", "").replace("-", "").replace(".", "").replace("/", "").isalnum():
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _as_overrides(value: Any, path: str, where: str) -> list[tuple[str, str]]:
    """`base` as (label, override) pairs; it may be a list of `k=v` strings or a mapping."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [(f"{where}.{key}", f"{key}={_override_value(item)}") for key, item in value.items()]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return [(f"{where}[{index}]", item) for index, item in enumerate(value)]
    raise InputError(path, where, "expected a list of key=value overrides or a mapping of key: value")


def yaml_loader():
    """PyYAML reads 1e-4 as a string (YAML 1.1 wants 1.0e-4); sweeps are full of such values."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
        r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
        r"|[0-9][0-9_]*[eE][-+]?[0-9]+|\.inf|\.Inf|\.INF|\.nan|\.NaN|\.NAN)$"), list("-+0123456789."))
    return Loader


def read_sweep_file(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), None, "no such sweep file")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=yaml_loader())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(str(path), where, f"invalid YAML ({problem})")
    if not isinstance(data, dict):
        raise InputError(str(path), None, "expected a mapping with at least `name`")
    unknown = sorted(set(data) - TOP_LEVEL_KEYS)
    if unknown:
        raise InputError(str(path), unknown[0], f"unknown key; expected one of {', '.join(sorted(TOP_LEVEL_KEYS))}")
    if not isinstance(data.get("name"), str) or not data["name"].strip():
        raise InputError(str(path), "name", "expected a non-empty string")
    if control_character(data["name"]):
        raise InputError(str(path), "name", f"expected a name without control characters, got {data['name']!r}")
    return data


def _axis_lists(data: dict, key: str, path: str) -> dict[str, list]:
    block = data.get(key) or {}
    if not isinstance(block, dict):
        raise InputError(path, key, "expected a mapping of config key -> list of values")
    for axis, values in block.items():
        if not isinstance(values, list) or not values:
            raise InputError(path, f"{key}.{axis}", "expected a non-empty list of values")
    return block


def expand(path: str | Path, cli_overrides: list[str] = (), dry_run: bool = False,
           data_root: Optional[str] = None) -> Sweep:
    """Read, check and expand a sweep file. Raises InputError on the first problem found.

    The cycle collector is off meanwhile: 10,000 configs are a million containers without a cycle,
    and collecting them over and over took half of a 10,000-run expansion.
    """
    import gc

    enabled = gc.isenabled()
    gc.disable()
    try:
        return _expand(path, cli_overrides, dry_run, data_root)
    finally:
        if enabled:
            gc.enable()


def _expand(path, cli_overrides, dry_run: bool, data_root: Optional[str]) -> Sweep:
    path = str(path)
    data = read_sweep_file(path)
    cli_overrides, cli_launcher_keys, cli_stages = cli_launcher_settings(cli_overrides, path)
    base = _as_overrides(data.get("base"), path, "base")
    base += [(f"command line {override!r}", override) for override in cli_overrides]
    grid = _axis_lists(data, "grid", path)
    zipped = _axis_lists(data, "zip", path)
    lengths = {len(values) for values in zipped.values()}
    if len(lengths) > 1:
        raise InputError(path, "zip", f"expected lists of one length, got lengths {sorted(lengths)}")
    seeds = data.get("seeds", [None])
    if not isinstance(seeds, list) or not seeds or not all(seed is None or isinstance(seed, int) for seed in seeds):
        raise InputError(path, "seeds", "expected a non-empty list of integers")
    baselines = data.get("baselines", False)
    if not isinstance(baselines, bool):
        raise InputError(path, "baselines", f"expected true or false, got {baselines!r}")
    launcher = data.get("launcher") or {}
    if not isinstance(launcher, dict):
        raise InputError(path, "launcher", "expected a mapping (name: local | slurm, and its settings)")
    # The command line comes last: `launcher.KEY=V` sets KEY for every stage (over the stage blocks too),
    # `launcher.STAGE.KEY=V` sets it in that stage's block.
    launcher = {key: ({k: v for k, v in value.items() if k not in cli_launcher_keys}
                      if key in STAGES and isinstance(value, dict) else value) for key, value in launcher.items()}
    for stage, settings in cli_stages.items():
        launcher[stage] = {**(launcher.get(stage) or {}), **settings}
    launcher, stage_blocks = split_stages(launcher, path)

    # Every value of every axis must be a valid override on its own before any combination is composed.
    axis_overrides = [(f"grid.{key}", f"{key}={_override_value(value)}") for key, values in grid.items() for value in values]
    axis_overrides += [(f"zip.{key}", f"{key}={_override_value(value)}") for key, values in zipped.items() for value in values]
    launcher_name = launcher.get("name")
    launcher_overrides = [("launcher.name", f"launcher={launcher_name}")] if launcher_name else []
    check_overrides(base + launcher_overrides, path)
    groups = recipe_groups()
    choices = [pair for pair in axis_overrides if pair[1].partition("=")[0].strip().lstrip("+~") in groups]
    for pair in choices:  # a recipe choice changes what the other keys are checked against: one at a time
        check_overrides(base + launcher_overrides + [pair], path)
    # values are checked against the base's recipes, all in one go (a 10,000-value axis is one check)
    check_overrides(base + launcher_overrides + [pair for pair in axis_overrides if pair not in choices], path)

    points = [list(zip(grid, combo)) for combo in itertools.product(*grid.values())] if grid else [[]]
    zip_points = [list(zip(zipped, combo)) for combo in zip(*zipped.values())] if zipped else [[]]
    axes = list(grid) + list(zipped) + (["seed"] if seeds != [None] else [])

    pretrain_runs: dict[str, RunSpec] = {}
    distill_runs: list[RunSpec] = []
    eval_launchers: dict[str, dict] = {}  # the evaluations of a run are submitted with its point's eval launcher
    first_stages: dict[str, dict] = {}  # what each stage asks, for the plan (stages without runs included)
    warnings: list[str] = []
    for grid_point in points:
        for zip_point in zip_points:
            for seed in seeds:
                values = dict(grid_point + zip_point)
                overrides = [override for _, override in base + launcher_overrides]
                overrides += [f"{key}={_override_value(value)}" for key, value in values.items()]
                if seed is not None:
                    overrides.append(f"seed={seed}")
                    values["seed"] = seed
                config = compose_config(overrides, path)
                shared = _launcher_settings(config.get("launcher", {}), launcher, path, cli_launcher_keys)
                stages = _stage_launchers(shared, stage_blocks, path)
                first_stages = first_stages or stages
                config["launcher"] = stages["distill"]
                _check_values(config, values, path, stages["pretrain"])
                teacher_run = None
                if config["teacher"].get("checkpoint") is None:
                    teacher_run = RunSpec("pretrain", {**pretrain_config(config, "teacher"), "launcher": stages["pretrain"]},
                                          axes={})
                    pretrain_runs.setdefault(teacher_run.hash, teacher_run)
                else:
                    _check_teacher(config["teacher"], path, _label("teacher.checkpoint", values), dry_run, warnings)
                if baselines:
                    missing = {"queue_size", "encoder_momentum", "tau"} - set(config["teacher"].get("pretrain") or {})
                    if missing:
                        raise InputError(path, "baselines", f"the student-alone MoCo-v2 baseline borrows the teacher "
                                         f"recipe's MoCo-v2 settings, and teacher {config['teacher']['name']!r} lacks "
                                         f"{', '.join(sorted(missing))}; set baselines: false")
                    baseline = RunSpec("pretrain", {**pretrain_config(config, "student"), "launcher": stages["pretrain"]},
                                       axes={})
                    pretrain_runs.setdefault(baseline.hash, baseline)
                config["student"].pop("baseline", None)  # the student-alone run's: not the distillation's content
                config.pop("stage", None)
                distill_runs.append(RunSpec("distill", config, axes=values,
                                            depends_on=teacher_run.hash if teacher_run else None))
                eval_launchers[distill_runs[-1].hash] = stages["eval"]
    checked_data: set[str] = set()
    for run in list(pretrain_runs.values()) + distill_runs:
        if repr(run.config["data"]) not in checked_data:  # most sweeps have one data set: look for it once
            _check_data(run.config["data"], path, dry_run, warnings, data_root)
            checked_data.add(repr(run.config["data"]))
    trained = [run for run in pretrain_runs.values() if run.config["pretrain"].get("role") == "baseline"] + distill_runs
    evaluation_runs = [evaluation_run(run, protocol, path) for run in trained for protocol in run.config["eval"].get("after", [])]
    for run in evaluation_runs:  # a baseline's evaluations take the first point's (a launcher.* axis could vary it)
        run.config["launcher"] = eval_launchers.get(run.depends_on) or next(iter(eval_launchers.values()), run.config["launcher"])
    unique: dict[str, RunSpec] = {}
    for run in list(pretrain_runs.values()) + distill_runs + evaluation_runs:
        unique.setdefault(run.hash, run)
    return Sweep(name=data["name"], path=path, ablation=data.get("ablation"), runs=list(unique.values()),
                 axes=axes, launcher=launcher, warnings=sorted(set(warnings)), stage_blocks=stage_blocks,
                 stage_launchers=first_stages,
                 axis_values={**grid, **zipped, **({"seed": seeds} if seeds != [None] else {})})


def evaluation_run(trained: RunSpec, protocol: str, path: str = "evaluation") -> RunSpec:
    protocols = trained.config["eval"].get("protocols", {})
    if protocol not in protocols:
        raise InputError(path, "eval.after", f"unknown protocol {protocol!r}; known: {', '.join(protocols)}")
    return RunSpec("eval", evaluation_config(trained, protocol), axes={**trained.axes, "protocol": protocol},
                   depends_on=trained.hash)


def _launcher_settings(recipe: dict, block: dict, path: str, from_cli: set[str] = frozenset()) -> dict:
    for key in block:
        if key != "name" and key not in recipe:
            raise InputError(path, f"launcher.{key}",
                             f"unknown setting of launcher {recipe.get('name')!r}; known: {', '.join(sorted(recipe))}")
    settings = {**recipe, **block, **{key: recipe[key] for key in from_cli if key in recipe}}
    check_launcher(settings, path)
    return settings


def _stage_launchers(shared: dict, stage_blocks: dict, path: str) -> dict[str, dict]:
    """{stage: the launcher its runs are submitted with}: the shared settings, then the stage's own block."""
    stages = {}
    for stage in ("pretrain", "distill", "eval"):
        block = stage_blocks.get(stage) or {}
        for key in block:
            if key not in shared:
                raise InputError(path, f"launcher.{stage}.{key}", f"unknown setting of launcher "
                                 f"{shared.get('name')!r}; known: {', '.join(sorted(k for k in shared if k != 'name'))}")
        stages[stage] = stage_settings(shared, stage, block)
        check_launcher(stages[stage], path, f"launcher.{stage}" if block else "launcher")
    return stages


def _label(key: str, values: dict) -> str:
    return key if key not in values else f"grid.{key}"


def _check_values(config: dict, values: dict, path: str, pretrain_launcher: dict) -> None:
    # torch-free: timm is asked in a child process
    from seedrun.models.catalog import PRETRAIN_HEAD_NAMES, check_arch, check_student_build

    distill = config["distill"]
    for section in ("student", "teacher"):  # a network that cannot be built fails here, not in its job
        problem = check_arch((config.get(section) or {}).get("arch"))
        if problem:
            raise InputError(path, _where(f"{section}.arch", values), problem)
    student = config.get("student") or {}
    for key in ("bn", "layout"):  # how seedrun builds the paper's small students (official or torchvision)
        if key in student:
            problem = check_student_build(key, student[key])
            if problem is None and str(student.get("arch")).startswith("timm/"):
                problem = f"a timm network is built by timm: student.{key} does not apply to {student['arch']}"
            if problem:
                raise InputError(path, _where(f"student.{key}", values), problem)
    own = student.get("baseline")
    if own is not None and not isinstance(own, dict):
        raise InputError(path, _where("student.baseline", values), "expected a mapping of MoCo-v2 settings")
    own = own or {}
    settable = ((set(config["teacher"].get("pretrain") or {}) | {"head", "epochs_factor", "dropout"})
                - {"epochs", "seed", "dim"})
    for key in own:
        if key not in settable:  # epochs follow the distillation's (epochs_factor scales them); seed and dim too
            raise InputError(path, _where(f"student.baseline.{key}", values), "expected a setting of the teacher "
                             f"recipe's MoCo-v2 ({', '.join(sorted(settable))}); epochs, seed and dim are the "
                             "distillation's")
    factor = own.get("epochs_factor")
    if factor is not None and (isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor <= 0):
        raise InputError(path, _where("student.baseline.epochs_factor", values),
                         f"expected a number > 0 (the distillation's epochs times it), got {factor!r}")
    if not isinstance(own.get("dropout", False), (bool, type(None))):
        raise InputError(path, _where("student.baseline.dropout", values),
                         f"expected true or false (false: its dropout and drop connect off), got {own['dropout']!r}")
    if own.get("head") not in (None, *PRETRAIN_HEAD_NAMES):
        raise InputError(path, _where("student.baseline.head", values),
                         f"expected {', '.join(PRETRAIN_HEAD_NAMES[:-1])} or {PRETRAIN_HEAD_NAMES[-1]}, "
                         f"got {own['head']!r}")
    for key in ("tau_student", "tau_teacher"):
        if not isinstance(distill.get(key), (int, float)) or distill[key] <= 0:
            raise InputError(path, _where(f"distill.{key}", values), f"expected a temperature > 0, got {distill.get(key)!r}")
    for section, block in (("distill", distill), ("teacher.pretrain", config["teacher"].get("pretrain") or {})):
        if "queue_size" not in block:
            continue
        size, batch = block["queue_size"], block.get("batch_size")
        if not isinstance(size, int) or size <= 0:
            raise InputError(path, _where(f"{section}.queue_size", values), f"expected a positive integer, got {size!r}")
        if not isinstance(batch, int) or batch <= 0 or size % batch:
            raise InputError(path, _where(f"{section}.queue_size", values),
                             f"expected a multiple of {section}.batch_size={batch}, got {size}")
    for key in ("epochs", "batch_size"):
        if not isinstance(distill.get(key), int) or distill[key] <= 0:
            raise InputError(path, _where(f"distill.{key}", values), f"expected a positive integer, got {distill.get(key)!r}")
    world = processes(config.get("launcher") or {})  # distill.batch_size is the global batch, split over them
    if distill["batch_size"] % world:
        raise InputError(path, _where("distill.batch_size", values),
                         f"expected a multiple of the {world} processes the launcher starts, got {distill['batch_size']}")
    if world > 1 and isinstance(distill.get("small_crops"), int) and distill["small_crops"] > 0:
        raise InputError(path, _where("distill.small_crops", values),  # seedrun.training.distill refuses it
                         f"expected 0 under {world} processes per run (small patches run in one process only)")
    for key in ("sync_bn", "deterministic", "compile"):  # seedrun.training.kernels
        if key in distill and not isinstance(distill[key], bool):
            raise InputError(path, _where(f"distill.{key}", values), f"expected true or false, got {distill[key]!r}")
    _check_pretrain_ranks(config, values, path, processes(pretrain_launcher))  # the teacher's own launcher
    for key in ("lr", "weight_decay"):
        if not isinstance(distill.get(key), (int, float)) or distill[key] < 0:
            raise InputError(path, _where(f"distill.{key}", values), f"expected a number >= 0, got {distill.get(key)!r}")
    for section, block in (("distill", distill), ("teacher.pretrain", config["teacher"].get("pretrain") or {})):
        schedule = block.get("lr_schedule") or "official"  # seedrun.training.loop.LR_SCHEDULES (loop imports torch)
        if schedule not in ("official", "per_step"):
            raise InputError(path, _where(f"{section}.lr_schedule", values), f"expected official or per_step, got {schedule!r}")


def _check_pretrain_ranks(config: dict, values: dict, path: str, world: int) -> None:
    """The teacher's (and the student-alone baseline's) pre-training runs on every process of the run:
    MoCo-v2 only (seedrun.training.pretexts.check_ranks), its global batch split evenly over the processes and
    into `shuffle_bn_groups` BatchNorm groups (a multiple of the processes) of at least 2 images."""
    teacher = config["teacher"]
    block = teacher.get("pretrain") or {}
    batch = block.get("batch_size")
    if world > 1 and teacher.get("checkpoint") is None and teacher.get("method", "mocov2") != "mocov2":
        raise InputError(path, _where("teacher.method", values), f"expected mocov2 under {world} processes per run "
                         f"({teacher.get('method')} pre-trains in one process only), got {teacher.get('method')!r}")
    if world > 1 and isinstance(batch, int) and batch % world:
        raise InputError(path, _where("teacher.pretrain.batch_size", values),
                         f"expected a multiple of the {world} processes the launcher starts, got {batch}")
    groups = block.get("shuffle_bn_groups")
    if groups is None:
        return  # the default follows the processes (seedrun.training.pretexts.shuffle_bn_groups)
    key = _where("teacher.pretrain.shuffle_bn_groups", values)
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or groups % world:
        raise InputError(path, key, f"expected an integer >= 1 and a multiple of the {world} processes per run, got {groups!r}")
    if isinstance(batch, int) and (batch % groups or batch // groups < 2):
        raise InputError(path, key, f"expected a divisor of teacher.pretrain.batch_size={batch} leaving groups of "
                         f"at least 2 images, got {groups}")


def _where(key: str, values: dict) -> str:
    return f"{key} (={values[key]!r})" if key in values else key


def _check_teacher(teacher: dict, path: str, key: str, dry_run: bool, warnings: list[str]) -> None:
    """A teacher checkpoint file must exist (a dry run only warns) and be one SEED can distil from; the
    run is then named by its content (teacher.checkpoint_sha256, seedrun.sweeps.teachers), not its path."""
    target = teacher["checkpoint"]
    if not isinstance(target, str) or not target:
        raise InputError(path, key, f"expected a path to a checkpoint file or null, got {target!r}")
    if os.path.isfile(target):
        from seedrun.sweeps.teachers import check_teacher_file

        teacher["checkpoint_sha256"] = check_teacher_file(target, path, key)
    elif dry_run:  # named by its path until the file is there: the plan's hashes are provisional
        warnings.append(f"teacher checkpoint not found: {target} ({key})")
    else:
        raise InputError(path, key, f"teacher checkpoint not found at {target}")


def _check_data(data: dict, path: str, dry_run: bool, warnings: list[str], data_root: Optional[str]) -> None:
    from seedrun.data.datasets import DataNotFound, locate
    from seedrun.data.formats import DataInvalid, check_layout, check_settings

    bad_setting = check_settings(data)
    if bad_setting:
        raise InputError(path, *bad_setting)
    try:
        where = locate(data, data_root)
    except DataNotFound as exc:
        root = data.get("root") or data_root
        if data["format"] == "imagefolder" and root and Path(root).expanduser().is_dir():
            # a folder given explicitly that is not a data set: bad input, also on --dry-run
            raise InputError(path, "data.root", f"{root}: {exc}") from None
        if dry_run:
            warnings.append(f"data set {data['name']!r} not found: {exc}")
        else:
            raise InputError(path, "data", f"data set {data['name']!r} not found: {exc}")
        return
    if data["format"] == "imagefolder":  # the tree's layout, read without decoding an image (also on --dry-run)
        try:
            check_layout(Path(where))
        except DataInvalid as exc:
            raise InputError(path, "data.root", str(exc)) from None
