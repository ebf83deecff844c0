"""How long `seedrun sweep` takes to hand a 1,000-run sweep to Slurm, and with how many sbatch calls.

Against the one-node test cluster (tests/cluster/start-slurm.sh, as root). A 1,000-run distillation
sweep (5 teacher temperatures x 10 learning rates x 20 seeds, an official teacher checkpoint, so no
pre-training stage) is submitted by a fresh process doing what `seedrun sweep` does once the sweep is
expanded: read the plan, record the runs, submit (seedrun.launchers.slurm.submit_slurm). Timed from the
process's start to "all arrays submitted"; sbatch calls counted by a logging shim first on PATH.
Target: under 3 s, 1 sbatch call.

Baseline, in the same run: submitit without `executor.batch()`, one sbatch per run, for 50 runs,
extrapolated to 1,000.

Sweep expansion (Hydra composing each run's config) comes before submission in `seedrun sweep` and
is not part of this measure; its cost per run is printed on its own.

Every job is submitted held (`--hold`) and cancelled at the end: nothing runs.
Run: .venv/bin/python benchmarks/submit.py
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = 1000
BASELINE_RUNS = 50
TARGET_S = 3.0
ROOT = Path(__file__).resolve().parent.parent

SHIM = """#!/bin/bash
echo "$*" >> {log}
exec {real} "$@"
"""

CHILD = r"""
import pickle, sys, time
t0 = float(sys.argv[2])
from rich.console import Console
from seedrun.store.plan import read_plan, record
from seedrun.launchers.slurm import submit_slurm
from seedrun.store.locations import default_db_url
phases = [("imports", time.time())]
with open(sys.argv[1], "rb") as f:
    sweep = pickle.load(f)
db_url = default_db_url()
plan = read_plan(sweep, db_url)  # what cmd_sweep does after expanding the sweep
phases.append(("read plan", time.time()))
record(plan, db_url)
phases.append(("record runs (plan.record)", time.time()))
masters = submit_slurm(plan, plan.to_run(), db_url, None, Console(stderr=True))
phases.append(("submit (seedrun.launchers.slurm)", time.time()))
previous = t0
for name, at in phases:
    print(f"PHASE {at - previous:.3f} {name}", flush=True)
    previous = at
print(f"SUBMITTED {time.time() - t0:.3f} {','.join(masters)}", flush=True)
"""


def build_sweep(teacher: str):
    """1,000 distillation runs as `seedrun sweep` would expand them (one compose, then the grid)."""
    from seedrun.sweeps.compose import compose_config
    from seedrun.sweeps.spec import RunSpec
    from seedrun.sweeps.sweep_file import Sweep

    overrides = ["data=tiny", f"teacher.checkpoint={teacher}", "teacher.width=8", "student.width=8", "launcher=slurm"]
    base = compose_config(overrides)
    started = time.perf_counter()
    compose_config(overrides + ["seed=1"])  # a second, uncached compose: what each further run costs
    compose_s = time.perf_counter() - started
    launcher = {**base["launcher"], "partition": "debug", "cpus_per_task": 1, "additional_parameters": {"hold": True}}
    runs = []
    for tau in (0.3, 0.1, 0.05, 0.01, 0.001):
        for lr in [0.01 * k for k in range(1, 11)]:
            for seed in range(RUNS // 50):
                config = {**base, "seed": seed, "launcher": launcher,
                          "distill": {**base["distill"], "tau_teacher": tau, "lr": lr}}
                runs.append(RunSpec("distill", config, axes={"distill.tau_teacher": tau, "distill.lr": lr, "seed": seed}))
    sweep = Sweep(name="bench-submit", path="bench-submit.yaml", ablation="temperature", runs=runs,
                  axes=["distill.tau_teacher", "distill.lr", "seed"], launcher={"name": "slurm"})
    return sweep, compose_s


def baseline(folder: Path, teacher_sweep) -> float:
    """submitit, no batch: one sbatch per run (what a loop over executor.submit does)."""
    import submitit

    from seedrun.job.run_job import RunJob

    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster="slurm")
    executor.update_parameters(timeout_min=60, slurm_partition="debug", cpus_per_task=1,
                               slurm_additional_parameters={"hold": True})
    started = time.perf_counter()
    jobs = [executor.submit(RunJob(run.hash, "sqlite:///unused.db")) for run in teacher_sweep.runs[:BASELINE_RUNS]]
    seconds = time.perf_counter() - started
    subprocess.run(["scancel"] + [job.job_id for job in jobs], check=False)
    return seconds


def main() -> None:
    if shutil.which("sbatch") is None:
        raise SystemExit("no sbatch: start the test cluster first (tests/cluster/start-slurm.sh)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        teacher = tmp_path / "teacher.pt"
        teacher.write_bytes(b"")  # never loaded: every job is held and cancelled
        sweep, compose_s = build_sweep(str(teacher))
        sweep_file = tmp_path / "sweep.pkl"
        sweep_file.write_bytes(pickle.dumps(sweep))
        shim_dir, log = tmp_path / "shim", tmp_path / "sbatch.log"
        shim_dir.mkdir()
        (shim_dir / "sbatch").write_text(SHIM.format(log=log, real=shutil.which("sbatch")))
        (shim_dir / "sbatch").chmod(0o755)
        env = {**os.environ, "PATH": f"{shim_dir}{os.pathsep}{os.environ['PATH']}",
               "SEEDRUN_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
        env.pop("SEEDRUN_DB", None)

        started = time.time()
        result = subprocess.run([sys.executable, "-c", CHILD, str(sweep_file), repr(started)], env=env, cwd=ROOT,
                                capture_output=True, text=True)
        wall = time.time() - started
        line = next((l for l in result.stdout.splitlines() if l.startswith("SUBMITTED")), None)
        if result.returncode != 0 or line is None:
            raise SystemExit(f"submission failed:\n{result.stdout}\n{result.stderr}")
        _, seconds, masters = line.split()
        seconds = float(seconds)
        calls = len(log.read_text().splitlines()) if log.exists() else 0
        subprocess.run(["scancel", *masters.split(",")], check=False)
        print(result.stderr.strip())
        for phase in result.stdout.splitlines():
            if phase.startswith("PHASE"):
                _, phase_s, name = phase.split(" ", 2)
                print(f"  {name:<28} {float(phase_s):5.2f} s")
        print(f"{RUNS} runs: all arrays submitted {seconds:.2f} s after the process started "
              f"(process exit {wall:.2f} s), {calls} sbatch call{'s' * (calls != 1)}   "
              f"{'ok' if seconds < TARGET_S and calls == 1 else 'OVER TARGET'} (target {TARGET_S:.0f} s, 1 call)")

        base_s = baseline(tmp_path / "baseline", sweep)
        extrapolated = base_s * RUNS / BASELINE_RUNS
        print(f"baseline, submitit without batch: {BASELINE_RUNS} runs in {base_s:.2f} s ({BASELINE_RUNS} sbatch calls) "
              f"-> {extrapolated:.1f} s and {RUNS} sbatch calls for {RUNS} runs")
        print(f"speed-up: {extrapolated / seconds:.0f}x faster, {RUNS // max(calls, 1)}x fewer sbatch calls")
        print(f"(not counted above) sweep expansion: one (uncached) Hydra compose took {compose_s:.2f} s; `seedrun sweep` "
              f"composes each run's overrides, so expanding {RUNS} runs costs about {compose_s * RUNS:.0f} s before submission")


if __name__ == "__main__":
    main()
