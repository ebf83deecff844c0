"""Sweep expansion and run hashes (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seedrun.errors import InputError
from seedrun.sweeps.spec import RunSpec, config_hash
from seedrun.sweeps.sweep_file import expand
from conftest import TINY_SWEEP_BASE, write_sweep

BASE = "\n" + TINY_SWEEP_BASE


def test_grid_zip_and_seeds_cross_in_file_order(tmp_path):
    path = write_sweep(tmp_path / "s.yaml", "name: s\n" + BASE + """
grid:
  distill.tau_teacher: [0.1, 0.01]
  distill.lr: [0.03, 0.3]
zip:
  distill.weight_decay: [1e-4, 5e-4]
  distill.epochs: [2, 3]
seeds: [0, 1]
""")
    sweep = expand(path)
    distill = sweep.stage("distill")
    assert len(distill) == 2 * 2 * 2 * 2
    assert sweep.axes == ["distill.tau_teacher", "distill.lr", "distill.weight_decay", "distill.epochs", "seed"]
    first, second, last = distill[0].axes, distill[1].axes, distill[-1].axes
    assert first == {"distill.tau_teacher": 0.1, "distill.lr": 0.03, "distill.weight_decay": 1e-4, "distill.epochs": 2, "seed": 0}
    assert second["seed"] == 1 and second["distill.weight_decay"] == 1e-4  # seeds innermost
    assert last == {"distill.tau_teacher": 0.01, "distill.lr": 0.3, "distill.weight_decay": 5e-4, "distill.epochs": 3, "seed": 1}
    for run in distill:  # the axis values reached the resolved config, zip pairs kept together
        assert run.config["distill"]["tau_teacher"] == run.axes["distill.tau_teacher"]
        assert (run.config["distill"]["weight_decay"], run.config["distill"]["epochs"]) in [(1e-4, 2), (5e-4, 3)]
        assert run.config["seed"] == run.axes["seed"]
    # one teacher, trained once, that every student depends on
    (teacher,) = sweep.stage("pretrain")
    assert {run.depends_on for run in distill} == {teacher.hash}
    assert len({run.hash for run in distill}) == len(distill)


def test_expansion_is_deterministic(tmp_path):
    path = write_sweep(tmp_path / "s.yaml", "name: s\n" + BASE + "grid:\n  distill.tau_teacher: [0.3, 0.1, 0.05]\n")
    assert [run.hash for run in expand(path).runs] == [run.hash for run in expand(path).runs]


def test_hash_ignores_key_order_and_execution_keys():
    config = {"distill": {"tau_teacher": 0.01, "lr": 0.03}, "student": {"arch": "resnet18"}, "seed": 0,
              "launcher": {"name": "local"}, "device": "cpu", "threads": 2, "data": {"name": "x", "root": "/a"}}
    reordered = json.loads(json.dumps({"seed": 0, "student": {"arch": "resnet18"}, "distill": {"lr": 0.03, "tau_teacher": 0.01},
                                       "data": {"root": "/b", "name": "x"}, "launcher": {"name": "slurm"}, "threads": 8}))
    assert config_hash(config) == config_hash(reordered)
    changed = json.loads(json.dumps(config))
    changed["distill"]["tau_teacher"] = 0.001
    assert config_hash(changed) != config_hash(config)
    assert RunSpec("distill", config).hash == RunSpec("distill", reordered).hash
    assert RunSpec("distill", config).hash != RunSpec("pretrain", config).hash


def test_command_line_overrides_reach_every_run(tmp_path):
    path = write_sweep(tmp_path / "s.yaml", "name: s\n" + BASE + "grid:\n  distill.tau_teacher: [0.1, 0.01]\n")
    sweep = expand(path, ["distill.epochs=7"])
    assert {run.config["distill"]["epochs"] for run in sweep.stage("distill")} == {7}


def test_teacher_with_checkpoint_needs_no_pretraining_and_dry_run_only_warns(tmp_path):
    path = write_sweep(tmp_path / "s.yaml", "name: s\nbase: [data=tiny, teacher=resnet50_mocov2]\n")
    sweep = expand(path, dry_run=True)
    assert sweep.stage("pretrain") == []
    assert any("teacher checkpoint not found" in warning for warning in sweep.warnings)
    with pytest.raises(InputError, match="teacher.checkpoint: teacher checkpoint not found"):
        expand(path, dry_run=False)


def test_shell_metacharacters_in_values_stay_inert(tmp_path):
    nasty = "$(touch /tmp/seedrun-pwned); `id` && rm -rf ~ | cat > x"
    path = write_sweep(tmp_path / "s.yaml", "name: s\n" + BASE + f"  launcher.timeout_min: 5\n  data.name: {json.dumps(nasty)}\n")
    (run,) = expand(path).stage("distill")
    assert run.config["data"]["name"] == nasty


def test_a_students_own_baseline_settings_change_its_baseline_and_nothing_else(tmp_path):
    """`student.baseline` (a student recipe's own MoCo-v2 settings for its student-alone run) replaces the
    teacher recipe's in that run only: the distillation runs and the teacher keep their hashes."""
    text = "name: s\n" + BASE + "grid:\n  distill.tau_teacher: [0.1, 0.01]\nbaselines: true\n"
    plain = expand(write_sweep(tmp_path / "plain.yaml", text))
    own = expand(write_sweep(tmp_path / "own.yaml", text), ["+student.baseline.lr=0.06",
                                                             "+student.baseline.encoder_momentum=0.9"])

    def baseline(sweep):
        return next(run for run in sweep.stage("pretrain") if run.config["pretrain"]["role"] == "baseline")

    assert (baseline(plain).config["pretrain"]["lr"], baseline(plain).config["pretrain"]["encoder_momentum"]) == (0.24, 0.99)
    assert (baseline(own).config["pretrain"]["lr"], baseline(own).config["pretrain"]["encoder_momentum"]) == (0.06, 0.9)
    assert baseline(own).hash != baseline(plain).hash
    others = lambda sweep: {run.hash for run in sweep.runs} - {baseline(sweep).hash}  # noqa: E731
    assert others(own) == others(plain)
    assert all("baseline" not in run.config["student"] for run in own.stage("distill"))
    for key in ("epochs", "arch"):  # the distillation's, or not MoCo-v2's
        with pytest.raises(InputError, match=f"student.baseline.{key}: expected a setting of the teacher recipe"):
            expand(write_sweep(tmp_path / "bad.yaml", text), [f"+student.baseline.{key}=3"])
    longer = expand(write_sweep(tmp_path / "longer.yaml", text), ["+student.baseline.epochs_factor=3"])
    assert baseline(longer).config["pretrain"]["epochs"] == 3 * baseline(plain).config["pretrain"]["epochs"]
    assert "epochs_factor" not in baseline(longer).config["pretrain"] and others(longer) == others(plain)
    for bad in ("0", "-1", "'three'", "true"):
        with pytest.raises(InputError, match="student.baseline.epochs_factor: expected a number > 0"):
            expand(write_sweep(tmp_path / "bad.yaml", text), [f"+student.baseline.epochs_factor={bad}"])
    undropped = expand(write_sweep(tmp_path / "undropped.yaml", text), ["+student.baseline.dropout=false"])
    assert baseline(undropped).config["pretrain"]["dropout"] is False and others(undropped) == others(plain)
    assert "dropout" not in baseline(plain).config["pretrain"]
    with pytest.raises(InputError, match="student.baseline.dropout: expected true or false"):
        expand(write_sweep(tmp_path / "bad.yaml", text), ["+student.baseline.dropout=0.2"])
    headed = expand(write_sweep(tmp_path / "head.yaml", text), ["+student.baseline.head=bn_mlp"])
    assert baseline(headed).config["pretrain"]["head"] == "bn_mlp"
    from seedrun.models.catalog import PRETRAIN_HEAD_NAMES
    from seedrun.models.heads import PRETRAIN_HEADS

    assert PRETRAIN_HEAD_NAMES == ("auto", *PRETRAIN_HEADS)  # what the plan accepts, the job builds
    with pytest.raises(InputError, match="student.baseline.head: expected auto, mlp or bn_mlp, got 'bn'"):
        expand(write_sweep(tmp_path / "bad.yaml", text), ["+student.baseline.head=bn"])


def test_students_share_one_teacher_and_baselines_are_their_own_runs(tmp_path):
    path = write_sweep(tmp_path / "s.yaml", "name: s\n" + BASE + """
grid:
  student: [small_resnet18, resnet18]
  distill.tau_teacher: [0.1, 0.01]
seeds: [0]
baselines: true
""")
    sweep = expand(path)
    pretrain = sweep.stage("pretrain")
    roles = sorted(run.config["pretrain"]["role"] for run in pretrain)
    assert roles == ["baseline", "baseline", "teacher"]  # one teacher for 4 students, one baseline per student
    (teacher,) = [run for run in pretrain if run.config["pretrain"]["role"] == "teacher"]
    assert {run.depends_on for run in sweep.stage("distill")} == {teacher.hash}
    for baseline in (run for run in pretrain if run.config["pretrain"]["role"] == "baseline"):
        assert baseline.config["pretrain"]["method"] == "mocov2"
        assert baseline.config["pretrain"]["epochs"] == sweep.stage("distill")[0].config["distill"]["epochs"]
    assert {run.config["pretrain"]["width"] for run in pretrain if run.config["pretrain"]["role"] == "baseline"} == {8, 64}


def test_seedrun_list_shows_each_students_build_and_own_baseline_settings(cli):
    lines = cli("list").stdout.splitlines()
    mobilenet = next(line for line in lines if line.strip().startswith("small_mobilenetv3_large "))
    assert mobilenet.endswith("bn official; layout official; baseline: head bn_mlp, lr 0.06, epochs_factor 3, dropout false")
    resnet = next(line for line in lines if line.strip().startswith("small_resnet18 "))
    assert resnet.endswith("baseline: the teacher recipe's")


SWEEPS = sorted((Path(__file__).resolve().parents[1] / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=[path.name for path in SWEEPS])
def test_every_shipped_sweep_file_expands(path):
    """What the README tells a user to run plans without an error (ImageNet's absence is a warning)."""
    sweep = expand(path, dry_run=True)
    assert sweep.runs and len({run.hash for run in sweep.runs}) == len(sweep.runs)


def test_the_efficient_baseline_sweep_trains_each_student_alone_four_ways():
    sweep = expand(next(path for path in SWEEPS if path.name == "fmnist-efficient-baseline.yaml"), dry_run=True)
    baselines = [run.config["pretrain"] for run in sweep.stage("pretrain") if run.config["pretrain"]["role"] == "baseline"]
    for arch in ("mobilenetv3_large", "efficientnet_b0"):
        ways = sorted((p["epochs"], p["dropout"]) for p in baselines if p["arch"] == arch and p["seed"] == 0)
        assert ways == [(8, True), (24, False), (24, True), (48, True)]


def test_the_plan_lists_every_value_of_an_axis_that_varies_only_baselines(cli, tmp_path):
    """A `student.baseline.*` axis changes no distillation run: the plan still lists all its values."""
    text = "name: s\n" + BASE + "  student: small_mobilenetv3_large\nzip:\n  student.baseline.lr: [0.06, 0.03, 0.06]\n" \
        "  student.baseline.tau: [0.2, 0.2, 0.1]\nbaselines: true\n"
    out = cli("sweep", "--dry-run", "--json", str(write_sweep(tmp_path / "s.yaml", text))).stdout
    plan = json.loads(out)
    assert plan["axes"] == {"student.baseline.lr": [0.06, 0.03], "student.baseline.tau": [0.2, 0.1]}
