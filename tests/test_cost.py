"""What a sweep will cost before it is submitted (seedrun.launchers.cost): device-hours from completed
runs of the same workload only, "unknown" where none was recorded, never a guess."""

from __future__ import annotations

from seedrun.launchers.cost import estimate, workload
from seedrun.sweeps.spec import RunSpec


def _config(arch: str = "resnet18", width: int = 8, epochs: int = 10, data: str = "fashion_mnist", size: int = 16,
            **launcher) -> dict:
    return {"data": {"name": data, "image_size": size, "train_subset": 5000},
            "student": {"arch": arch, "width": width}, "teacher": {"arch": "resnet50", "width": 16},
            "distill": {"epochs": epochs}, "launcher": {"name": "local", **launcher}}


def _record(url: str, configs_and_provenance: list[tuple[dict, dict, float]]) -> None:
    from seedrun.store.engine import session_scope
    from seedrun.store.schema import Run

    with session_scope(url) as session:
        session.add_all(Run(hash=f"{i:064x}", stage="distill", run_dir=f"/r{i}", config=config, state="completed",
                            provenance=provenance, summary={"epoch_seconds": seconds})
                        for i, (config, provenance, seconds) in enumerate(configs_and_provenance))


def test_runs_are_priced_from_completed_runs_alike_and_nothing_else(tmp_path):
    url = f"sqlite:///{tmp_path / 'cost.db'}"
    cpu2 = {"gpus_used": 0, "training_ranks": 2}
    _record(url, [
        (_config(), cpu2, 30.0), (_config(), cpu2, 60.0), (_config(), cpu2, 36.0),  # median 36 s x 2 processes
        (_config(width=16), cpu2, 999.0),  # another network width
        (_config(data="cifar10"), cpu2, 999.0), (_config(size=32), cpu2, 999.0),  # other data, image size
        (_config(), {"gpus_used": 8}, 2.0),  # the same workload on GPUs: another device kind
    ])
    todo = [RunSpec("distill", _config(epochs=100)), RunSpec("distill", _config(epochs=50)),
            RunSpec("distill", _config(arch="mobilenetv3_large"))]
    got = estimate(url, todo)
    assert (got.priced, got.unknown) == (2, 1)
    assert got.hours == {"CPU-hours": (100 + 50) * 36.0 * 2 / 3600}
    assert "3.0 CPU-hours for 2 runs" in got.text() and "1 unknown" in got.text()
    on_gpus = estimate(url, [RunSpec("distill", _config(epochs=3600, gpus_per_node=8, name="slurm"))])
    assert on_gpus.hours == {"GPU-hours": 3600 * 2.0 * 8 / 3600}  # 16 GPU-seconds an epoch, whatever GPUs it holds
    nothing = estimate(url, [RunSpec("distill", _config(data="imagenet"))])
    assert nothing.hours == {} and nothing.text().startswith("cost: unknown")
    assert estimate(None, todo).priced == 0  # no database yet: nothing is known


def test_a_workload_is_the_stage_network_teacher_data_subset_size_and_device():
    base = workload("distill", _config(), "cpu")
    assert base != workload("distill", _config(), "gpu") != workload("pretrain", _config(), "cpu")
    assert workload("eval", _config(), "cpu") is None  # evaluations are not priced
    changed = _config()
    changed["teacher"]["arch"] = "resnet152"
    assert workload("distill", changed, "cpu") != base


def test_the_dry_run_and_the_sweep_header_price_the_runs_to_run(cli, tmp_path):
    """Through the CLI: a sweep whose runs have completed twins recorded (same workload, another tau) is
    priced from them; `--json` carries the same figures."""
    import json

    from conftest import TINY_SWEEP_BASE, write_sweep
    from seedrun.store.engine import session_scope
    from seedrun.store.schema import Run
    from seedrun.sweeps.sweep_file import expand

    path = write_sweep(tmp_path / "priced.yaml", "name: priced\n" + TINY_SWEEP_BASE
                       + "  teacher.checkpoint: /nowhere/t.pt\n  distill.epochs: 60\n"
                       + "grid:\n  distill.tau_teacher: [0.1, 0.01]\nlauncher: {name: local}\n")
    assert "cost: unknown" in cli("sweep", str(path), "--dry-run", check=False).stdout
    (twin,) = [run for run in expand(str(path), dry_run=True).runs if run.config["distill"]["tau_teacher"] == 0.1]
    with session_scope(f"sqlite:///{cli.db}") as session:
        session.add(Run(hash="ef" * 32, stage="distill", run_dir="/elsewhere", config={**twin.config, "seed": 99},
                        state="completed", provenance={"gpus_used": 0, "training_ranks": 1},
                        summary={"epoch_seconds": 30.0}))
    out = cli("sweep", str(path), "--dry-run", check=False).stdout
    assert "cost: about 1.0 CPU-hours for 2 runs, from completed runs alike" in out, out  # 2 x 60 x 30 s
    plan = json.loads(cli("sweep", str(path), "--dry-run", "--json", check=False).stdout)
    assert plan["cost"] == {"hours": {"CPU-hours": 1.0}, "priced": 2, "unknown": 0}
