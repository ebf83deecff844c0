"""Does a Slurm request fit the cluster? Checked against the partition's nodes before anything is submitted.

sbatch accepts a request that no node of the partition can hold where the partition does not enforce its
limits, and the job then pends forever (reason PartitionConfig); where it does, the refusal comes after
some arrays of a submission were queued. So `seedrun sweep` (and `--dry-run`, `retry`, `eval`) compare
each array's request with the nodes as ONE `sinfo` call reports them: CPUs (tasks a node x CPUs a task),
memory a node, GPUs a node (from the gres), the partition's time limit, the number of nodes that hold all
of it at once, and the array's size against MaxArraySize. A request no node can satisfy is one InputError
naming the launcher key, what was asked and what the nodes have: exit 2, nothing submitted.

`sinfo` is the one beside the `sbatch` that would submit (the same installation, also where several Slurm
clients are on PATH). Where there is none, or it cannot reach its controller (a laptop's dry run, a
controller down), the check is skipped with one line saying so; sbatch has the last word then.
No torch, no SQLAlchemy: the dry run imports this.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from seedrun.errors import InputError
from seedrun.sweeps.launcher_values import tasks_per_node

#: %P partition (the default marked *), %c CPUs, %m memory (MB), %G gres, %l time limit, %D nodes, %N their names;
#: `-e` gives exact values (no "64+" for groups of unequal nodes), one line per partition and node kind.
SINFO_FORMAT = "%P|%c|%m|%G|%l|%D|%N"
SINFO_TIMEOUT_S = 30


@dataclass(frozen=True)
class NodeKind:
    """Nodes of one partition that sinfo reports alike."""

    partition: str
    default: bool
    cpus: int
    mem_mb: int
    gpus: int
    limit_min: Optional[int]  # the partition's time limit; None: none
    count: int
    names: str


def gpu_count(gres: str) -> int:
    """GPUs in a gres string: `gpu:8`, `gpu:a100:4(S:0-1)`, `gpu:2,mps:100`, `(null)`."""
    total = 0
    for item in re.sub(r"\([^)]*\)", "", gres).split(","):
        parts = item.strip().split(":")
        if parts[0] == "gpu" and len(parts) >= 2 and parts[-1].isdigit():
            total += int(parts[-1])
    return total


def limit_minutes(text: str) -> Optional[int]:
    """sinfo's time limit (`infinite`, `1-00:00:00`, `2:00:00`, `30:00`) in minutes; None: no limit."""
    text = text.strip().lower()
    if text in ("infinite", "unlimited", "n/a", ""):
        return None
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    hours, minutes, seconds = ([0] * (3 - len(parts)) + parts)[-3:]
    return (int(days or 0) * 24 + hours) * 60 + minutes + (1 if seconds else 0)


def _number(text: str) -> int:
    return int(re.match(r"\d+", text.strip()).group())


def parse_sinfo(output: str) -> list[NodeKind]:
    kinds = []
    for line in output.splitlines():
        fields = line.strip().split("|")
        if len(fields) < 7 or not fields[0]:
            continue
        partition, cpus, mem, gres, limit, count, names = fields[:7]
        kinds.append(NodeKind(partition.rstrip("*"), partition.endswith("*"), _number(cpus), _number(mem),
                              gpu_count(gres), limit_minutes(limit), _number(count), names.strip()))
    return kinds


def _sinfo_command() -> Union[str, None]:
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        return None
    beside = Path(sbatch).parent / "sinfo"
    return str(beside) if beside.is_file() else None


def read_nodes() -> tuple[Optional[tuple[NodeKind, ...]], str]:
    """(the cluster's node kinds, "") or (None, why they could not be read). One sinfo call per command: the
    dry run's header and the submission ask the same answer."""
    sinfo = _sinfo_command()
    if sinfo is None:
        return None, "no sinfo beside an sbatch on PATH (not a Slurm machine)"
    return _read_nodes(sinfo)


@lru_cache(maxsize=4)
def _read_nodes(sinfo: str) -> tuple[Optional[tuple[NodeKind, ...]], str]:
    from seedrun.launchers.cluster import SlurmError, _run

    try:
        proc = _run([sinfo, "-h", "-a", "-e", "-o", SINFO_FORMAT], timeout=SINFO_TIMEOUT_S)
    except SlurmError as exc:
        return None, str(exc)
    if proc.returncode != 0:
        return None, f"sinfo failed: {(proc.stderr.strip().splitlines() or ['no output'])[-1][:200]}"
    kinds = parse_sinfo(proc.stdout)
    return (tuple(kinds), "") if kinds else (None, "sinfo listed no nodes")


@dataclass(frozen=True)
class Request:
    """What one array asks of Slurm, per task and per node."""

    nodes: int
    tasks: int  # a node
    cpus_per_task: int
    gpus: int  # a node
    mem_gb: Optional[float]  # a node
    timeout_min: int
    partition: Optional[str]

    @classmethod
    def of(cls, launcher: dict[str, Any]) -> "Request":
        return cls(nodes=int(launcher.get("nodes") or 1), tasks=tasks_per_node(launcher),
                   cpus_per_task=int(launcher.get("cpus_per_task") or 1), gpus=int(launcher.get("gpus_per_node") or 0),
                   mem_gb=float(launcher["mem_gb"]) if launcher.get("mem_gb") else None,
                   timeout_min=int(launcher.get("timeout_min") or 60), partition=launcher.get("partition") or None)

    @property
    def cpus(self) -> int:
        return self.tasks * self.cpus_per_task

    def describe(self) -> str:
        per_task = f"{self.cpus_per_task} CPUs" + (f", {self.gpus // max(self.tasks, 1)} GPU" if self.gpus else "")
        memory = f", {self.mem_gb:g} GB" if self.mem_gb else ""
        return (f"{self.nodes} node{'s' * (self.nodes != 1)} x {self.tasks} task{'s' * (self.tasks != 1)}: per task "
                f"{per_task}; per node {self.gpus} GPU{'s' * (self.gpus != 1)}, {self.cpus} CPUs{memory}")


def _gb(mb: int) -> str:
    return f"{mb / 1024:.0f} GB"


def _have(kinds: list[NodeKind], what) -> str:
    values = sorted({what(kind) for kind in kinds})
    return "/".join(str(v) for v in values)


def _partition_kinds(request: Request, kinds: Iterable[NodeKind], key_of) -> tuple[str, list[NodeKind]]:
    kinds = list(kinds)
    known = list(dict.fromkeys(kind.partition for kind in kinds))
    if request.partition is None:
        default = [kind for kind in kinds if kind.default]
        if not default:
            raise _Refusal(key_of("partition"), f"no partition asked and the cluster has no default; it has {', '.join(known)}")
        return f"{default[0].partition} (default)", default
    names = request.partition.split(",")  # sbatch takes the first of a list that can run the job
    chosen = [kind for kind in kinds if kind.partition in names]
    if not chosen:
        raise _Refusal(key_of("partition"), f"partition {request.partition} asked; the cluster has {', '.join(known)}")
    return ",".join(n for n in names if n in known), chosen


class _Refusal(Exception):
    def __init__(self, key: str, text: str):
        super().__init__(text)
        self.key, self.text = key, text


def fit(request: Request, kinds: Iterable[NodeKind], key_of=lambda key: f"launcher.{key}") -> str:
    """A line saying where `request` fits; raises _Refusal(key, what was asked and what the nodes have)."""
    where, chosen = _partition_kinds(request, kinds, key_of)
    asks = [("gpus_per_node", lambda k: k.gpus >= request.gpus, f"{request.gpus} GPUs a node",
             lambda: f"{_have(chosen, lambda k: k.gpus)} GPUs"),
            ("cpus_per_task", lambda k: k.cpus >= request.cpus,
             f"{request.tasks} tasks x {request.cpus_per_task} CPUs = {request.cpus} CPUs a node",
             lambda: f"{_have(chosen, lambda k: k.cpus)} CPUs"),
            ("mem_gb", lambda k: request.mem_gb is None or k.mem_mb >= request.mem_gb * 1024,
             f"{request.mem_gb:g} GB a node" if request.mem_gb else "", lambda: f"{_have(chosen, lambda k: _gb(k.mem_mb))}"),
            ("timeout_min", lambda k: k.limit_min is None or k.limit_min >= request.timeout_min,
             f"{request.timeout_min} minutes", lambda: f"a time limit of {_have(chosen, lambda k: k.limit_min)} minutes")]
    for key, holds, asked, have in asks:
        if not any(holds(kind) for kind in chosen):
            raise _Refusal(key_of(key), f"{asked} asked; partition {where}'s nodes have {have()}")
    fitting = [kind for kind in chosen if all(holds(kind) for _, holds, _, _ in asks)]
    count = sum(kind.count for kind in fitting)
    if not fitting:
        raise _Refusal(key_of("gpus_per_node"), f"{request.describe()} asked; no node of partition {where} has it "
                       "all at once (" + "; ".join(f"{k.names}: {k.gpus} GPUs, {k.cpus} CPUs, {_gb(k.mem_mb)}"
                                                   for k in chosen) + ")")
    if count < request.nodes:
        raise _Refusal(key_of("nodes"), f"{request.nodes} nodes of {request.describe().split(': ', 1)[1]} asked; "
                       f"partition {where} has {count} such node{'s' * (count != 1)}")
    limit = fitting[0].limit_min
    return (f"fits partition {where}: {count} node{'s' * (count != 1)} with {fitting[0].gpus} GPUs, {fitting[0].cpus} CPUs, "
            f"{_gb(fitting[0].mem_mb)}" + ("" if limit is None else f", {limit} min limit"))


def check_arrays(arrays, path: str, stage_blocks: dict, max_array: int) -> tuple[list[str], str]:
    """Check every planned array (seedrun.launchers.slurm.ArrayPlan) against the cluster's nodes.

    Returns (one line per distinct request that fits, "") or ([], why the check was skipped); raises InputError
    for the first request no node can satisfy, naming the key where the sweep file set it.
    """
    seen: dict[tuple, str] = {}
    for array in arrays:
        if len(array.runs) > max_array:
            raise InputError(path, f"launcher.{array.stage}", f"an array of {len(array.runs)} tasks; MaxArraySize is {max_array}")
    kinds, why = read_nodes()
    if kinds is None:
        return [], why
    for array in arrays:
        request = Request.of(array.launcher)
        key = (array.stage, request)
        if key in seen:
            continue
        block = stage_blocks.get(array.stage) or {}

        def key_of(name: str, block=block, stage=array.stage) -> str:
            return f"launcher.{stage}.{name}" if name in block else f"launcher.{name}"

        try:
            seen[key] = f"{array.stage}: {fit(request, kinds, key_of)}"
        except _Refusal as refusal:
            raise InputError(path, refusal.key, f"{refusal.text} ({array.stage} stage)") from None
    return list(dict.fromkeys(seen.values())), ""
