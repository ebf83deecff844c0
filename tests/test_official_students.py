"""The paper's small students as the official SEED code builds them (issue 21 item 1): MobileNet-v3-Large
(seed/architectures/mobilenet/mobilenetv3.py) and EfficientNet-B0/B1 (EfficientNet-PyTorch 0.7, which the
official code vendors). Their BatchNorm settings, feature layer and head, and checkpoint keys, checked
against the official layer names and shapes written out here from the official code's rules, not taken
from seedrun's builders; and `student.bn` / `student.layout` switching to torchvision's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from seedrun.models import create_backbone
from seedrun.models.catalog import BN_SETTINGS, STUDENT_BUILD
from seedrun.models.registry import create_network

torch.set_num_threads(1)

SMALL = ("mobilenetv3_large", "efficientnet_b0", "efficientnet_b1")
RECIPES = Path(__file__).resolve().parents[1] / "seedrun" / "recipes" / "student"


def _bn(prefix: str, n: int) -> dict[str, tuple]:
    return {f"{prefix}.{k}": (n,) for k in ("weight", "bias", "running_mean", "running_var")} | {
        f"{prefix}.num_batches_tracked": ()}


def _official_mobilenet_keys() -> dict[str, tuple]:
    """The official mobilenetv3_large(num_classes=128) state dict without `fc`, at width multiplier 1:
    per block (kernel, expanded, out, SE); the SE squeezes to make_divisible(expanded / 4, 8)."""
    blocks = [(3, 16, 16, False), (3, 64, 24, False), (3, 72, 24, False), (5, 72, 40, True), (5, 120, 40, True),
              (5, 120, 40, True), (3, 240, 80, False), (3, 200, 80, False), (3, 184, 80, False),
              (3, 184, 80, False), (3, 480, 112, True), (3, 672, 112, True), (5, 672, 160, True),
              (5, 960, 160, True), (5, 960, 160, True)]
    squeeze = {72: 24, 120: 32, 480: 120, 672: 168, 960: 240}
    keys = {"features.0.0.weight": (16, 3, 3, 3), **_bn("features.0.1", 16)}
    inp = 16
    for i, (k, hidden, out, se) in enumerate(blocks, start=1):
        p = f"features.{i}.conv"
        # without expansion: dw 0, BN 1, act 2, SE 3, pw 4, BN 5;
        # with: pw 0, BN 1, act 2, dw 3, BN 4, SE 5, act 6, pw 7, BN 8
        dw, se_at, pw = (0, 3, 4) if inp == hidden else (3, 5, 7)
        if inp != hidden:
            keys |= {f"{p}.0.weight": (hidden, inp, 1, 1), **_bn(f"{p}.1", hidden)}
        keys |= {f"{p}.{dw}.weight": (hidden, 1, k, k), **_bn(f"{p}.{dw + 1}", hidden)}
        if se:
            s = squeeze[hidden]
            keys |= {f"{p}.{se_at}.fc.0.weight": (s, hidden), f"{p}.{se_at}.fc.0.bias": (s,),
                     f"{p}.{se_at}.fc.2.weight": (hidden, s), f"{p}.{se_at}.fc.2.bias": (hidden,)}
        keys |= {f"{p}.{pw}.weight": (out, hidden, 1, 1), **_bn(f"{p}.{pw + 1}", out)}
        inp = out
    keys |= {"conv.0.weight": (960, 160, 1, 1), **_bn("conv.1", 960),
             "classifier.0.weight": (1280, 960), "classifier.0.bias": (1280,)}
    return keys


def _official_efficientnet_b0_keys() -> dict[str, tuple]:
    """EfficientNet-PyTorch's efficientnet-b0 state dict without `fc`: per stage (repeats, kernel,
    expansion, out); the SE squeezes to int(block input * 0.25)."""
    stages = [(1, 3, 1, 16), (2, 3, 6, 24), (2, 5, 6, 40), (3, 3, 6, 80), (3, 5, 6, 112), (4, 5, 6, 192),
              (1, 3, 6, 320)]
    keys = {"_conv_stem.weight": (32, 3, 3, 3), **_bn("_bn0", 32)}
    inp, i = 32, 0
    for repeats, k, e, out in stages:
        for _ in range(repeats):
            p, hidden, s = f"_blocks.{i}", inp * e, max(1, int(inp * 0.25))
            if e != 1:
                keys |= {f"{p}._expand_conv.weight": (hidden, inp, 1, 1), **_bn(f"{p}._bn0", hidden)}
            keys |= {f"{p}._depthwise_conv.weight": (hidden, 1, k, k), **_bn(f"{p}._bn1", hidden),
                     f"{p}._se_reduce.weight": (s, hidden, 1, 1), f"{p}._se_reduce.bias": (s,),
                     f"{p}._se_expand.weight": (hidden, s, 1, 1), f"{p}._se_expand.bias": (hidden,),
                     f"{p}._project_conv.weight": (out, hidden, 1, 1), **_bn(f"{p}._bn2", out)}
            inp, i = out, i + 1
    return keys | {"_conv_head.weight": (1280, 320, 1, 1), **_bn("_bn1", 1280)}


def _shapes(module: nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("name,official", [("mobilenetv3_large", _official_mobilenet_keys),
                                           ("efficientnet_b0", _official_efficientnet_b0_keys)])
def test_keys_and_shapes_are_the_official_codes(name, official):
    with torch.device("meta"):
        net, d = create_backbone(name)
    assert d == 1280
    assert _shapes(net) == official()


@pytest.mark.parametrize("name,official", [("mobilenetv3_large", _official_mobilenet_keys),
                                           ("efficientnet_b0", _official_efficientnet_b0_keys)])
def test_an_official_student_checkpoint_loads_by_key(name, official):
    """A checkpoint as the official main.py saves it (DDP's `module.`, SEED's `student.`, the student's
    MLP head under fc.0 / fc.2), built key by key: backbone and head load strictly, every tensor in place."""
    torch.manual_seed(0)
    saved = {f"module.student.{k}": torch.randn(shape) if shape else torch.tensor(7) for k, shape in official().items()}
    saved |= {"module.student.fc.0.weight": torch.randn(1280, 1280), "module.student.fc.0.bias": torch.randn(1280),
              "module.student.fc.2.weight": torch.randn(128, 1280), "module.student.fc.2.bias": torch.randn(128)}
    backbone, head, _ = create_network(name, 64, False, 3, 128)
    student = {k.removeprefix("module.student."): v for k, v in saved.items()}
    backbone.load_state_dict({k: v for k, v in student.items() if not k.startswith("fc.")}, strict=True)
    head.load_state_dict({k.removeprefix("fc."): v for k, v in student.items() if k.startswith("fc.")}, strict=True)
    mine = {**{f"module.student.{k}": v for k, v in backbone.state_dict().items()},
            **{f"module.student.fc.{k}": v for k, v in head.state_dict().items()}}
    assert mine.keys() == saved.keys()
    assert all(torch.equal(mine[k], saved[k]) for k in saved)


def test_efficientnet_b1_is_b0_deepened():
    with torch.device("meta"):
        b1, d = create_backbone("efficientnet_b1")
    assert d == 1280 and len(b1._blocks) == 23  # ceil(1.1 x repeats): 2+3+3+4+4+5+2
    assert sum(p.numel() for p in b1.parameters()) == 6_513_184  # 7.79 M with a 1000-way fc


def _norms(net: nn.Module) -> list[nn.BatchNorm2d]:
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms
    return norms


@pytest.mark.parametrize("layout", ["official", "torchvision"])
@pytest.mark.parametrize("name,family,count", [("mobilenetv3_large", "mobilenet", 46),
                                               ("efficientnet_b0", "efficientnet", 49),
                                               ("efficientnet_b1", "efficientnet", 69)])
def test_every_batch_norm_has_the_settings_bn_names(name, family, count, layout):
    """student.bn sets every BatchNorm2d, whichever layout: official is the official code's (MobileNet-v3
    plain BatchNorm2d 0.1 / 1e-5, EfficientNet 0.01 / 1e-3), torchvision torchvision's builders'."""
    expected = {"official": {"mobilenet": (0.1, 1e-5), "efficientnet": (0.01, 1e-3)}[family],
                "torchvision": {"mobilenet": (0.01, 1e-3), "efficientnet": (0.1, 1e-5)}[family]}
    for bn, (momentum, eps) in expected.items():
        assert BN_SETTINGS[family][bn] == (momentum, eps)
        with torch.device("meta"):
            net, _ = create_backbone(name, bn=bn, layout=layout)
        norms = _norms(net)
        assert len(norms) == count
        assert all(m.momentum == momentum and m.eps == eps for m in norms), (bn, layout)
    with torch.device("meta"):
        default, _ = create_backbone(name, layout=layout)
    assert all((m.momentum, m.eps) == expected["official"] for m in _norms(default))


def test_default_is_the_official_build_and_torchvision_layout_is_torchvisions_network():
    from torchvision.models import efficientnet_b0, mobilenet_v3_large

    with torch.device("meta"):
        mobile, _ = create_backbone("mobilenetv3_large", bn="torchvision", layout="torchvision")
        ref_mobile = mobilenet_v3_large(weights=None)
        effnet, _ = create_backbone("efficientnet_b0", bn="torchvision", layout="torchvision")
        ref_effnet = efficientnet_b0(weights=None)
        official, _ = create_backbone("mobilenetv3_large")
    assert _shapes(mobile) == {k: v for k, v in _shapes(ref_mobile).items() if not k.startswith("classifier.3.")}
    assert _shapes(effnet) == {k: v for k, v in _shapes(ref_effnet).items() if not k.startswith("classifier.")}
    for ours, ref in ((mobile, ref_mobile), (effnet, ref_effnet)):
        assert [(m.momentum, m.eps) for m in _norms(ours)] == [(m.momentum, m.eps) for m in _norms(ref)]
    assert _shapes(official) == _official_mobilenet_keys()


def test_resnets_are_the_same_under_either_setting():
    with torch.device("meta"):
        plain, _ = create_backbone("resnet18")
        other, _ = create_backbone("resnet18", bn="torchvision", layout="torchvision")
    assert _shapes(plain) == _shapes(other)
    assert {(m.momentum, m.eps) for m in _norms(other)} == {(0.1, 1e-5)}


def test_bad_values_and_timm_networks_are_refused():
    with pytest.raises(ValueError, match="student.bn must be one of"):
        create_backbone("mobilenetv3_large", width=16, bn="tf")
    with pytest.raises(ValueError, match="student.layout must be one of"):
        create_backbone("efficientnet_b0", width=16, layout="timm")
    with pytest.raises(ValueError, match="not timm's"):
        create_backbone("timm/resnet18", bn="official")


def test_mobilenet_feature_layer_and_head_are_the_official_students():
    """The official student's feature layer is its classifier (Linear(960, 1280), hard-swish, Dropout 0.2);
    SEED wraps the network's fc into the head Linear(1280, 1280)-ReLU-Linear(1280, 128), whose last layer
    keeps the official N(0, 0.01) start with zero bias."""
    torch.manual_seed(0)
    backbone, head, d = create_network("mobilenetv3_large", 64, False, 3, 128)
    linear, act, drop = backbone.classifier
    assert (linear.in_features, linear.out_features, d) == (960, 1280, 1280)
    assert isinstance(act, nn.Hardswish) and isinstance(drop, nn.Dropout) and drop.p == 0.2
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(1280, 1280), (1280, 128)]
    assert isinstance(head[1], nn.ReLU)
    assert abs(linears[-1].weight.std().item() - 0.01) < 1e-3 and not linears[-1].bias.any()
    assert linears[0].weight.std().item() > 0.015  # PyTorch's default start, as the official inserted layer
    # official initialisation: every Linear N(0, 0.01), the squeeze-excite's too; convs He fan-out
    se = backbone.features[4].conv[5].fc[0]
    assert abs(se.weight.std().item() - 0.01) < 2e-3 and not se.bias.any()
    pw = backbone.features[15].conv[0]  # the last block's 1x1 expansion, 960 outputs: std sqrt(2 / 960)
    assert abs(pw.weight.std().item() - (2 / 960) ** 0.5) < 5e-3


def test_mobilenet_applies_squeeze_excite_before_the_activation():
    """Official order in an expanding block: 1x1, BN, act, depthwise, BN, SE, act, 1x1, BN (torchvision puts
    the activation before the SE)."""
    with torch.device("meta"):
        net, _ = create_backbone("mobilenetv3_large")
    kinds = [type(m).__name__ for m in net.features[4].conv]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "_SqueezeExcite", "ReLU",
                     "Conv2d", "BatchNorm2d"]
    assert [type(m).__name__ for m in net.features[1].conv] == [
        "Conv2d", "BatchNorm2d", "ReLU", "Identity", "Conv2d", "BatchNorm2d"]
    assert isinstance(net.features[7].conv[2], nn.Hardswish)


def test_efficientnet_feature_layer_dropout_and_same_padding():
    torch.manual_seed(0)
    net, d = create_backbone("efficientnet_b0")
    assert d == 1280 and net._dropout.p == 0.2  # the official Dropout before fc, in the student's features
    assert net._conv_stem.same == (0, 1, 0, 1)  # TF "SAME" at 224 px, stride 2: the odd pixel right/bottom
    assert net._blocks[3]._depthwise_conv.same == (1, 2, 1, 2)  # 5x5 stride 2 on 56 px
    net.eval()
    x = torch.randn(1, 3, 224, 224)
    stem = net._conv_stem(x)
    assert stem.shape[-1] == 112
    shifted = nn.functional.conv2d(nn.functional.pad(x, (0, 1, 0, 1)), net._conv_stem.weight, stride=2)
    assert torch.equal(stem, shifted)
    net.train()
    a, b = net(x.repeat(2, 1, 1, 1)).detach()
    assert not torch.equal(a, b)  # dropout and drop connect act in training
    net.eval()
    a, b = net(x.repeat(2, 1, 1, 1))
    assert torch.equal(a, b)


@pytest.mark.parametrize("layout", ["official", "torchvision"])
@pytest.mark.parametrize("name", SMALL)
def test_without_dropout_a_student_in_training_gives_one_output_an_image(name, layout):
    """`baseline.dropout: false`: dropout and drop connect off, so that a training batch passed twice comes
    out the same (the same kernels on the same shapes: exact on any CPU); BN and everything else as built."""
    from seedrun.models.networks import without_dropout

    torch.manual_seed(0)
    net, _ = create_backbone(name, small_images=True, in_chans=1, width=16, layout=layout)
    x = torch.randn(8, 1, 16, 16)
    net.train()
    assert not torch.equal(net(x), net(x))  # as built: dropout acts in training
    without_dropout(net).train()
    assert torch.equal(net(x), net(x))


def test_a_baseline_without_dropout_pretrains_a_network_without_it(tmp_path):
    """The sweep's student.baseline.dropout reaches the network the pre-training builds."""
    from seedrun.sweeps.sweep_file import expand
    from seedrun.training.pretrain import pretrain_backbone
    from conftest import TINY_SWEEP_BASE, write_sweep

    text = "name: s\n" + TINY_SWEEP_BASE + "  student: small_efficientnet_b0\nbaselines: true\n"
    x = torch.randn(4, 1, 16, 16)
    for dropout, same in (("true", False), ("false", True)):  # the recipe says false
        sweep = expand(write_sweep(tmp_path / "s.yaml", text), [f"student.baseline.dropout={dropout}"])
        (p,) = [run.config["pretrain"] for run in sweep.stage("pretrain") if run.config["pretrain"]["role"] == "baseline"]
        torch.manual_seed(0)
        net, _ = pretrain_backbone(p, 1)
        net.train()
        assert torch.equal(net(x), net(x)) is same  # dropout draws anew each pass


@pytest.mark.parametrize("name", SMALL)
def test_narrow_students_train_on_grey_16px_images(name):
    torch.manual_seed(0)
    backbone, head, d = create_network(name, 16, True, 1, 128)
    assert d == 320
    out = head(backbone(torch.randn(4, 1, 16, 16)))
    assert out.shape == (4, 128)
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in backbone.parameters())


def test_recipes_name_the_official_build_and_resnet_recipes_are_unchanged():
    """The small students' recipes carry student.bn and student.layout (so their runs get new hashes);
    the ResNets' recipes do not (their hashes stay)."""
    for path in sorted(RECIPES.glob("*.yaml")):
        recipe = yaml.safe_load(path.read_text())
        if recipe["arch"] in SMALL:
            assert (recipe["bn"], recipe["layout"]) == ("official", "official"), path.name
        else:
            assert "bn" not in recipe and "layout" not in recipe, path.name
    assert set(STUDENT_BUILD) == {"bn", "layout"}
    assert all(set(values) == {"official", "torchvision"} for values in STUDENT_BUILD.values())


def test_a_model_file_from_before_the_official_build_loads_as_it_was_built(tmp_path):
    """model.pt files of these students written before the official build name no layout: they were
    torchvision's networks, and load as such; a file that names its build is rebuilt that way."""
    from seedrun.models.model_file import load_own_model, save_model
    from seedrun.models.registry import create_network

    for build, extra in ((dict(bn="torchvision", layout="torchvision"), None),
                         (dict(bn="official", layout="official"), {"bn": "official", "layout": "official"})):
        backbone, head, _ = create_network("mobilenetv3_large", 16, True, 1, 32, **build)
        path = tmp_path / f"{build['layout']}.pt"
        save_model(path, backbone, head, arch="mobilenetv3_large", width=16, small_images=True, in_chans=1, extra=extra)
        loaded, _ = load_own_model(path, 1)
        assert loaded.state_dict().keys() == backbone.state_dict().keys()


def test_a_sweep_checks_the_build_settings_and_the_baseline_carries_them(cli, tmp_path):
    from conftest import TINY_SWEEP_BASE, write_sweep
    from seedrun.sweeps.sweep_file import expand

    def sweep(extra: str):
        return write_sweep(tmp_path / "s.yaml", "name: build\n" + TINY_SWEEP_BASE + "  student: mobilenetv3_large\n"
                           + extra + "grid:\n  distill.tau_teacher: [0.1]\nbaselines: true\n")

    bad = cli("sweep", str(sweep("  student.bn: tf\n")), "--dry-run", check=False)
    assert bad.returncode == 2 and "student.bn" in bad.stderr and "official, torchvision" in bad.stderr
    timm = cli("sweep", str(sweep("  student.arch: timm/resnet10t\n  student.layout: official\n")), "--dry-run",
               check=False)
    assert timm.returncode == 2 and "does not apply to timm/resnet10t" in timm.stderr and not cli.db.exists()
    runs = expand(str(sweep("  student.bn: torchvision\n")), dry_run=True).runs
    student = next(run for run in runs if run.stage == "distill").config["student"]
    baseline = next(run for run in runs if run.stage == "pretrain" and run.config["pretrain"]["role"] == "baseline")
    assert (student["bn"], student["layout"]) == ("torchvision", "official")
    assert (baseline.config["pretrain"]["bn"], baseline.config["pretrain"]["layout"]) == ("torchvision", "official")
