"""pytest plugin: a real Slurm cluster (two nodes on this host) for tests marked ``slurm``.

Load it from tests/conftest.py with ``pytest_plugins = ["slurm_fixtures"]``.

The session fixture ``slurm_cluster`` runs tests/cluster/start-slurm.sh once
per test session. That script is idempotent (it does nothing when the cluster
is already up) and serialized by a lock, so several sessions or xdist workers
may call it at once. The cluster is left running after the session: the next
session then starts in ~0.1 s; tests/cluster/stop-slurm.sh stops it.

Skips only where the cluster cannot exist at all (not Linux, not root). Where
it should exist and does not start, the fixture FAILS with the script's
output: CI must never turn a broken cluster into silent skips.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CLUSTER_DIR = Path(__file__).resolve().parent / "cluster"
START_SCRIPT = CLUSTER_DIR / "start-slurm.sh"
STOP_SCRIPT = CLUSTER_DIR / "stop-slurm.sh"
# First start on a bare machine installs Debian packages (about a minute);
# later starts take ~2 s, or ~0.1 s when the cluster is already up.
START_TIMEOUT_S = 900


@dataclass(frozen=True)
class SlurmCluster:
    """The running test cluster, as tests need to know it."""

    partition: str = "debug"
    node: str = "localhost"  # the node of partitions preemptible and urgent
    nodes: tuple[str, ...] = ("localhost", os.environ.get("SLURM_NODE2", "seedrun-n2"))  # partition debug's
    state_dir: Path = Path(os.environ.get("SLURM_TEST_DIR", "/var/lib/seedrun-slurm"))
    startup_line: str = ""
    python: str = field(default=sys.executable)

    def executor(self, folder: str | os.PathLike[str], **params: Any) -> Any:
        """A submitit AutoExecutor that submits to this cluster's partition.

        Jobs run ``self.python`` (submitit uses ``sys.executable``): run pytest
        with the project venv's python so jobs can import the project.
        """
        import submitit

        ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
        params.setdefault("slurm_partition", self.partition)
        params.setdefault("timeout_min", 10)
        ex.update_parameters(**params)
        return ex


def start_cluster() -> SlurmCluster:
    """Run start-slurm.sh; raise RuntimeError with its output if it fails."""
    try:
        proc = subprocess.run(
            ["bash", str(START_SCRIPT)], capture_output=True, text=True,
            timeout=START_TIMEOUT_S, stdin=subprocess.DEVNULL, check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"{START_SCRIPT} did not finish in {START_TIMEOUT_S}s:\n"
                           f"{e.stdout or ''}\n{e.stderr or ''}") from e
    if proc.returncode != 0:
        raise RuntimeError(f"{START_SCRIPT} failed with exit code {proc.returncode}\n"
                           f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    lines = proc.stdout.strip().splitlines()
    return SlurmCluster(startup_line=lines[-1] if lines else "")


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    """Start (or reuse) the Slurm test cluster; see the module doc."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the Slurm test cluster needs Linux")
    if os.geteuid() != 0:
        pytest.skip("the Slurm test cluster needs root (it installs and starts daemons)")
    try:
        return start_cluster()
    except RuntimeError as e:
        pytest.fail(f"Slurm test cluster could not start:\n{e}", pytrace=False)
