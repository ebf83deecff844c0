"""The registry: each backbone is defined once and found by name.

A builder returns the backbone with its classifier removed (it outputs pooled features) and the feature
dimension d. Small-image variants replace the 7x7 stride-2 stem and max-pool with a 3x3 stride-1 conv,
the usual change for 28-32 px inputs (as in the MoCo CIFAR demo and solo-learn).

`timm/NAME` names any timm architecture (seedrun.models.networks.timm_backbone), built as timm builds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Callable

from torch import nn


@dataclass(frozen=True)
class NetworkEntry:
    name: str
    role: str  # "teacher" | "student" | "both": where the paper uses it
    builder: Callable[..., tuple[nn.Module, int]]
    description: str


NETWORKS: dict[str, NetworkEntry] = {}


def register_network(name: str, role: str, description: str):
    def wrap(builder):
        NETWORKS[name] = NetworkEntry(name, role, builder, description)
        return builder

    return wrap


def create_backbone(name: str, *, small_images: bool = False, in_chans: int = 3, width: int = 64,
                    bn: str | None = None, layout: str | None = None) -> tuple[nn.Module, int]:
    """Build a registered backbone; returns (module producing (N, d) features, d).

    bn, layout: `student.bn` and `student.layout` (seedrun.models.catalog.STUDENT_BUILD); None is the
    official build. They mean nothing to a timm network, which timm builds its own way: naming one raises."""
    # The builders live in networks.py; importing it here keeps torchvision off the CLI's import path.
    from seedrun.models import networks  # noqa: F401
    from seedrun.models.catalog import TIMM_PREFIX

    settings = {key: value for key, value in (("bn", bn), ("layout", layout)) if value is not None}
    if name.startswith(TIMM_PREFIX):
        if settings:
            raise ValueError(f"{name}: student.bn and student.layout are for seedrun's own networks, not timm's")
        # timm's own stem, widths and feature size: `width` and `small_images` are seedrun's knobs for
        # the paper's networks and mean nothing to an arbitrary timm architecture
        return networks.timm_backbone(name, in_chans=in_chans)
    if name not in NETWORKS:
        raise KeyError(f"unknown network {name!r}; known: {', '.join(sorted(NETWORKS))}")
    return NETWORKS[name].builder(small_images=small_images, in_chans=in_chans, width=width, **settings)


def list_networks() -> list[NetworkEntry]:
    import_module("seedrun.models.networks")  # its builders register themselves

    return sorted(NETWORKS.values(), key=lambda e: e.name)


def create_network(arch: str, width: int, small_images: bool, channels: int, dim: int,
                   head_layers: int = 2, bn: str | None = None,
                   layout: str | None = None) -> tuple[nn.Module, nn.Module, int]:
    """A backbone with SEED's MLP projection head on top: (backbone, head, d)."""
    from seedrun.models.heads import init_last_linear, mlp_head

    backbone, d = create_backbone(arch, small_images=small_images, in_chans=channels, width=width, bn=bn, layout=layout)
    head = mlp_head(d, dim, layers=head_layers)
    # The official MobileNet's own fc becomes the last layer of SEED's head, with its N(0, 0.01) start.
    std = getattr(backbone, "head_init_std", None)
    if std is not None:
        init_last_linear(head, std)
    return backbone, head, d
