"""Projection heads.

SEED's student head is Linear(d, d) -> ReLU -> Linear(d, 128) without BN (official seed/builder.py);
MoCo-v2's head is the same shape (2048 -> 2048 -> ReLU -> 128), so one builder serves both.

The teachers' heads, with the module indices their official checkpoints use (so they load by key):
- MoCo-v2 (``fc.0``, ``fc.2``):            Linear(d, d) -> ReLU -> Linear(d, 128)
- SimCLR  (``fc.0``, ``fc.1``, ``fc.3``):   Linear(d, d) -> BN(d) -> ReLU -> Linear(d, 128)
- SwAV    (``projection_head.0/1/3``):    Linear(d, h) -> BN(h) -> ReLU -> Linear(h, 128),
  h = 2048 for ResNet-50, 8192 for ResNet-50x2 (SwAV's ``hidden_mlp``); SwAV normalises the output,
  which SEED's loss does anyway.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn


def mlp_head(dim_in: int, dim_out: int = 128, hidden: int | None = None, layers: int = 2) -> nn.Sequential:
    """Linear(d, h)-ReLU-...-Linear(h, 128): SEED's student head with layers=2; the paper's appendix
    tries a deeper student projection head (layers=3 or more)."""
    hidden = hidden or dim_in
    modules: list[nn.Module] = []
    width = dim_in
    for _ in range(layers - 1):
        modules += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
        width = hidden
    return nn.Sequential(*modules, nn.Linear(width, dim_out))


def init_last_linear(head: nn.Module, std: float) -> None:
    """Start a head's last Linear from N(0, std) with zero bias. The official SEED code builds its student's
    head by wrapping the network's own `fc` (Linear(d, 128)) as the head's last layer, so that layer keeps
    the network's initialisation: N(0, 0.01) for the official MobileNet-v3, where the inserted Linear(d, d)
    keeps PyTorch's default."""
    last = [m for m in head.modules() if isinstance(m, nn.Linear)][-1]
    nn.init.normal_(last.weight, 0, std)
    if last.bias is not None:
        nn.init.zeros_(last.bias)


def bn_mlp_head(dim_in: int, dim_out: int = 128, hidden: int | None = None) -> nn.Sequential:
    """Linear -> BatchNorm1d -> ReLU -> Linear (SimCLR's and SwAV's projection head)."""
    hidden = hidden or dim_in
    return nn.Sequential(
        nn.Linear(dim_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim_out)
    )


def mocov2_head(dim_in: int, dim_out: int = 128) -> nn.Sequential:
    return mlp_head(dim_in, dim_out)


def simclr_head(dim_in: int, dim_out: int = 128) -> nn.Sequential:
    return bn_mlp_head(dim_in, dim_out, hidden=dim_in)


def swav_hidden(dim_in: int) -> int:
    """SwAV's hidden_mlp: 2048 for ResNet-50 (d=2048), 8192 for ResNet-50x2 (d=4096)."""
    return 2048 if dim_in <= 2048 else 2 * dim_in


def swav_head(dim_in: int, dim_out: int = 128, hidden: int | None = None) -> nn.Sequential:
    return bn_mlp_head(dim_in, dim_out, hidden=hidden or swav_hidden(dim_in))


TEACHER_HEADS = {"mocov2": mocov2_head, "simclr": simclr_head, "swav": swav_head}


def teacher_head(method: str, dim_in: int, dim_out: int = 128, head: str = "auto") -> nn.Sequential:
    """The projection head a network pre-trained with ``method`` (mocov2 | simclr | swav) carries: the
    method's own (``head`` auto), or the one ``head`` names (PRETRAIN_HEADS)."""
    if method not in TEACHER_HEADS:
        raise KeyError(f"unknown teacher method {method!r}; known: {', '.join(sorted(TEACHER_HEADS))}")
    if head in (None, "auto"):
        return TEACHER_HEADS[method](dim_in, dim_out)
    if head not in PRETRAIN_HEADS:
        raise KeyError(f"unknown pre-training head {head!r}; known: auto, {', '.join(PRETRAIN_HEADS)}")
    return PRETRAIN_HEADS[head](dim_in, dim_out)


#: `pretrain.head` (seedrun.models.catalog.PRETRAIN_HEAD_NAMES, checked at plan time): mlp is MoCo-v2's
#: Linear-ReLU-Linear, bn_mlp SimCLR's Linear-BN-ReLU-Linear (MoCo v3 keeps BN in its heads too)
PRETRAIN_HEADS = {"mlp": mocov2_head, "bn_mlp": simclr_head}


def head_from_state_dict(state: Mapping) -> nn.Module:
    """Build the head whose state dict (keys ``0.weight``, ...) this is, sized from its tensors.

    Recognises Linear-ReLU-Linear (0, 2), Linear-BN-ReLU-Linear (0, 1, 3) and a single Linear.
    Raises ValueError for anything else.
    """
    keys = set(state)
    if {"0.weight", "1.running_mean", "3.weight"} <= keys:
        hidden, dim_in = state["0.weight"].shape
        return bn_mlp_head(dim_in, state["3.weight"].shape[0], hidden=hidden)
    if {"0.weight", "2.weight"} <= keys and "1.running_mean" not in keys:
        hidden, dim_in = state["0.weight"].shape
        layers = 2
        while f"{2 * layers}.weight" in keys:  # deeper heads: Linear at 0, 2, 4, ...
            layers += 1
        return mlp_head(dim_in, state[f"{2 * (layers - 1)}.weight"].shape[0], hidden=hidden, layers=layers)
    if "weight" in keys and state["weight"].dim() == 2:
        dim_out, dim_in = state["weight"].shape
        return nn.Linear(dim_in, dim_out, bias="bias" in keys)
    raise ValueError(f"unrecognised head layout, keys {sorted(keys)[:6]}")


def head_shape(head: nn.Module | None) -> tuple[int, ...] | None:
    """(in, hidden..., out) widths of a head's Linear layers, e.g. (2048, 2048, 128); None for no head."""
    if head is None:
        return None
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not linears:
        return None
    return (linears[0].in_features, *(m.out_features for m in linears))
