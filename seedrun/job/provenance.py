"""Where and with what an attempt ran, and what it cost: host, versions, git commit, the Slurm job,
GPUs held and their hours, and the digest of the teacher it distilled from.

Imports neither torch nor SQLAlchemy: the job records its start before training loads torch (what
torch adds, the CUDA version and GPU name, is read from sys.modules when the attempt ends).
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from pathlib import Path
from typing import Any, Optional

import submitit

from seedrun import __version__
from seedrun.store.folders import hostname
from seedrun.store.folders import utcnow


def add_hours(prov: dict[str, Any], seconds: float, gpus_used: Optional[int] = None) -> None:
    """Wall hours, and GPU hours = wall x the GPUs the run used (one per training rank on CUDA, across
    nodes), not the GPUs the job held: a run that used 1 of 8 allocated GPUs is charged 1. Without a
    count, the one the attempt recorded at its start (`gpus_used`), else what this node holds."""
    hours = max(0.0, seconds) / 3600
    used = gpus_used if gpus_used is not None else prov.get("gpus_used", gpus())
    prov["wall_hours"] = prov.get("wall_hours", 0.0) + hours
    prov["gpu_hours"] = prov.get("gpu_hours", 0.0) + hours * used


def nodes() -> int:
    """Nodes of this job (Slurm's count), 1 outside Slurm."""
    for key in ("SLURM_JOB_NUM_NODES", "SLURM_NNODES"):
        value = os.environ.get(key, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def layout(world: int, training_ranks: int, device: str) -> dict[str, Any]:
    """How the attempt is spread, recorded at its start (no torch needed): processes, nodes, processes
    per node, and the GPUs it will use: one per training rank when it trains on CUDA (device auto or cuda
    and a GPU held), else none. `layout` is what `seedrun status` shows beside the job: G x N
    (processes per node x nodes, "gpu" or "cpu"), for runs of several processes."""
    n = nodes()
    per_node = max(1, world // n)
    uses_gpu = device != "cpu" and gpus() > 0
    info: dict[str, Any] = {"world": world, "nodes": n, "ranks_per_node": per_node, "training_ranks": training_ranks,
                            "gpus_used": training_ranks if uses_gpu else 0, "gpus_held": gpus() * n}
    if world > 1:  # absent for one process: status's SQL then skips the run's provenance (instr finds no key)
        info["layout"] = f"{per_node}x{n} {'gpu' if uses_gpu else 'cpu'}"
    return info


def gpus_used(training_ranks: int, estimate: int) -> int:
    """The GPUs the attempt used, once it trained: one per training rank if this process initialised CUDA
    (rank 0 stands for all: every rank runs on the same kind of device), else none; the start's estimate
    when torch was never loaded."""
    torch = sys.modules.get("torch")
    if torch is None:
        return estimate
    return training_ranks if torch.cuda.is_initialized() else 0



def job_environment() -> Any:
    """submitit's JobEnvironment when running under submitit, else None."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    try:
        return submitit.JobEnvironment()
    except RuntimeError:
        return None



def job_id() -> str:
    env = job_environment()
    if env is None:
        return f"pid:{os.getpid()}"
    return f"local:{env.job_id}" if env.cluster == "local" else str(env.job_id)



def submitit_paths() -> dict[str, Any]:
    env = job_environment()
    if env is None:
        return {}
    try:
        paths = env.paths
        return {"submitit_folder": str(paths.folder), "log_out": str(paths.stdout), "log_err": str(paths.stderr)}
    except (KeyError, ValueError):
        return {}



def gpus() -> int:
    """GPUs this attempt holds: Slurm's allocation, else CUDA_VISIBLE_DEVICES, else what torch sees."""
    on_node = os.environ.get("SLURM_GPUS_ON_NODE", "")
    if on_node.isdigit():
        return int(on_node)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return torch.cuda.device_count()
    return 0



def accelerator() -> dict[str, Any]:
    """GPUs this node holds, the CUDA version and the GPU model (read once training loaded torch)."""
    info: dict[str, Any] = {"gpus": gpus()}
    torch = sys.modules.get("torch")  # loaded by training; never imported just for this
    if torch is not None:
        info["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            info["gpu_name"] = torch.cuda.get_device_name(0)
    return info



def teacher_file(config: dict[str, Any], stage: str, teacher_dir: Optional[Path]) -> Optional[Path]:
    if stage != "distill":  # pre-training has no teacher; an evaluation's upstream is the run it evaluates
        return None
    if teacher_dir is not None:
        return teacher_dir / "model.pt"
    checkpoint = (config.get("teacher") or {}).get("checkpoint")
    return Path(checkpoint) if checkpoint else None



def teacher_digest(path: Path, prov: dict[str, Any]) -> dict[str, Any]:
    """sha256 of the teacher's weights file (reused while its path, size and mtime are unchanged)."""
    try:
        stat = path.stat()
    except OSError:
        return {"teacher_path": str(path), "teacher_sha256": None}
    key = [str(path), stat.st_size, stat.st_mtime_ns]
    if prov.get("teacher_file_key") == key and prov.get("teacher_sha256"):
        return {}
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"teacher_path": str(path), "teacher_sha256": digest.hexdigest(), "teacher_file_key": key}



def provenance() -> dict[str, Any]:
    """Where and with what this attempt ran: enough to reproduce it and to say what it cost.

    Does not import torch (the job records its start before training loads it); the CUDA version
    and GPU name are added when the attempt ends.
    """
    from importlib import metadata

    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = None
    root = Path(__file__).resolve().parent.parent.parent
    info: dict[str, Any] = {
        "seedrun_version": __version__, "python": platform.python_version(), "torch": torch_version,
        "host": hostname(), "start": utcnow().isoformat(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "slurm_array_job_id": os.environ.get("SLURM_ARRAY_JOB_ID"),
        "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"), "slurm_restart_count": os.environ.get("SLURM_RESTART_COUNT"),
        "packages_sha256": _packages_hash(),
    }
    info.update(_git(root))
    return info



def _git(root: Path) -> dict[str, Any]:
    import subprocess

    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    if commit.returncode != 0:
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}



def _packages_hash() -> str:
    from importlib import metadata

    names = sorted(_name_and_version(dist) for dist in metadata.distributions())
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def _name_and_version(dist) -> str:
    """``f"{dist.metadata['Name']}=={dist.version}"`` from the metadata's header lines alone: importlib parses
    the whole file as an e-mail message, twice, about 0.3 s of every job's start for a hundred packages."""
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    name = version = None
    for line in text.splitlines():
        if not line.strip():  # the headers end at the first blank line
            break
        key, colon, value = line.partition(":")
        if colon and key == "Name" and name is None:
            name = value.strip()
        elif colon and key == "Version" and version is None:
            version = value.strip()
    return f"{name}=={version}"


