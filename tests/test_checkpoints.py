"""Teacher checkpoints in each official key layout, written here from known networks, load strictly and
reproduce the source network's outputs; broken or mismatched files give one-line errors naming the path."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch
from torch import nn
from torchvision.models import resnet18 as tv_resnet18

from seedrun.models.model_file import save_model
from seedrun.models.teacher_formats import CheckpointError, detect_format, guess_arch, load_teacher
from seedrun.models.teacher_inspect import format_inspection, inspect
from seedrun.models import create_backbone, mlp_head
from seedrun.models.heads import bn_mlp_head, head_from_state_dict, simclr_head, swav_head, swav_hidden, teacher_head

torch.set_num_threads(1)


def _randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so a wrongly mapped tensor changes the output."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return module.eval()


def _source(arch: str, width: int, head: str | None, in_chans: int = 3, small_images: bool = False):
    torch.manual_seed(0)
    backbone, d = create_backbone(arch, width=width, in_chans=in_chans, small_images=small_images)
    heads = {None: lambda: None, "mocov2": lambda: teacher_head("mocov2", d), "simclr": lambda: simclr_head(d),
             "swav": lambda: swav_head(d), "student": lambda: mlp_head(d)}
    h = heads[head]()
    return _randomise(backbone), (None if h is None else _randomise(h, 1)), d


def _mocov2_file(bb, head):
    sd = {f"module.encoder_q.{k}": v for k, v in bb.state_dict().items()}
    sd |= {f"module.encoder_q.fc.{k}": v for k, v in head.state_dict().items()}
    sd |= {f"module.encoder_k.{k}": v.clone() for k, v in bb.state_dict().items()}
    sd |= {"module.queue": torch.randn(128, 64), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    optimizer = {"state": {}, "param_groups": [{"lr": 0.03, "momentum": 0.9, "params": [0, 1]}]}
    return {"epoch": 200, "arch": "resnet50", "state_dict": sd, "optimizer": optimizer}


def _swav_file(bb, head):
    sd = {f"module.{k}": v for k, v in bb.state_dict().items()}
    sd |= {f"module.projection_head.{k}": v for k, v in head.state_dict().items()}
    sd["module.prototypes.weight"] = torch.randn(30, 128)
    return sd


def _simclr_file(bb, head):
    p = "module.module.module."
    sd = {f"{p}{k}": v for k, v in bb.state_dict().items()} | {f"{p}fc.{k}": v for k, v in head.state_dict().items()}
    return {"model": sd}


def _simclr_state_dict_file(bb, head):  # other converters: under state_dict, one module. prefix
    sd = {f"module.{k}": v for k, v in bb.state_dict().items()} | {f"module.fc.{k}": v for k, v in head.state_dict().items()}
    return {"state_dict": sd, "epoch": 100}


CASES = {
    # id: (writer, arch, width, head kind, expected format)
    "mocov2-r50": (_mocov2_file, "resnet50", 16, "mocov2", "mocov2"),
    "swav-r50": (_swav_file, "resnet50", 16, "swav", "swav"),
    "swav-r50x2": (_swav_file, "resnet50x2", 8, "swav", "swav"),
    "simclr-r50": (_simclr_file, "resnet50", 16, "simclr", "simclr"),
    "simclr-state_dict": (_simclr_state_dict_file, "resnet50", 16, "simclr", "simclr"),
}


def _outputs(bb, head, x):
    with torch.no_grad():
        f = bb(x)
        return f, (None if head is None else head(f))


@pytest.mark.parametrize("case", sorted(CASES))
def test_official_layouts_load_and_match(case, tmp_path):
    writer, arch, width, head_kind, fmt = CASES[case]
    src_bb, src_head, d = _source(arch, width, head_kind)
    path = tmp_path / f"{case}.pth.tar"
    torch.save(writer(src_bb, src_head), path)

    bb, head, info = load_teacher(path, arch, width=width)
    assert info["format"] == fmt
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info["feature_dim"] == d
    hidden = swav_hidden(d) if fmt == "swav" else d
    assert info["head_shape"] == (d, hidden, 128)
    assert not bb.training and not any(p.requires_grad for p in bb.parameters())
    x = torch.randn(2, 3, 64, 64)
    f_src, z_src = _outputs(src_bb, src_head, x)
    f, z = _outputs(bb, head, x)
    assert torch.allclose(f, f_src, atol=1e-5)
    assert torch.allclose(z, z_src, atol=1e-5)
    assert isinstance(head[1], nn.BatchNorm1d) == (fmt != "mocov2")

    report = inspect(path)
    assert report["verdict"] == "ok"
    assert report["format"] == fmt and report["feature_dim"] == d and report["head_shape"] == info["head_shape"]
    # R50x2 at width 8 has exactly ResNet-50 width 16's tensors, so that is what the guess says
    assert (report["arch"], report["width"]) == ("resnet50", 16)
    text = format_inspection(report)
    assert fmt in text and "ok" in text and info["sha256"] in text


def test_torchvision_layout(tmp_path):
    torch.manual_seed(0)
    ref = _randomise(tv_resnet18(weights=None))  # torchvision's own keys, fc = 1000-way classifier
    path = tmp_path / "resnet18-tv.pth"
    torch.save(ref.state_dict(), path)
    bb, head, info = load_teacher(path, "resnet18")
    assert info["format"] == "torchvision" and head is None and info["head_shape"] is None
    assert info["skipped_keys"] == 2  # fc.weight, fc.bias
    ref.fc = nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(_outputs(bb, None, x)[0], _outputs(ref, None, x)[0], atol=1e-5)
    report = inspect(path)
    assert (report["verdict"], report["format"], report["arch"], report["width"]) == ("ok", "torchvision", "resnet18", 64)


def test_seedrun_format_round_trip(tmp_path):
    src_bb, src_head, d = _source("resnet18", 16, "student", in_chans=1, small_images=True)
    path = tmp_path / "teacher.pt"
    digest = save_model(path, src_bb, src_head, arch="resnet18", width=16, small_images=True, in_chans=1,
                          method="mocov2", extra={"epochs": 12})
    assert detect_format(torch.load(path, weights_only=True)) == "seedrun"
    bb, head, info = load_teacher(path, "resnet18", width=16, small_images=True, in_chans=1)
    assert info["format"] == "seedrun" and info["sha256"] == digest and info["method"] == "mocov2"
    assert info["head_shape"] == (d, d, 128)
    x = torch.randn(2, 1, 28, 28)
    for a, b in zip(_outputs(bb, head, x), _outputs(src_bb, src_head, x)):
        assert torch.allclose(a, b, atol=1e-5)
    # arch=None takes everything from the marker, including for networks the guess cannot read
    _, _, info = load_teacher(path, None, width=None, small_images=None, in_chans=None)
    assert (info["arch"], info["width"], info["small_images"], info["in_chans"]) == ("resnet18", 16, True, 1)
    mobile, mobile_d = create_backbone("mobilenetv3_large", width=16, small_images=True)
    save_model(tmp_path / "m.pt", mobile, None, arch="mobilenetv3_large", width=16, small_images=True, in_chans=3)
    report = inspect(tmp_path / "m.pt")
    assert (report["verdict"], report["arch"], report["feature_dim"]) == ("ok", "mobilenetv3_large", mobile_d)


@pytest.fixture(scope="module")
def mocov2_file(tmp_path_factory):
    src_bb, src_head, _ = _source("resnet50", 16, "mocov2")
    path = tmp_path_factory.mktemp("ckpt") / "moco_v2_200ep_pretrain.pth.tar"
    torch.save(_mocov2_file(src_bb, src_head), path)
    return path


def _one_line_error(path, call) -> str:
    with pytest.raises(CheckpointError) as err:
        call()
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: ")
    return msg


def test_wrong_arch_names_the_keys(mocov2_file):
    msg = _one_line_error(mocov2_file, lambda: load_teacher(mocov2_file, "resnet18", width=16))
    assert "expected mocov2 checkpoint for resnet18: missing keys [" in msg
    assert "unexpected keys [" in msg and "layer1.0.conv3.weight" in msg
    assert "looks like resnet50 width 16" in msg


def test_wrong_width_names_the_shapes(mocov2_file):
    msg = _one_line_error(mocov2_file, lambda: load_teacher(mocov2_file, "resnet50", width=8))
    assert "missing keys [], unexpected keys []" in msg and "shape mismatches" in msg and "conv1.weight" in msg


def test_wrong_method_is_refused(mocov2_file):
    msg = _one_line_error(mocov2_file, lambda: load_teacher(mocov2_file, "resnet50", width=16, expect="swav"))
    assert "expected swav checkpoint" in msg and "mocov2" in msg


def test_truncated_file(mocov2_file, tmp_path):
    path = tmp_path / "truncated.pth.tar"
    data = mocov2_file.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    msg = _one_line_error(path, lambda: load_teacher(path, "resnet50", width=16))
    assert "not a readable PyTorch checkpoint" in msg
    report = inspect(path)
    assert report["verdict"] == msg and report["format"] is None
    assert report["sha256"] is None or len(report["sha256"]) == 64
    assert "verdict" in format_inspection(report)


def test_random_bytes_and_missing_file(tmp_path):
    path = tmp_path / "noise.pth"
    path.write_bytes(os.urandom(4096))
    assert "not a readable PyTorch checkpoint" in _one_line_error(path, lambda: load_teacher(path, "resnet50"))
    missing = tmp_path / "absent.pth"
    assert "no such" in _one_line_error(missing, lambda: load_teacher(missing, "resnet50"))


class _NotAWeight:
    pass


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "payload": _NotAWeight()}, path)
    msg = _one_line_error(path, lambda: load_teacher(path, "resnet50"))
    assert "refused by torch.load(weights_only=True)" in msg and "_NotAWeight" in msg


def test_unrecognised_contents(tmp_path):
    path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), path)
    assert "not a checkpoint dict" in _one_line_error(path, lambda: load_teacher(path, "resnet50"))
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(2, 2)}, path)
    assert "unrecognised checkpoint layout" in _one_line_error(path, lambda: load_teacher(path, "resnet50"))


def test_detect_format_on_key_layouts():
    t = torch.zeros(1)
    rn = {"conv1.weight": t, "bn1.weight": t, "layer1.0.conv1.weight": t}
    assert detect_format({"state_dict": {f"module.encoder_q.{k}": t for k in rn}}) == "mocov2"
    assert detect_format({f"module.{k}": t for k in rn} | {"module.projection_head.0.weight": t}) == "swav"
    assert detect_format(rn | {"projection_head.0.weight": t, "prototypes.weight": t}) == "swav"  # bare
    simclr = {f"module.module.module.{k}": t for k in [*rn, "fc.0.weight", "fc.1.running_mean", "fc.3.weight"]}
    assert detect_format({"model": simclr}) == "simclr"
    assert detect_format(rn | {"fc.weight": t, "fc.bias": t}) == "torchvision"
    assert detect_format({"seedrun": {"format": 1}, "backbone": rn, "head": None}) == "seedrun"


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet50x2"])
def test_guess_arch_at_full_width(arch):
    with torch.device("meta"):
        net, _ = create_backbone(arch)
    assert guess_arch(net.state_dict()) == {"arch": arch, "width": 64, "small_images": False, "in_chans": 3}


def test_head_builders():
    assert [type(m) for m in teacher_head("mocov2", 64)] == [nn.Linear, nn.ReLU, nn.Linear]
    assert [type(m) for m in simclr_head(64)] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert swav_hidden(2048) == 2048 and swav_hidden(4096) == 8192
    assert swav_head(4096)[0].out_features == 8192
    for head in (mlp_head(32, 16, hidden=8), bn_mlp_head(32, 16, hidden=8), nn.Linear(32, 16)):
        rebuilt = head_from_state_dict(head.state_dict())
        assert [type(m) for m in rebuilt.modules()] == [type(m) for m in head.modules()]
        rebuilt.load_state_dict(head.state_dict())


def test_teacher_inspect_command(tmp_path, cli):
    import torchvision

    source = torchvision.models.resnet18()
    state = {f"module.encoder_q.{k}": v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    state.update({"module.encoder_q.fc.0.weight": torch.zeros(512, 512), "module.encoder_q.fc.0.bias": torch.zeros(512),
                  "module.encoder_q.fc.2.weight": torch.zeros(128, 512), "module.encoder_q.fc.2.bias": torch.zeros(128)})
    good = tmp_path / "moco_v2.pth.tar"
    torch.save({"state_dict": state, "epoch": 200}, good)
    out = cli("teacher", "inspect", str(good)).stdout
    assert "mocov2" in out and "resnet18" in out and "512 -> 512 -> 128" in out and "verdict         ok" in out
    truncated = tmp_path / "cut.pth"
    truncated.write_bytes(good.read_bytes()[:1000])
    result = cli("teacher", "inspect", str(truncated), check=False)
    assert result.returncode == 2 and str(truncated) in result.stdout
