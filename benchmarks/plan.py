"""How long `seedrun sweep FILE --dry-run` takes for 1,000 and 10,000 runs, against Hydra composing them.

The sweep is sweeps/temperature.yaml (ImageNet, the official MoCo-v2 ResNet-50 teacher, Slurm) with
its teacher temperature spread over 250 (2,500) values and 4 seeds: 1,000 (10,000) runs. Each dry run
is a fresh process, as a user types it (best of 3; no database, so nothing to read): read, check,
expand, hash and print the plan. Hydra's figure is `hydra.compose()` of the same overrides, one config
per run, as a Hydra multirun or a naive expansion does it; it is measured on a sample of configs (200
by default, SEEDRUN_BENCH_HYDRA_SAMPLE) and scaled to the sweep's size, since it grows linearly
(about 30 ms a config). Also printed: `seedrun --help`, interpreter start-up included, the unit of
../shared/checks/G2-plan-speed (a 1,000-run dry run must take at most 30 times it).
Run: .venv/bin/python benchmarks/plan.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEEDRUN = [sys.executable, "-m", "seedrun"]
SAMPLE = int(os.environ.get("SEEDRUN_BENCH_HYDRA_SAMPLE", 200))


def sweep_file(folder: Path, taus: int, seeds: int) -> Path:
    import yaml

    data = yaml.safe_load((ROOT / "sweeps" / "temperature.yaml").read_text())
    data["grid"]["distill.tau_teacher"] = [round(0.001 + i * 1e-5, 7) for i in range(taus)]
    data["seeds"] = list(range(seeds))
    path = folder / f"plan-{taus * seeds}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def best_wall(args: list[str], env: dict[str, str], repeat: int = 3) -> tuple[float, str]:
    best, out = float("inf"), ""
    for _ in range(repeat):
        start = time.perf_counter()
        result = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT)
        best = min(best, time.perf_counter() - start)
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        out = result.stdout
    return best, out


def hydra_per_config(path: Path, sample: int) -> float:
    """Seconds per config for hydra.compose() of the sweep's overrides (first `sample` runs)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from seedrun.sweeps.compose import PACKAGED_RECIPES
    from seedrun.sweeps.sweep_file import _as_overrides, _override_value, read_sweep_file

    data = read_sweep_file(path)
    base = [override for _, override in _as_overrides(data["base"], str(path), "base")] + ["launcher=slurm"]
    runs = [base + [f"distill.tau_teacher={_override_value(tau)}", f"seed={seed}"]
            for tau in data["grid"]["distill.tau_teacher"] for seed in data["seeds"]][:sample]
    with initialize_config_dir(config_dir=str(PACKAGED_RECIPES), version_base=None):
        compose(config_name="config", overrides=runs[0])  # Hydra's own start-up is not counted
        start = time.perf_counter()
        for overrides in runs:
            OmegaConf.to_container(compose(config_name="config", overrides=overrides), resolve=True)
        return (time.perf_counter() - start) / len(runs)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        env = {**os.environ, "SEEDRUN_HOME": str(folder / "home"), "SEEDRUN_DB": f"sqlite:///{folder / 'none.db'}"}
        help_s, _ = best_wall(SEEDRUN + ["--help"], env)
        print(f"seedrun --help: {help_s:.2f} s (python start-up included)")
        per_config = None
        for taus, seeds in ((250, 4), (2500, 4)):
            path = sweep_file(folder, taus, seeds)
            runs = taus * seeds
            wall, out = best_wall(SEEDRUN + ["sweep", str(path), "--dry-run"], env)
            if per_config is None:
                per_config = hydra_per_config(path, SAMPLE)
            hydra = per_config * runs
            print(f"{runs:>6,} runs: seedrun sweep --dry-run {wall:6.2f} s ({wall / help_s:4.1f}x --help, "
                  f"{len(out.splitlines())} lines); hydra.compose x {runs:,}: {hydra:7.1f} s "
                  f"({per_config * 1000:.1f} ms a config, {SAMPLE} measured); ratio {hydra / wall:,.0f}x")


if __name__ == "__main__":
    main()
