"""Teachers known by content (seedrun.sweeps.teachers): a teacher checkpoint enters the run hash as its
sha256, cached by path, size and mtime; moving the file keeps every hash, replacing it changes them;
runs whose teacher is a pre-training run keep the hashes they always had; a torchvision checkpoint is
refused at check time, in one line, without torch."""

from __future__ import annotations

import os
import shutil

import pytest

from conftest import TINY_SWEEP_BASE, write_sweep
from seedrun.sweeps import teachers
from seedrun.sweeps.sweep_file import expand

# sweeps/demo.yaml's runs as recorded before teachers were known by content (its teacher is trained
# here, so they must not change): recorded databases name them so.
# sweeps/demo.yaml's runs, as the README's study recorded them (the demo became the study's temperature
# twin, and the per-method augmentation presets changed every data recipe, so every hash changed once).
DEMO_HASHES = ["cdfa5d587b10", "22ab7d23fa78", "d917d3c29d12", "91d37c45c969", "11600a35ab39", "704b44e17f89",
               "fa24e6368c8e", "165e1bf81d89", "972955aecf6c", "351c66a4b718", "093addb07917", "6b8a436c9ad4",
               "f4fc09e3b49e", "d3b3a0d17314", "cf27cbb638d1", "3adbfc126888", "2fef3e54ae32", "fe4b0fac37af",
               "5ddede349e68"]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    teachers._MEMO.clear()
    return tmp_path / "cache" / "seedrun" / "teacher-digests.json"


def _backbone():
    import torch

    from seedrun.models.registry import create_network

    torch.manual_seed(0)
    return create_network("resnet18", 8, True, 3, 128)


@pytest.fixture
def seedrun_teacher(tmp_path) -> str:
    from seedrun.models.model_file import save_model

    backbone, head, _ = _backbone()
    path = tmp_path / "teachers" / "t.pt"
    path.parent.mkdir()
    save_model(path, backbone, head, arch="resnet18", width=8, small_images=True, in_chans=3, method="mocov2")
    return str(path)


def _sweep(tmp_path, checkpoint: str):
    return expand(write_sweep(tmp_path / "t.yaml", "name: t\n" + TINY_SWEEP_BASE + f"  teacher.checkpoint: {checkpoint}\n"
                              + "  teacher.width: 8\ngrid:\n  distill.tau_teacher: [0.1, 0.01]\n"))


def test_moving_a_teacher_keeps_the_hashes_and_replacing_it_changes_them(tmp_path, seedrun_teacher, cache):
    first = _sweep(tmp_path, seedrun_teacher)
    hashes = [run.hash for run in first.runs]
    assert len(hashes) == 2 and all(run.stage == "distill" for run in first.runs)
    assert first.runs[0].config["teacher"]["checkpoint_sha256"] == teachers.sha256_of(seedrun_teacher)

    moved = str(tmp_path / "elsewhere" / "renamed.pt")
    os.makedirs(os.path.dirname(moved))
    shutil.move(seedrun_teacher, moved)
    again = _sweep(tmp_path, moved)
    assert [run.hash for run in again.runs] == hashes  # same content, same runs
    assert again.runs[0].config["teacher"]["checkpoint"] == moved  # the path the job loads stays in the config

    import torch

    state = torch.load(moved, weights_only=True)
    next(iter(state["backbone"].values())).add_(1.0)  # another teacher at the same path
    torch.save(state, moved)
    replaced = _sweep(tmp_path, moved)
    assert not set(run.hash for run in replaced.runs) & set(hashes)


def test_a_digest_is_computed_once_per_path_size_and_mtime(tmp_path, seedrun_teacher, cache, monkeypatch):
    computed = []
    original = teachers.sha256_of
    monkeypatch.setattr(teachers, "sha256_of", lambda path: computed.append(path) or original(path))
    _sweep(tmp_path, seedrun_teacher)
    assert computed == [os.path.abspath(seedrun_teacher)] and cache.exists()
    teachers._MEMO.clear()  # a new process: the file cache answers
    _sweep(tmp_path, seedrun_teacher)
    assert len(computed) == 1
    os.utime(seedrun_teacher, ns=(1, 1))  # touched: computed again
    _sweep(tmp_path, seedrun_teacher)
    assert len(computed) == 2


def test_runs_whose_teacher_is_trained_here_keep_their_hashes():
    sweep = expand("sweeps/demo.yaml", dry_run=True)
    assert [run.hash[:12] for run in sweep.runs] == DEMO_HASHES
    assert all("checkpoint_sha256" not in (run.config.get("teacher") or {}) for run in sweep.runs)


def _torchvision_file(tmp_path) -> str:
    import torch

    backbone, _, d = _backbone()
    state = {**backbone.state_dict(), "fc.weight": torch.zeros(1000, d), "fc.bias": torch.zeros(1000)}
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(state, path)
    return str(path)


def test_the_layout_is_read_without_unpickling_and_agrees_with_the_loader(tmp_path, seedrun_teacher):
    import torch

    from seedrun.models.teacher_formats import detect_format

    backbone, head, _ = _backbone()
    moco = tmp_path / "moco.pth.tar"
    torch.save({"state_dict": {**{f"module.encoder_q.{k}": v for k, v in backbone.state_dict().items()},
                               **{f"module.encoder_q.fc.{k}": v for k, v in head.state_dict().items()}},
                "epoch": 200, "arch": "resnet18"}, moco)
    legacy = tmp_path / "legacy.pth"
    torch.save(torch.load(_torchvision_file(tmp_path), weights_only=True), legacy, _use_new_zipfile_serialization=False)
    for path in (seedrun_teacher, str(moco), _torchvision_file(tmp_path), str(legacy)):
        assert teachers.peek_format(path) == detect_format(torch.load(path, weights_only=True)), path
    assert teachers.peek_format(str(legacy)) == "torchvision"
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert teachers.peek_format(str(tmp_path / "junk.pt")) is None  # unsure: the job's strict loader judges


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_a_torchvision_teacher_is_refused_at_check_time(dry_run, cli, tmp_path):
    path = _torchvision_file(tmp_path)
    sweep = write_sweep(tmp_path / "tv.yaml", "name: tv\n" + TINY_SWEEP_BASE + f"  teacher.checkpoint: {path}\n")
    cli.env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    result = cli("sweep", str(sweep), *dry_run, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {sweep}: teacher.checkpoint: {path} is a torchvision checkpoint"), line
    assert not cli.db.exists()


def test_a_job_whose_teacher_file_was_replaced_after_planning_does_not_train(home, tmp_path, seedrun_teacher):
    from conftest import attempt_job
    from test_submit_unit import SLURM_LAUNCHER, StepJob, run_row, synthetic_plan

    from seedrun.sweeps.spec import RunSpec

    db_url = f"sqlite:///{home / 'seedrun.db'}"
    planned = {"teacher": {"checkpoint": seedrun_teacher, "checkpoint_sha256": teachers.sha256_of(seedrun_teacher)},
               "launcher": SLURM_LAUNCHER}
    spec = RunSpec("distill", planned)
    synthetic_plan("replaced", [spec], db_url)
    with open(seedrun_teacher, "ab") as f:  # replaced after the sweep recorded the run
        f.write(b"\0")
    assert attempt_job(StepJob, db_url, spec.hash)() == {}
    row = run_row(db_url, spec.hash)
    assert (row["state"], row["failure_reason"]) == ("failed", "teacher_changed") and row["attempts"] == 0
    assert not (tmp_path / "home" / "runs" / spec.hash[:16] / "log.txt").exists()
