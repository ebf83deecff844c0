"""Any timm network as a student by name (student.arch: timm/NAME): built under SEED's head, checked at plan
time without torch, and distilled (and trained alone) through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from seedrun.models.catalog import check_arch, timm_names
from seedrun.models.model_file import MODEL, load_own_model
from seedrun.models.registry import create_network
from conftest import TINY_SWEEP_BASE, write_sweep


@pytest.mark.parametrize("arch, d", [("timm/resnet10t", 512), ("timm/mobilenetv4_conv_small", 1280),
                                     ("timm/vit_tiny_patch16_224:img_size=16,patch_size=4", 192)])
def test_a_timm_network_is_a_backbone_under_seeds_head(arch, d):
    torch.manual_seed(0)
    backbone, head, width = create_network(arch, 8, True, 1, 128)  # width and small_images: timm's own
    assert width == d  # MobileNetV4: the 1280 of its head's hidden layer, not its 960 channels
    features = backbone(torch.randn(4, 1, 16, 16))  # grey 16 px images, as Fashion-MNIST's
    assert features.shape == (4, d)
    assert head(features).shape == (4, 128)
    assert not hasattr(backbone, "fc") or isinstance(backbone.fc, torch.nn.Identity)  # no classifier left


def test_names_are_checked_without_importing_torch():
    probe = ("import sys\nfrom seedrun.models.catalog import check_arch\n"
             "print(check_arch('timm/resnet10t'), check_arch('timm/resnet10t.c3_in1k'))\n"
             "assert 'torch' not in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["None", "None"]
    assert check_arch("resnet18") is None
    assert "close: resnet10t" in check_arch("timm/resnet10")
    assert "timm/NAME" in check_arch("nosuchnet")
    assert check_arch("timm/vit_tiny_patch16_224:img_size=16,patch_size=4") is None
    assert "expected key=value" in check_arch("timm/vit_tiny_patch16_224:img_size")
    assert "timm/mobilenetv4_conv_small" in timm_names("mobilenetv4_*")


def test_an_unknown_timm_name_fails_at_plan_time(cli, tmp_path):
    sweep = write_sweep(tmp_path / "bad.yaml", "name: badtimm\n" + TINY_SWEEP_BASE + """grid:
  student.arch: [timm/resnet10t, timm/nosuchnet]
launcher:
  name: local
""")
    result = cli("sweep", str(sweep), check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(sweep) in lines[0] and "student.arch (='timm/nosuchnet')" in lines[0]
    assert not cli.db.exists() and not (cli.home / "runs").exists()  # nothing recorded


def test_timm_networks_pretrain_distil_and_train_alone_through_the_cli(cli, tmp_path):
    """A timm teacher pre-trained here and loaded back from its model.pt, a timm student distilled from it, and
    the same student trained alone (the baseline)."""
    sweep = write_sweep(tmp_path / "timm.yaml", "name: timmstudent\nablation: temperature\n" + TINY_SWEEP_BASE + """  teacher.width: 8
  teacher.pretrain.epochs: 1
  teacher.arch: timm/resnet10t
  student.arch: timm/resnet10t
  distill.epochs: 1
  distill.warmup_epochs: 0
  threads: 1
baselines: true
launcher:
  name: local
""")
    cli("sweep", str(sweep))
    runs = json.loads(cli("status", "timmstudent", "--json").stdout)["runs"]
    assert len(runs) == 3 and all(run["state"] == "completed" for run in runs), runs
    models = list((cli.home / "runs").glob(f"*/{MODEL}"))
    timm_models = [path for path in models if torch.load(path, weights_only=True)["seedrun"]["arch"] == "timm/resnet10t"]
    assert len(models) == len(timm_models) == 3  # the teacher, the distilled student and the student alone
    for path in timm_models:  # reloads by name, as an evaluation or a later teacher would
        backbone, head = load_own_model(path, 3)
        assert head(backbone(torch.randn(2, 3, 16, 16))).shape == (2, 128)


def test_a_timm_vit_tiny_distils_through_the_cli(cli, tmp_path):
    """A ViT on 16 px images: timm's keywords in the arch string (4 px patches, 16 tokens), kept in model.pt."""
    arch = "timm/vit_tiny_patch16_224:img_size=16,patch_size=4"
    sweep = write_sweep(tmp_path / "vit.yaml", "name: timmvit\nablation: temperature\n" + TINY_SWEEP_BASE + f"""  teacher.width: 8
  teacher.pretrain.epochs: 1
  student.arch: {arch}
  distill.epochs: 1
  distill.warmup_epochs: 0
  threads: 1
launcher:
  name: local
""")
    cli("sweep", str(sweep))
    runs = json.loads(cli("status", "timmvit", "--json").stdout)["runs"]
    assert [run["state"] for run in runs] == ["completed", "completed"], runs
    student = next(run for run in runs if run["stage"] == "distill")
    assert 0 < student["metrics"]["knn_top1"] <= 100
    path = cli.home / "runs" / student["hash"][:16] / MODEL
    assert torch.load(path, weights_only=True)["seedrun"]["arch"] == arch
    backbone, _ = load_own_model(path, 3)
    assert backbone(torch.randn(2, 3, 16, 16)).shape == (2, 192)


def test_a_timm_teacher_loads_from_a_local_checkpoint_file(cli, tmp_path):
    """A timm teacher's weights come from a local file (seedrun's model.pt format), never a download."""
    from seedrun.models.model_file import save_model

    torch.manual_seed(0)
    backbone, head, _ = create_network("timm/resnet10t", 8, True, 3, 128)
    teacher = tmp_path / "teacher.pt"
    save_model(teacher, backbone, head, arch="timm/resnet10t", width=8, small_images=True, in_chans=3,
               method="mocov2", extra={"dim": 128})
    path = write_sweep(tmp_path / "t.yaml", "name: timm-teacher\n" + TINY_SWEEP_BASE
                       + f"  teacher.checkpoint: {teacher}\n  teacher.arch: timm/resnet10t\n  student.width: 8\n"
                       + "  distill.epochs: 1\n  distill.warmup_epochs: 0\n  threads: 1\n"
                       + "grid:\n  distill.tau_teacher: [0.01]\nlauncher: {name: local}\n")
    assert "completed 1  failed 0" in cli("sweep", str(path)).stdout
    (run,) = json.loads(cli("status", "--json").stdout)["runs"]
    assert run["state"] == "completed" and run["metrics"]["knn_top1"] > 0
