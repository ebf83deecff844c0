"""What can be named in a recipe, as plain data: networks and teacher pre-training methods.

Torch-free on purpose: `seedrun list` prints these without importing torch. The registry
(seedrun.models.networks) takes each network's role and description from here, and
tests/test_networks.py checks that the two agree (same names, and each builder's d at width 64).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Optional


@dataclass(frozen=True)
class NetworkInfo:
    name: str
    role: str  # "teacher" | "student" | "both": where the paper uses it
    d: int  # pooled feature dimension at the default width 64
    description: str
    family: str  # "resnet" | "mobilenet" | "efficientnet"

    @property
    def dim(self) -> int:
        return self.d


@dataclass(frozen=True)
class TeacherMethod:
    name: str
    description: str
    checkpoint_format: str  # the seedrun.models.teacher_formats format its official release uses
    head: str  # the projection head on the released checkpoint
    reference: dict = field(default_factory=dict)  # the method paper's ImageNet pre-training settings


NETWORKS: tuple[NetworkInfo, ...] = (
    NetworkInfo("resnet18", "student", 512, "ResNet-18 (He et al. 2016), d=512", "resnet"),
    NetworkInfo("resnet34", "student", 512, "ResNet-34, d=512", "resnet"),
    NetworkInfo("resnet50", "teacher", 2048, "ResNet-50, d=2048", "resnet"),
    NetworkInfo("resnet101", "teacher", 2048, "ResNet-101, d=2048", "resnet"),
    NetworkInfo("resnet152", "teacher", 2048, "ResNet-152, d=2048", "resnet"),
    NetworkInfo(
        "resnet50x2", "teacher", 4096, "ResNet-50 x2 (SimCLR/SwAV R50x2: all channels doubled), d=4096", "resnet"
    ),
    NetworkInfo("mobilenetv3_large", "student", 1280, "MobileNet-v3-Large (Howard et al. 2019), d=1280", "mobilenet"),
    NetworkInfo("efficientnet_b0", "student", 1280, "EfficientNet-B0 (Tan & Le 2019), d=1280", "efficientnet"),
    NetworkInfo("efficientnet_b1", "student", 1280, "EfficientNet-B1, d=1280", "efficientnet"),
)

TEACHER_METHODS: tuple[TeacherMethod, ...] = (
    TeacherMethod(
        "mocov2",
        "MoCo-v2 (Chen et al. 2020): momentum encoder + 65,536-key queue, InfoNCE with an MLP head",
        checkpoint_format="mocov2",
        head="Linear(d,d)-ReLU-Linear(d,128)",
        reference={
            "epochs": 200,
            "batch_size": 256,
            "optimizer": "SGD momentum 0.9",
            "lr": 0.03,
            "weight_decay": 1e-4,
            "schedule": "cosine",
            "tau": 0.2,
            "queue_size": 65536,
            "encoder_momentum": 0.999,
            "dim": 128,
            "crop_scale": [0.2, 1.0],
            "official_checkpoint": "moco_v2_200ep_pretrain.pth.tar (keys module.encoder_q.*)",
        },
    ),
    TeacherMethod(
        "simclr",
        "SimCLR (Chen et al. 2020): two views, NT-Xent over the large batch, BN projection head",
        checkpoint_format="simclr",
        head="Linear(d,d)-BN-ReLU-Linear(d,128)",
        reference={
            "epochs": 1000,
            "batch_size": 4096,
            "optimizer": "LARS",
            "lr": 4.8,  # 0.3 x batch / 256
            "weight_decay": 1e-6,
            "schedule": "10-epoch warm-up, cosine",
            "tau": 0.1,
            "dim": 128,
            "crop_scale": [0.08, 1.0],
            "official_checkpoint": "TF release converted to PyTorch (['model'], prefix module.module.module.)",
        },
    ),
    TeacherMethod(
        "swav",
        "SwAV (Caron et al. 2020): online clustering, swapped prediction of Sinkhorn codes, multi-crop",
        checkpoint_format="swav",
        head="Linear(d,h)-BN-ReLU-Linear(h,128), h=2048 (R-50) / 8192 (R50x2)",
        reference={
            "epochs": 800,
            "batch_size": 4096,
            "optimizer": "LARS",
            "lr": 4.8,
            "weight_decay": 1e-6,
            "schedule": "cosine",
            "tau": 0.1,
            "prototypes": 3000,
            "sinkhorn_epsilon": 0.05,
            "dim": 128,
            "multi_crop": "2x224 (scale 0.14-1) + 6x96 (scale 0.05-0.14)",
            "official_checkpoint": "swav_800ep_pretrain.pth.tar (keys module.*, prototypes skipped)",
        },
    ),
)

METHODS = TEACHER_METHODS  # the name `seedrun list` uses

# How a MobileNet-v3 or EfficientNet student is built: `student.bn` and `student.layout`, official by default
# (issue 21: the paper's students as the official SEED code builds them). Both codes build ResNets alike
# (plain BatchNorm2d, torchvision's keys), so for ResNets either value gives the same network.
STUDENT_BUILD: dict[str, dict[str, str]] = {
    "bn": {
        "official": "BatchNorm as the official SEED code's students: MobileNet-v3 momentum 0.1, eps 1e-5; "
                    "EfficientNet momentum 0.01, eps 1e-3",
        "torchvision": "BatchNorm as torchvision's builders: mobilenet_v3_large momentum 0.01, eps 1e-3; "
                       "efficientnet_b0/b1 momentum 0.1, eps 1e-5 (seedrun's students before issue 21)",
    },
    "layout": {
        "official": "the official code's modules and checkpoint keys (features.N.conv.*, _blocks.N.*), its SE "
                    "placement, TF-same padding and initialisation",
        "torchvision": "torchvision's MobileNetV3/EfficientNet modules and keys (seedrun's students before issue 21)",
    },
}
#: `pretrain.head` (a student-alone run: `student.baseline.head`), checked at plan time; seedrun.models.heads
#: builds them (PRETRAIN_HEADS): auto is the method's own head
PRETRAIN_HEAD_NAMES = ("auto", "mlp", "bn_mlp")

# (momentum, eps) of every BatchNorm2d, by network family and `student.bn`. The official EfficientNet is
# EfficientNet-PyTorch's: TensorFlow's decay 0.99 is PyTorch's momentum 1 - 0.99.
BN_SETTINGS: dict[str, dict[str, tuple[float, float]]] = {
    "mobilenet": {"official": (0.1, 1e-5), "torchvision": (0.01, 1e-3)},
    "efficientnet": {"official": (0.01, 1e-3), "torchvision": (0.1, 1e-5)},
    "resnet": {"official": (0.1, 1e-5), "torchvision": (0.1, 1e-5)},
}


def check_student_build(key: str, value: object) -> Optional[str]:
    """Why `student.<key>: value` is not a build setting (None when it is); key is "bn" or "layout"."""
    if key not in STUDENT_BUILD:
        return f"unknown student build setting {key!r}; known: {', '.join(STUDENT_BUILD)}"
    if value not in STUDENT_BUILD[key]:
        return f"student.{key} must be one of {', '.join(STUDENT_BUILD[key])}, got {value!r}"
    return None

NETWORK_NAMES: tuple[str, ...] = tuple(n.name for n in NETWORKS)
TEACHER_METHOD_NAMES: tuple[str, ...] = tuple(m.name for m in TEACHER_METHODS)


def network_info(name: str) -> NetworkInfo:
    for info in NETWORKS:
        if info.name == name:
            return info
    raise KeyError(f"unknown network {name!r}; known: {', '.join(NETWORK_NAMES)}")


TIMM_PREFIX = "timm/"  # `student.arch: timm/NAME`: any timm architecture (seedrun.models.networks.timm_backbone)


def parse_timm_arch(arch: str) -> tuple[str, dict[str, object]]:
    """`timm/NAME[:key=value,...]` -> (NAME, {key: value}): the keywords go to timm.create_model, e.g.
    `timm/vit_tiny_patch16_224:img_size=16,patch_size=4` for a ViT-Tiny on 16 px images. They live in the
    arch string because that is what a run's model.pt keeps, so the network is rebuilt the same when it
    is evaluated or distilled from. Values are ints, floats, true/false, or else strings.
    Raises ValueError on text that is not key=value pairs."""
    name, _, options = arch[len(TIMM_PREFIX):].partition(":")
    kwargs: dict[str, object] = {}
    for item in filter(None, options.split(",")):
        key, equals, text = item.partition("=")
        if not equals or not key.strip().isidentifier():
            raise ValueError(f"expected key=value after {name}:, got {item!r}")
        kwargs[key.strip()] = _option_value(text.strip())
    return name, kwargs


def _option_value(text: str) -> object:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _timm_cache_file(version: str) -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "seedrun", f"timm-models-{version}.json")


@lru_cache(maxsize=1)
def timm_model_names() -> frozenset[str]:
    """timm's registered architecture names. Importing timm imports torch, which planning a sweep must not
    (the CLI's reading commands stay torch-free, and 5 s on 2 cores for a check is too long): a child
    interpreter asks timm once per timm version and the list is cached beside the teacher digests.
    Raises LookupError when timm is not installed."""
    import json
    from importlib.metadata import PackageNotFoundError, version

    try:
        timm_version = version("timm")
    except PackageNotFoundError:
        raise LookupError("timm is not installed (pip install timm)") from None
    path = _timm_cache_file(timm_version)
    try:
        with open(path, encoding="utf-8") as fh:
            return frozenset(json.load(fh))
    except (OSError, ValueError):
        pass
    import subprocess
    import sys

    ask = "import json, sys, timm; json.dump(timm.list_models(), sys.stdout)"
    listing = subprocess.run([sys.executable, "-c", ask], capture_output=True, text=True, timeout=600)
    if listing.returncode != 0:
        last = (listing.stderr.strip().splitlines() or ["no output"])[-1]
        raise LookupError(f"timm could not list its networks: {last}")
    names = json.loads(listing.stdout)
    try:
        from seedrun.atomic import atomic_write_json

        atomic_write_json(path, names, fsync=False)
    except OSError:
        pass  # a cache: without it timm is only asked again
    return frozenset(names)


def timm_names(pattern: str = "*") -> list[str]:
    """timm's architecture names matching a shell pattern, as `timm/NAME` values for student.arch."""
    from fnmatch import fnmatch

    return sorted(TIMM_PREFIX + name for name in timm_model_names() if fnmatch(name, pattern))


def check_arch(name: object) -> Optional[str]:
    """Why `name` cannot be built as a network (None when it can): one of NETWORK_NAMES or timm/NAME, NAME
    a timm architecture, optionally with a pretrained tag (resnet10t.c3_in1k: the tag names weights,
    which are never downloaded, so it builds the same network)."""
    if isinstance(name, str) and name in NETWORK_NAMES:
        return None
    if not isinstance(name, str) or not name.startswith(TIMM_PREFIX):
        return f"unknown network {name!r}; expected one of {', '.join(NETWORK_NAMES)} or timm/NAME (any timm network)"
    try:
        base = parse_timm_arch(name)[0].split(".")[0]
    except ValueError as exc:
        return str(exc)
    try:
        known = timm_model_names()
    except LookupError as exc:
        return f"{name}: {exc}"
    if base in known:
        return None
    from difflib import get_close_matches

    near = get_close_matches(base, sorted(known), n=3)
    return f"unknown timm network {base!r}" + (f" (close: {', '.join(near)})" if near else "")


def teacher_method(name: str) -> TeacherMethod:
    for method in TEACHER_METHODS:
        if method.name == name:
            return method
    raise KeyError(f"unknown teacher method {name!r}; known: {', '.join(TEACHER_METHOD_NAMES)}")
