"""The installed package carries its recipes.

A wheel built from this tree, installed into a fresh interpreter that does not see the source tree,
lists the recipes and plans a sweep from an unrelated folder. Folders named by $SEEDRUN_RECIPES come
before the packaged recipes: a file there replaces the packaged one, a new file adds a recipe.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "seedrun" / "recipes"

SWEEP = """\
name: wheeltest
ablation: temperature
base:
  data: tiny
  distill.batch_size: 32
  distill.queue_size: 128
  teacher.pretrain.batch_size: 32
  teacher.pretrain.queue_size: 128
grid:
  distill.tau_teacher: [0.1, 0.01]
launcher:
  name: local
"""


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kwargs)
    assert done.returncode == 0, f"{cmd} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a clean copy of what the build reads: an in-tree build reuses build/lib,
    whose leftover recipes would hide a missing package-data rule."""
    tree = tmp_path_factory.mktemp("tree")
    for name in ("pyproject.toml", "README.md", "recipes"):  # recipes: the top-level symlink, if kept
        if (ROOT / name).is_symlink():
            (tree / name).symlink_to(os.readlink(ROOT / name))
        elif (ROOT / name).is_file():
            shutil.copy2(ROOT / name, tree / name)
    shutil.copytree(ROOT / "seedrun", tree / "seedrun", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), str(tree)])
    (built,) = dist.glob("seedrun-*.whl")
    return built


def test_wheel_holds_every_recipe_once(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert len(names) == len(set(names))
    assert all(name.startswith(("seedrun/", "seedrun-")) for name in names)  # the package and its dist-info
    shipped = {name for name in names if name.startswith("seedrun/recipes/")}
    expected = {"seedrun/recipes/" + path.relative_to(RECIPES).as_posix() for path in RECIPES.rglob("*.yaml")}
    assert "seedrun/recipes/config.yaml" in expected and len(expected) > 20
    assert shipped == expected


@pytest.fixture(scope="module")
def fresh(wheel, tmp_path_factory) -> tuple[Path, Path]:
    """(python, site-packages) of a fresh venv holding the wheel; dependencies come from this venv's
    site-packages through a .pth line (whose own .pth files, the editable seedrun's among them, a
    .pth-added folder does not process)."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     env=_clean_env()).stdout.strip())
    (site / "main-venv-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)])
    return python, site


def _clean_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "PYTHONHOME", "SEEDRUN_RECIPES", "VIRTUAL_ENV")}
    env.update(extra)
    return env


def _seedrun_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    home = tmp_path / "home"
    return _clean_env(SEEDRUN_HOME=str(home), SEEDRUN_DB=f"sqlite:///{home}/seedrun.db", **extra)


def test_installed_package_is_the_one_imported(fresh, tmp_path):
    python, site = fresh
    out = _run([str(python), "-c", "import json, sys, seedrun; print(json.dumps([seedrun.__file__, sys.path]))"],
               cwd=tmp_path, env=_clean_env()).stdout
    module_file, path = json.loads(out)
    assert Path(module_file).resolve().is_relative_to(site.resolve())
    assert not any(entry and Path(entry).resolve() in (ROOT, ROOT / "seedrun") for entry in path)


def test_installed_package_lists_and_plans_from_another_folder(fresh, tmp_path):
    python, site = fresh
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "tiny.yaml").write_text(SWEEP)
    env = _seedrun_env(tmp_path)

    listed = _run([str(python), "-m", "seedrun", "list"], cwd=elsewhere, env=env).stdout
    assert f"recipes ({site.resolve() / 'seedrun' / 'recipes'}):" in listed
    assert "small_resnet_mocov2" in listed and "tiny" in listed

    plan = _run([str(python), "-m", "seedrun", "sweep", "tiny.yaml", "--dry-run"], cwd=elsewhere, env=env)
    out = plan.stdout + plan.stderr
    assert "wheeltest" in out
    assert "0.1" in out and "0.01" in out
    assert not (elsewhere / "recipes").exists()


def test_user_recipe_folders_come_before_the_packaged_ones(fresh, tmp_path):
    python, site = fresh
    mine = tmp_path / "my-recipes"
    (mine / "student").mkdir(parents=True)
    shutil.copy2(RECIPES / "student" / "small_resnet18.yaml", mine / "student" / "my_student.yaml")
    env = _seedrun_env(tmp_path, SEEDRUN_RECIPES=str(mine))
    listed = _run([str(python), "-m", "seedrun", "list"], cwd=tmp_path, env=env).stdout
    assert f"recipes ({mine}, then {site.resolve() / 'seedrun' / 'recipes'}):" in listed
    student_line = next(line for line in listed.splitlines() if line.strip().startswith("student/"))
    assert "my_student" in student_line and "small_resnet18" in student_line

    missing = subprocess.run([str(python), "-m", "seedrun", "list"], cwd=tmp_path, capture_output=True, text=True,
                             env=_seedrun_env(tmp_path, SEEDRUN_RECIPES=str(tmp_path / "nowhere")))
    assert missing.returncode == 2
    assert "SEEDRUN_RECIPES" in missing.stderr and "no such folder" in missing.stderr


def test_a_user_file_replaces_the_packaged_one(tmp_path, monkeypatch):
    from seedrun.errors import InputError
    from seedrun.sweeps.compose import PACKAGED_RECIPES, check_overrides, compose_config, recipe_dirs, recipe_groups

    first, second = tmp_path / "first", tmp_path / "second"
    (first / "data").mkdir(parents=True)
    (second / "data").mkdir(parents=True)
    (second / "eval").mkdir(parents=True)
    packaged_tiny = (PACKAGED_RECIPES / "data" / "tiny.yaml").read_text()
    (first / "data" / "tiny.yaml").write_text(packaged_tiny.replace("image_size: 16", "image_size: 24"))
    (second / "data" / "tiny.yaml").write_text(packaged_tiny.replace("image_size: 16", "image_size: 32"))
    (second / "data" / "blobs.yaml").write_text(packaged_tiny.replace("name: tiny", "name: blobs"))
    root = (PACKAGED_RECIPES / "config.yaml").read_text()
    (second / "config.yaml").write_text(root.replace("seed: 0 ", "seed: 7 "))

    assert compose_config(["data=tiny"])["data"]["image_size"] == 16
    monkeypatch.setenv("SEEDRUN_RECIPES", os.pathsep.join([str(first), str(second)]))
    assert recipe_dirs() == (first, second, PACKAGED_RECIPES)
    assert "blobs" in recipe_groups()["data"] and "knn" in recipe_groups()["eval"]
    composed = compose_config(["data=tiny"])
    assert composed["data"]["image_size"] == 24  # the first folder that has the file wins
    assert composed["seed"] == 7  # a user's config.yaml replaces the packaged root
    assert compose_config(["data=blobs", "distill.tau_teacher=0.5"])["data"]["name"] == "blobs"
    with pytest.raises(InputError, match="unknown data recipe 'nope'"):
        check_overrides([("base.data", "data=nope")], "sweep.yaml")
    monkeypatch.delenv("SEEDRUN_RECIPES")
    assert compose_config(["data=tiny"])["data"]["image_size"] == 16


def test_the_provenances_package_list_is_importlibs():
    """seedrun.job.provenance reads each installed package's name and version from its metadata's header lines:
    the same list (hence the same packages_sha256) as importlib.metadata's full parse."""
    import hashlib
    from importlib import metadata

    from seedrun.job.provenance import _name_and_version, _packages_hash

    dists = list(metadata.distributions())
    assert len(dists) > 10
    for dist in dists:
        assert _name_and_version(dist) == f"{dist.metadata['Name']}=={dist.version}"
    names = sorted(f"{dist.metadata['Name']}=={dist.version}" for dist in dists)
    assert _packages_hash() == hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
