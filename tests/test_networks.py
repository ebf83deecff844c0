"""Every registered network builds, runs forward and backward at the sizes the project uses, and agrees
with the torch-free catalog that `seedrun list` prints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

from seedrun.models import catalog, create_backbone, list_networks

torch.set_num_threads(1)

NAMES = [e.name for e in list_networks()]
CATALOG = {info.name: info for info in catalog.NETWORKS}

# (image size, small_images, in_chans)
CONFIGS = [(28, True, 1), (28, True, 3), (32, True, 3), (224, False, 3)]


def _test_width(name: str) -> int:
    # Narrow networks keep this quick on a shared CPU; the point is the shapes and that gradients flow.
    # test_registered_dims_at_default_width covers the paper's width 64.
    return 16 if CATALOG[name].family == "resnet" else 32


def _check_stem(name, net, small_images, in_chans):
    if CATALOG[name].family == "resnet":
        stem = net.conv1
        assert stem.kernel_size == ((3, 3) if small_images else (7, 7))
        assert isinstance(net.maxpool, nn.Identity) == small_images
    else:
        stem = net.features[0][0]
        assert stem.kernel_size == (3, 3)
    assert stem.stride == ((1, 1) if small_images else (2, 2))
    assert stem.in_channels == in_chans


@pytest.mark.parametrize("size,small_images,in_chans", CONFIGS, ids=lambda v: str(v))
@pytest.mark.parametrize("name", NAMES)
def test_forward_backward(name, size, small_images, in_chans):
    torch.manual_seed(0)
    width = _test_width(name)
    net, d = create_backbone(name, small_images=small_images, in_chans=in_chans, width=width)
    assert d == CATALOG[name].d * width // 64  # every family scales d with the width
    _check_stem(name, net, small_images, in_chans)
    net.train()
    x = torch.randn(2, in_chans, size, size)
    y = net(x)
    assert y.shape == (2, d)
    y.pow(2).mean().backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", NAMES)
def test_registered_dims_at_default_width(name):
    with torch.device("meta"):  # shapes only: building and running the full-width network costs nothing
        net, d = create_backbone(name)  # width 64, full-size stem
        net.eval()
        y = net(torch.empty(1, 3, 64, 64))
    assert d == CATALOG[name].d
    assert y.shape == (1, d)


def test_catalog_matches_registry():
    entries = {e.name: e for e in list_networks()}
    assert set(entries) == set(catalog.NETWORK_NAMES)
    assert len(catalog.NETWORK_NAMES) == len(set(catalog.NETWORK_NAMES))
    for name, entry in entries.items():
        assert entry.role == CATALOG[name].role
        assert entry.description == CATALOG[name].description
        assert entry.role in ("teacher", "student", "both")
    assert set(catalog.TEACHER_METHOD_NAMES) == {"mocov2", "simclr", "swav"}
    from seedrun.models.teacher_formats import FORMATS
    from seedrun.models.heads import TEACHER_HEADS

    for method in catalog.TEACHER_METHODS:
        assert method.checkpoint_format in FORMATS
        assert method.name in TEACHER_HEADS
        assert method.description and "\n" not in method.description


def test_catalog_module_is_torch_free():
    # Load catalog.py by file, as `seedrun list` needs it, and check it pulls in no torch.
    path = Path(catalog.__file__)
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('catalog', {str(path)!r})\n"
        "mod = importlib.util.module_from_spec(spec); sys.modules['catalog'] = mod\n"
        "spec.loader.exec_module(mod)\n"
        "assert mod.NETWORKS and mod.TEACHER_METHODS\n"
        "assert 'torch' not in sys.modules, 'catalog imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "name,tv_builder",
    [
        ("resnet18", tv_resnet.resnet18),
        ("resnet34", tv_resnet.resnet34),
        ("resnet50", tv_resnet.resnet50),
        ("resnet101", tv_resnet.resnet101),
        ("resnet152", tv_resnet.resnet152),
    ],
)
def test_resnet_keys_match_torchvision(name, tv_builder):
    with torch.device("meta"):  # shapes only, no memory or init cost
        ours, _ = create_backbone(name)
        ref = tv_builder(weights=None)
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == ref_shapes


@pytest.mark.parametrize("block,layers", [("BasicBlock", [2, 2, 2, 2]), ("Bottleneck", [3, 4, 6, 3])])
@pytest.mark.parametrize("small_images", [True, False])
def test_resnet_draws_torchvisions_initial_weights(block, layers, small_images):
    """Our blocks and stages (seedrun.models.resnet_blocks) against torchvision's, under the same stem and
    initialisation (networks.ResNet): from one seed, the same random draws, so the same initial weights
    under the same keys in the same order; then the same features and gradients."""
    from seedrun.models import networks

    class WithTorchvisionsStages(networks.ResNet):
        _make_layer = tv_resnet.ResNet._make_layer
        _forward_impl = tv_resnet.ResNet._forward_impl
        forward = tv_resnet.ResNet.forward

    torch.manual_seed(3)
    ours = networks.ResNet(getattr(networks, block), layers, width=16, small_images=small_images)
    after_ours = torch.rand(4)
    torch.manual_seed(3)
    ref = WithTorchvisionsStages(getattr(tv_resnet, block), layers, width=16, small_images=small_images)
    assert torch.equal(after_ours, torch.rand(4))  # as many draws
    theirs = ref.state_dict()
    assert list(ours.state_dict()) == list(theirs)
    assert all(torch.equal(value, theirs[key]) for key, value in ours.state_dict().items())
    x = torch.randn(2, 3, 32, 32)
    out, expected = ours(x), ref(x)
    assert torch.equal(out, expected)
    out.square().sum().backward()
    expected.square().sum().backward()
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(ours.parameters(), ref.parameters()))


def _torchvision_resnet(builder, small_images: bool) -> nn.Module:
    """torchvision's own network, fc dropped; with our small-image stem where asked (3x3 stride 1, no max-pool)."""
    net = builder(weights=None)
    net.fc = nn.Identity()
    if small_images:
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    return net


@pytest.mark.parametrize("name,builder", [("resnet18", tv_resnet.resnet18), ("resnet50", tv_resnet.resnet50)])
@pytest.mark.parametrize("small_images", [True, False])
def test_resnet_with_torchvisions_weights_computes_torchvisions_features(name, builder, small_images):
    """torchvision's ResNet itself (width 64, as the paper's): its weights load into ours by key, with
    nothing missing or left over, and then both give the same features and the same gradients."""
    torch.manual_seed(5)
    ref = _torchvision_resnet(builder, small_images)
    ours, d = create_backbone(name, small_images=small_images)
    ours.load_state_dict(ref.state_dict(), strict=True)
    size = 32 if small_images else 64
    x = torch.randn(2, 3, size, size)
    for train in (True, False):
        ours.train(train), ref.train(train)
        out, expected = ours(x), ref(x)
        assert out.shape == (2, d)
        assert torch.equal(out, expected)
    ours.train(), ref.train()
    ours(x).square().sum().backward()
    ref(x).square().sum().backward()
    theirs = dict(ref.named_parameters())
    assert all(torch.equal(param.grad, theirs[key].grad) for key, param in ours.named_parameters())


def test_resnet_is_initialised_as_torchvision_does_it(monkeypatch):
    """The same initialiser, with the same arguments, on the same tensors in the same order as torchvision's
    ResNet-50 (kaiming normal, fan out, for ReLU); batch norms start at weight 1, bias 0, the last of
    each block too (torchvision's default, and the official code's: no zero-initialised residual)."""
    calls = []

    def recording(tensor, *args, **kwargs):
        calls.append((tuple(tensor.shape), args, kwargs))
        return tensor

    monkeypatch.setattr(nn.init, "kaiming_normal_", recording)
    with torch.device("meta"):
        create_backbone("resnet50")
        ours = list(calls)
        calls.clear()
        tv_resnet.resnet50(weights=None)
    assert ours == calls and len(ours) == 53  # every convolution of ResNet-50, once
    monkeypatch.undo()
    net, _ = create_backbone("resnet50", width=8, small_images=True)
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 53 and all(bool((m.weight == 1).all() and (m.bias == 0).all()) for m in norms)


def test_building_a_resnet_does_not_import_torchvision():
    # torchvision's package import pulls in torch._dynamo: seconds of every job's start
    code = ("import sys\nfrom seedrun.models import create_backbone\ncreate_backbone('resnet18', width=8)\n"
            "assert 'torchvision' not in sys.modules, 'torchvision was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_resnet50x2_doubles_every_channel():
    with torch.device("meta"):
        wide, d = create_backbone("resnet50x2")
        base, _ = create_backbone("resnet50", width=128)
    assert d == 4096
    assert wide.conv1.weight.shape[0] == 128
    assert wide.layer4[2].conv3.weight.shape[0] == 4096
    assert {k: v.shape for k, v in wide.state_dict().items()} == {k: v.shape for k, v in base.state_dict().items()}
    n_params = sum(p.numel() for p in wide.parameters())
    assert 93e6 < n_params < 95e6  # SimCLR reports 94M for R50 (2x)


def test_mobilenet_keeps_1280_projection():
    with torch.device("meta"):
        net, d = create_backbone("mobilenetv3_large")
    linear, act = net.classifier[0], net.classifier[1]
    assert isinstance(linear, nn.Linear) and (linear.in_features, linear.out_features) == (960, 1280)
    assert isinstance(act, nn.Hardswish)
    assert not any(isinstance(m, nn.Linear) and m.out_features == 1000 for m in net.modules())


def test_width_scales_students():
    for name in ("mobilenetv3_large", "efficientnet_b0", "efficientnet_b1"):
        with torch.device("meta"):
            _, d = create_backbone(name, width=16)
        assert d == 320
    with torch.device("meta"):
        _, d = create_backbone("resnet18", width=32)
    assert d == 256
