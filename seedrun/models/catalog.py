"""What can be named in a recipe, as plain data: networks and teacher pre-training methods.

Torch-free on purpose: `seedrun list` prints these without importing torch. The registry
(seedrun.models.networks) takes each network's role and description from here, and
tests/test_networks.py checks that the two agree (same names, and each builder's d at width 64).
"""

from __future__ import annotations

from dataclasses import dataclass, field


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

NETWORK_NAMES: tuple[str, ...] = tuple(n.name for n in NETWORKS)
TEACHER_METHOD_NAMES: tuple[str, ...] = tuple(m.name for m in TEACHER_METHODS)


def network_info(name: str) -> NetworkInfo:
    for info in NETWORKS:
        if info.name == name:
            return info
    raise KeyError(f"unknown network {name!r}; known: {', '.join(NETWORK_NAMES)}")


def teacher_method(name: str) -> TeacherMethod:
    for method in TEACHER_METHODS:
        if method.name == name:
            return method
    raise KeyError(f"unknown teacher method {name!r}; known: {', '.join(TEACHER_METHOD_NAMES)}")
