"""How long `seedrun status` and `seedrun table` take on a big database, as a user runs them.

Builds a SQLite database with 10,000 runs (one sweep per table, configs and provenance shaped like real ones) and
100,000 metrics, 100 of the runs in flight with run folders whose records (run.json) status and table
must read, then times each command as a fresh process (best of 3). The baseline, measured in the same
run, is a bare `python -c pass`: interpreter start-up that no command can avoid. The bound is a
ratio to it, which holds across machines where an absolute time does not: each command at most
15x `python -c pass`. Also: `status` when the 100 folders hold newer records than the database
(it brings them in first, through SQLAlchemy Core), and `seedrun sync` of 10,000 run folders into an
empty database.
Run: .venv/bin/python benchmarks/cli_latency.py
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = int(os.environ.get("SEEDRUN_BENCH_RUNS", 10_000))  # the size by default
IN_FLIGHT = 100
METRICS_PER_RUN = 10
MAX_RATIO = 15.0


def build_database(url: str, folders: Path) -> None:
    from seedrun.store.schema import Metric, Run, Sweep, SweepRun
    from seedrun.store.engine import engine_for
    from sqlalchemy import insert

    from seedrun.sweeps.compose import compose_config

    engine = engine_for(url)
    rng = random.Random(0)
    # Real configs, as a sweep records them: the paper's recipes composed by Hydra.
    template = compose_config(["data=imagenet", "teacher=resnet50_mocov2", "student=resnet18"])
    ablations = {
        "temperature": ("tau_teacher", [0.3, 0.1, 0.05, 0.01, 0.001]),
        "queue": ("queue_size", [4096, 16384, 65536, 131072]),
        "lr": ("lr", [0.003, 0.01, 0.03, 0.1, 0.3]),
        "wd": ("weight_decay", [1e-6, 1e-5, 1e-4, 5e-4]),
        "distillation": ("strategy", ["l2", "kmeans", "online_clustering", "binary_contrastive", "seed_mocov2", "seed"]),
    }
    runs, members, metrics, sweeps = [], [], [], []
    per_sweep = RUNS // len(ablations)
    run_id = 0
    for sweep_id, (ablation, (key, values)) in enumerate(ablations.items(), start=1):
        sweeps.append({"id": sweep_id, "name": f"bench-{ablation}", "ablation": ablation, "path": "bench.yaml",
                       "axes": [f"distill.{key}", "seed"]})
        for position in range(per_sweep):
            run_id += 1
            value = values[position % len(values)]
            config = json.loads(json.dumps(template))
            config.update(stage="distill", seed=position // len(values))
            config["distill"][key] = value
            state = "completed" if rng.random() < 0.9 else rng.choice(["failed", "pending"])
            if run_id % (RUNS // IN_FLIGHT) == 0:
                state = "running"
            summary = {"loss": 0.0}
            run_dir = folders / f"{run_id:016x}"
            runs.append({"id": run_id, "hash": f"{run_id:064x}", "stage": "distill", "state": state, "attempts": 1,
                         "epoch": 200, "run_dir": str(run_dir), "config": config,
                         "provenance": provenance(run_id, run_dir), "summary": summary, "updated_at": 1000.0,
                         "attempt": 1, "seq": 10})
            members.append({"sweep_id": sweep_id, "run_id": run_id, "position": position,
                            "axes": {f"distill.{key}": value, "seed": config["seed"]}})
            for i in range(METRICS_PER_RUN - 2):
                metrics.append({"run_id": run_id, "name": "loss", "value": rng.random(), "epoch": i})
            metrics.append({"run_id": run_id, "name": "knn_top1", "value": 40 + 20 * rng.random(), "epoch": 200})
            metrics.append({"run_id": run_id, "name": "knn_top5", "value": 70 + 20 * rng.random(), "epoch": 200})
            summary.update({m["name"]: m["value"] for m in metrics[-METRICS_PER_RUN:]})
    write_folders(runs)
    with engine.begin() as connection:
        connection.execute(insert(Sweep), sweeps)
        connection.execute(insert(Run), runs)
        connection.execute(insert(SweepRun), members)
        connection.execute(insert(Metric), metrics)


def provenance(run_id: int, run_dir: Path) -> dict:
    """What a finished Slurm job records of itself (seedrun.job.provenance), about 1.6 KB as in real
    databases: status reads the wide runs rows, and an empty provenance would flatter it."""
    job, submitit = str(1000 + run_id // 64), f"/shared/seedrun/submitit/slurm/bench/20261130-0000-{run_id // 64:08x}"
    record = {
        "preemptions": 0, "timeouts": 0, "failures": 0, "attempt_open": False,
        "launcher": {"account": None, "additional_parameters": {}, "array_parallelism": 256, "constraint": None,
                     "cpus_per_task": 10, "gpus_per_node": 8, "max_failures": 0, "max_preemptions": -1,
                     "max_timeouts": 3, "mem_gb": 480, "name": "slurm", "nodes": 1, "partition": "gpu", "qos": None,
                     "signal_delay_s": 120, "tasks_per_node": 8, "timeout_min": 4320},
        "data_root": "/datasets/imagenet",
        "submission": {"id": f"20261130-0000-{run_id // 64:08x}", "folder": submitit, "job_id": job,
                       "array_job_id": job, "sweep": "bench"},
        "seedrun_version": "0.1.0", "python": "3.11.7", "torch": "2.14.1", "host": f"gpu{run_id % 97:03d}",
        "start": "2026-11-30T06:38:19.067373", "slurm_job_id": f"{job}_{run_id % 64}", "slurm_array_job_id": job,
        "slurm_array_task_id": str(run_id % 64), "slurm_restart_count": None, "packages_sha256": "8662ca43ea7d6847",
        "git_commit": "39a110d744ed651179103614467a76f6622a5811", "git_dirty": False, "world": 8, "nodes": 1,
        "submitit_folder": f"{submitit}/{job}", "log_out": f"{submitit}/{job}/{job}_0_log.out",
        "log_err": f"{submitit}/{job}/{job}_0_log.err", "attempt_started": 1796020708.2625587,
        "heartbeat": 1796020708.2625582, "teacher_path": f"{run_dir.parent}/7cad5ad528bd0d65/model.pt",
        "teacher_sha256": "1a9980118e10b9f68b28cab00ababe5a4b69afc6c3697a0818e2b10112b0154e",
        "wall_hours": 31.2, "gpu_hours": 249.6, "gpus": 8, "gpu_name": "NVIDIA H100 80GB HBM3", "cuda": "13.0",
        "layout": "8x1 gpu", "gpus_used": 8, "training_ranks": 8, "end": "2026-12-01T13:50:11.262653",
    }
    return record


def write_folders(runs: list[dict]) -> None:
    """Every run's folder (config.json, run.json), as jobs leave them: `sync` reads them all, status and
    table those of the runs in flight."""
    from seedrun.atomic import atomic_write_json

    for run in runs:
        record = {key: run.get(key) for key in ("hash", "stage", "state", "attempts", "epoch", "provenance", "summary")}
        record.update(depends_on=None, job_id=None, error=None, failure_reason=None, started_at=None, finished_at=None,
                      version=[run["attempt"], run["seq"]])
        atomic_write_json(Path(run["run_dir"]) / "config.json", run["config"], fsync=False)
        atomic_write_json(Path(run["run_dir"]) / "run.json", record, fsync=False)


def touch_in_flight(folders: Path) -> None:
    """The runs in flight trained an epoch since the database last heard of them."""
    from seedrun.atomic import atomic_write_json

    for index in range(1, IN_FLIGHT + 1):
        run_dir = folders / f"{index * (RUNS // IN_FLIGHT):016x}"
        record = json.loads((run_dir / "run.json").read_text())
        record.update(epoch=record["epoch"] + 1, version=[record["version"][0], record["version"][1] + 1])
        atomic_write_json(run_dir / "run.json", record, fsync=False)


def best_of(command: list[str], env: dict, repeat: int = 3, before=None) -> float:
    times = []
    for _ in range(repeat):
        if before is not None:
            before()
        start = time.perf_counter()
        result = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        times.append(time.perf_counter() - start)
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed: {result.stderr}")
    return min(times)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        folders = Path(tmp) / "runs"
        started = time.perf_counter()
        build_database(url, folders)
        print(f"database: {RUNS} runs, {RUNS * METRICS_PER_RUN} metrics, {IN_FLIGHT} in flight with folders to read, "
              f"built in {time.perf_counter() - started:.1f} s")
        # Timed as on a user's machine, where Python caches bytecode after the first run (best of 3
        # then excludes compiling); some sandboxes switch the cache off with this variable.
        env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
        env.update(SEEDRUN_DB=url, COLUMNS="120")
        seedrun = [sys.executable, "-m", "seedrun"]
        baseline = best_of([sys.executable, "-c", "pass"], env)
        print(f"baseline `python -c pass`: {baseline:.3f} s")
        # As a user types them: status reconciles the runs in flight (they have no job ids here,
        # so no scheduler is asked; on a cluster, add one sacct call).
        commands = {"status": ["status"], "status --json": ["status", "--json"]}
        for table in ("temperature", "queue", "lr", "wd", "distillation", "main", "teacher"):
            commands[f"table --ablation {table}"] = ["table", "--ablation", table]
        worst = 0.0
        timings = {label: best_of(seedrun + args, env) for label, args in commands.items()}
        label = f"status, {IN_FLIGHT} newer folders"  # it writes them into the database first
        timings[label] = best_of(seedrun + ["status"], env, before=lambda: touch_in_flight(folders))
        for label, seconds in timings.items():
            ratio = seconds / baseline
            worst = max(worst, ratio)
            verdict = "ok" if ratio <= MAX_RATIO else "OVER THE BOUND"
            print(f"seedrun {label:<28} {seconds:6.3f} s   {ratio:5.1f}x `python -c pass`   {verdict}")
        print(f"slowest: {worst:.1f}x `python -c pass` against a bound of {MAX_RATIO:.0f}x")
        sync_env = {**env, "SEEDRUN_DB": f"sqlite:///{Path(tmp) / 'synced.db'}"}
        started = time.perf_counter()
        subprocess.run(seedrun + ["sync", str(folders)], env=sync_env, check=True, stdout=subprocess.DEVNULL)
        print(f"seedrun sync of {RUNS} run folders into an empty database: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
