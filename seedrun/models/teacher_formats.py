"""Teacher checkpoints: detect the official layout, load it strictly, explain mismatches in one line.

Layouts recognised (see method-notes "Teacher checkpoint formats"; the official SEED loaders are in
tools/utils.py of jacobswan1/SEED):

- ``mocov2``: ``{"state_dict": {"module.encoder_q.<resnet key>", "module.encoder_q.fc.0/fc.2.*",
  "module.encoder_k.*", "module.queue", "module.queue_ptr"}, "epoch", "arch", "optimizer"}``.
  encoder_k and the queue are skipped; ``fc.*`` is the Linear-ReLU-Linear head.
- ``swav``: ``{"module.<resnet key>", "module.projection_head.0/1/3.*", "module.prototypes*"}`` (or the
  same keys bare); prototypes are skipped; projection_head is the Linear-BN-ReLU-Linear head.
- ``simclr``: ``{"model" or "state_dict": {"module.module.module.<resnet key>", "...fc.0/1/3.*"}}``; any
  number of leading ``module.`` is stripped; ``fc.*`` is the Linear-BN-ReLU-Linear head.
- ``torchvision``: plain ResNet keys (``conv1.weight`` ... ``fc.weight``), possibly under
  ``state_dict`` / ``model`` and ``module.``; the classifier ``fc.*`` is skipped, no head.
- ``seedrun``: ``{"seedrun": {"format": 1, "arch", "width", "small_images", "in_chans", ...},
  "backbone": state_dict, "head": state_dict or None}`` (written by seedrun.models.model_file.save_model).

Every file is read with ``torch.load(weights_only=True)``: no pickled code ever runs. Loading is strict:
every network tensor must come from the file and every file tensor must be used or be one the format
is known to carry for other purposes (encoder_k, queue, prototypes, a classifier). BatchNorm's
``num_batches_tracked`` may be absent (old checkpoints), as PyTorch itself allows.
"""

from __future__ import annotations

import os
from importlib import import_module
import re
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from seedrun.models.layouts import layout_of
from seedrun.models.model_file import sha256_file

FORMATS = ("mocov2", "swav", "simclr", "torchvision", "seedrun")

# (block kind, blocks per stage) -> arch, for ResNets whose stem has base width w
_RESNET_LAYOUTS = {
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
    ("bottleneck", (3, 4, 23, 3)): "resnet101",
    ("bottleneck", (3, 8, 36, 3)): "resnet152",
}
# head layouts each official format carries (MoCo v1 files share MoCo-v2's layout with a Linear head)
_HEAD_KIND = {"mocov2": ("mlp", "linear"), "simclr": ("bn_mlp",), "swav": ("bn_mlp",)}
_SHOW = 4  # keys shown per list in an error message


class CheckpointError(Exception):
    """A checkpoint that cannot be loaded as asked; ``str()`` is one line and starts with the path."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


# ----------------------------------------------------------------------------------------------
# reading


def _first_line(exc: BaseException) -> str:
    """A short one-line account of a torch.load failure (no ANSI codes, no advice paragraphs)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    unpickler = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    if unpickler:  # weights_only refused the pickle: say what, never suggest weights_only=False
        what = re.split(r" was not an allowed global|\. ", unpickler.group(1))[0].strip()
        return f"refused by torch.load(weights_only=True): {what}"
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    first = lines[0].split(". ")[0].rstrip(".") if lines else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def read_checkpoint(path: str | os.PathLike, digest: str | None = None) -> tuple[dict, str]:
    """(the loaded dict, sha256 of the file); any failure is a one-line CheckpointError."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    digest = digest or sha256_file(path)
    try:
        with warnings.catch_warnings():  # noise about pickle protocols of files that are not checkpoints
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, random bytes, pickle refused by weights_only, ...
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_first_line(exc)})") from None
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: not a checkpoint dict (the file holds a {type(state).__name__})")
    return dict(state), digest


# ----------------------------------------------------------------------------------------------
# layouts


def _strip_module(key: str) -> str:
    while key.startswith("module."):
        key = key[len("module.") :]
    return key


def _tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _inner(state: Mapping) -> tuple[str | None, Mapping]:
    """The state dict inside a checkpoint: under 'state_dict' or 'model', or the checkpoint itself."""
    for container in ("state_dict", "model"):
        if container in state and isinstance(state[container], Mapping):
            return container, state[container]
    return None, state


def _short(keys, n: int = _SHOW) -> str:
    """'[a, b, c, ... (+N more)]', in the given order (network or file order reads best)."""
    keys = list(keys)
    more = f", ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return "[" + ", ".join(keys[:n]) + more + "]"


def detect_format(state: dict) -> str:
    """One of FORMATS for a loaded checkpoint dict; CheckpointError (no path) when none fits."""
    if not isinstance(state, Mapping):
        raise CheckpointError(f"not a checkpoint dict ({type(state).__name__})")
    if isinstance(state.get("seedrun"), Mapping):
        return "seedrun"
    _, inner = _inner(state)
    layout = layout_of(k for k, v in inner.items() if isinstance(v, torch.Tensor))
    if layout is not None:
        return layout
    top = _short(sorted(str(k) for k in state))
    raise CheckpointError(f"unrecognised checkpoint layout (top-level keys {top})")


def split_state(state: dict, fmt: str) -> tuple[dict, dict | None, list[str], list[str]]:
    """(backbone state, head state or None, skipped keys, unexpected keys) in our module's key names."""
    backbone: dict = {}
    head: dict = {}
    skipped: list[str] = []
    unexpected: list[str] = []
    if fmt == "seedrun":
        bb = state.get("backbone")
        hd = state.get("head")
        if not _tensor_dict(bb):
            raise CheckpointError("seedrun checkpoint without a 'backbone' state dict")
        return dict(bb), (dict(hd) if _tensor_dict(hd) else None), [], []
    _, inner = _inner(state)
    for key, value in inner.items():
        if not isinstance(value, torch.Tensor):
            skipped.append(key)  # bookkeeping stored next to the tensors; strictness is about tensors
            continue
        if fmt == "mocov2":
            m = re.match(r"^(?:module\.)*encoder_q\.(.*)$", key)
            if m is None:
                rest = _strip_module(key)
                (skipped if rest.startswith("encoder_k.") or rest in ("queue", "queue_ptr") else unexpected).append(key)
                continue
            rest = m.group(1)
            head_prefix = "fc."
        else:
            rest = _strip_module(key)
            head_prefix = "projection_head." if fmt == "swav" else "fc."
        if fmt == "swav" and rest.startswith("prototypes"):
            skipped.append(key)
        elif fmt == "torchvision" and rest.startswith("fc."):
            skipped.append(key)  # the supervised classifier, not a projection head
        elif rest.startswith(head_prefix):
            head[rest[len(head_prefix) :]] = value
        else:
            backbone[rest] = value
    return backbone, (head or None), skipped, unexpected


# ----------------------------------------------------------------------------------------------
# architecture guess


def guess_arch(backbone: Mapping) -> dict | None:
    """{arch, width, small_images, in_chans} of a ResNet backbone state dict, from layer counts and
    widths; None when it is not a torchvision-layout ResNet. Base width 128 with ResNet-50 layers reads
    as resnet50x2 (width 64); any other base width w reads as that arch at width w."""
    stem = backbone.get("conv1.weight")
    if not isinstance(stem, torch.Tensor) or stem.dim() != 4:
        return None
    counts = []
    for stage in range(1, 5):
        idx = {int(m.group(1)) for k in backbone if (m := re.match(rf"^layer{stage}\.(\d+)\.", k))}
        if not idx:
            return None
        counts.append(max(idx) + 1)
    kind = "bottleneck" if "layer1.0.conv3.weight" in backbone else "basic"
    arch = _RESNET_LAYOUTS.get((kind, tuple(counts)))
    if arch is None:
        return None
    width = int(stem.shape[0])
    if arch == "resnet50" and width == 128:
        arch, width = "resnet50x2", 64
    return {"arch": arch, "width": width, "small_images": int(stem.shape[-1]) == 3, "in_chans": int(stem.shape[1])}


# ----------------------------------------------------------------------------------------------
# loading


def _check_and_load(module: nn.Module, state: Mapping, prefix: str, extra_unexpected=(), label: str = "") -> None:
    """Strict load; raise CheckpointError("<prefix>: missing keys [...], unexpected keys [...]").

    ``label`` is put before key names in the message (e.g. "fc." for a head stored under fc.*)."""
    own = module.state_dict()
    missing = [label + k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [label + k for k in state if k not in own] + list(extra_unexpected)
    mismatched = [
        f"{label}{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        msg = f"{prefix}: missing keys {_short(missing)}, unexpected keys {_short(unexpected)}"
        if mismatched:
            msg += f", shape mismatches (file vs network) {_short(mismatched, 3)}"
        raise CheckpointError(msg)
    module.load_state_dict(dict(state), strict=False)  # all checked above; tolerates num_batches_tracked


_HEAD_LABEL = {"mocov2": "fc.", "simclr": "fc.", "swav": "projection_head.", "seedrun": "head."}
_HEAD_NAMES = {"mlp": "Linear-ReLU-Linear", "bn_mlp": "Linear-BN-ReLU-Linear", "linear": "Linear"}


def _build_head(fmt: str, head_state: Mapping | None, d: int, prefix: str) -> nn.Module | None:
    from seedrun.models.heads import head_from_state_dict

    if head_state is None:
        return None
    label = _HEAD_LABEL.get(fmt, "")
    try:
        head = head_from_state_dict(head_state)
    except ValueError:
        raise CheckpointError(f"{prefix}: unrecognised head keys {_short(label + k for k in head_state)}") from None
    if isinstance(head, nn.Linear):
        kind, first = "linear", head
    else:
        kind, first = ("bn_mlp" if isinstance(head[1], nn.BatchNorm1d) else "mlp"), head[0]
    allowed = _HEAD_KIND.get(fmt)
    if allowed is not None and kind not in allowed:
        want = " or ".join(_HEAD_NAMES[k] for k in allowed)
        raise CheckpointError(f"{prefix}: the file's head is {_HEAD_NAMES[kind]}, expected {want}")
    if first.in_features != d:
        raise CheckpointError(f"{prefix}: the head takes {first.in_features}-d input but the backbone gives d={d}")
    _check_and_load(head, head_state, prefix, label=label)
    return head


def load_from_state(
    state: dict,
    path: str,
    digest: str,
    arch: str | None,
    width: int | None,
    small_images: bool | None,
    in_chans: int | None,
    expect: str | None,
    freeze: bool,
):
    from seedrun.models.heads import head_shape
    from seedrun.models.registry import NETWORKS, create_backbone

    try:
        fmt = detect_format(state)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    marker = dict(state["seedrun"]) if fmt == "seedrun" else {}
    if expect is not None and fmt not in (expect, "seedrun"):
        raise CheckpointError(f"{path}: expected {expect} checkpoint, found the {fmt} layout")
    try:
        bb_state, head_state, skipped, unexpected = split_state(state, fmt)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    guess = guess_arch(bb_state) or {}
    source = marker or guess
    arch = arch or source.get("arch")
    if arch is None:
        raise CheckpointError(f"{path}: {fmt} checkpoint of an unrecognised network; name its arch")
    width = width if width is not None else source.get("width", 64)
    small_images = small_images if small_images is not None else source.get("small_images", False)
    in_chans = in_chans if in_chans is not None else source.get("in_chans", 3)
    from seedrun.models.catalog import TIMM_PREFIX
    from seedrun.models.model_file import build_of

    if arch not in NETWORKS:
        import_module("seedrun.models.networks")  # its builders register themselves
    if arch not in NETWORKS and not arch.startswith(TIMM_PREFIX):  # a timm network: timm builds it, from no download
        raise CheckpointError(f"{path}: unknown network {arch!r}")

    prefix = f"{path}: expected {fmt} checkpoint for {arch}"
    backbone, d = create_backbone(arch, small_images=small_images, in_chans=in_chans, width=width,
                                  **(build_of(marker, bb_state) if marker else {}))
    try:
        _check_and_load(backbone, bb_state, prefix, extra_unexpected=unexpected)
    except CheckpointError as exc:
        if guess and (guess["arch"], guess["width"]) != (arch, width):
            looks = f"{guess['arch']} width {guess['width']}"
            raise CheckpointError(f"{exc} (the file looks like {looks})") from None
        raise
    head = _build_head(fmt, head_state, d, prefix)
    for module in (backbone, head):
        if module is not None and freeze:
            module.eval()
            module.requires_grad_(False)
    info = {
        "path": str(path),
        "format": fmt,
        "sha256": digest,
        "arch": arch,
        "width": width,
        "small_images": small_images,
        "in_chans": in_chans,
        "feature_dim": d,
        "head_shape": head_shape(head),
        "skipped_keys": len(skipped),
        "method": marker.get("method") or (fmt if fmt in _HEAD_KIND else None),
    }
    for key in ("epoch", "arch"):
        if key in state and isinstance(state[key], (int, str)):
            info[f"file_{key}"] = state[key]
    return backbone, head, info


def load_teacher(
    path: str | os.PathLike,
    arch: str | None,
    width: int | None = 64,
    small_images: bool | None = False,
    in_chans: int | None = 3,
    *,
    expect: str | None = None,
    freeze: bool = True,
) -> tuple[nn.Module, nn.Module | None, dict]:
    """Load a teacher checkpoint in any of FORMATS strictly; returns (backbone, head or None, info).

    ``arch`` (and width / small_images / in_chans) name the network to build; ``None`` takes it from a
    seedrun marker or from the file's layer counts. ``expect`` (a method name, e.g. the recipe's
    ``method``) rejects a file of another official layout. The modules come back in eval mode without
    gradients unless ``freeze=False``. ``info`` holds format, sha256, arch, width, feature_dim,
    head_shape (in, hidden, out) or None, skipped_keys (encoder_k, queue, prototypes, classifier), method.
    Every failure is a CheckpointError whose str is one line starting with the path.
    """
    path = os.fspath(path)
    state, digest = read_checkpoint(path)
    return load_from_state(state, path, digest, arch, width, small_images, in_chans, expect, freeze)
