"""`seedrun teacher inspect PATH`: what a checkpoint file is (format, architecture, head, digest) and
whether it loads, said even when it does not."""

from __future__ import annotations

import os
from collections.abc import Mapping

from seedrun.models.teacher_formats import (CheckpointError, detect_format, guess_arch, load_from_state,
                                            read_checkpoint, split_state)
from seedrun.models.model_file import sha256_file


def inspect(path: str | os.PathLike) -> dict:
    """What a checkpoint is: format, arch guess, head shape and a verdict ("ok" or the error line)."""
    path = os.fspath(path)
    out: dict = {"path": path, "format": None, "arch": None, "width": None, "small_images": None,
                 "in_chans": None, "feature_dim": None, "head_shape": None, "sha256": None, "verdict": None}
    try:
        out["size_bytes"] = os.path.getsize(path)
    except OSError:
        pass
    state = None
    if os.path.isfile(path):
        out["sha256"] = sha256_file(path)
    try:
        state, _ = read_checkpoint(path, out["sha256"])
        _, _, info = load_from_state(state, path, out["sha256"], None, None, None, None, None, True)
    except CheckpointError as exc:
        out["verdict"] = str(exc)
        if state is None:
            return out
        try:  # say as much as can still be said
            out["format"] = detect_format(state)
            bb, hd, _, _ = split_state(state, out["format"])
            out.update(guess_arch(bb) or {})
            if hd is not None:
                from seedrun.models.heads import head_from_state_dict, head_shape

                out["head_shape"] = head_shape(head_from_state_dict(hd))
        except Exception:
            pass
        return out
    for key in ("format", "arch", "width", "small_images", "in_chans", "feature_dim", "head_shape",
                "skipped_keys", "method", "file_epoch", "file_arch"):
        if key in info:
            out[key] = info[key]
    out["verdict"] = "ok"
    return out


def format_inspection(result: Mapping) -> str:
    """Lines for `seedrun teacher inspect PATH`."""
    def show(value):
        if value is None:
            return "-"
        if isinstance(value, (tuple, list)):
            return " -> ".join(str(v) for v in value)
        return str(value)

    rows = [
        ("file", result.get("path")),
        ("size", f"{result['size_bytes'] / 2**20:.1f} MiB" if result.get("size_bytes") is not None else None),
        ("sha256", result.get("sha256")),
        ("format", result.get("format")),
        ("arch", result.get("arch")),
        ("width", result.get("width")),
        ("small images", result.get("small_images")),
        ("in channels", result.get("in_chans")),
        ("feature dim", result.get("feature_dim")),
        ("head", result.get("head_shape")),
        ("skipped keys", result.get("skipped_keys")),
        ("trained epochs", result.get("file_epoch")),
        ("verdict", result.get("verdict")),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {show(value)}" for name, value in rows if value is not None or name in
                     ("format", "arch", "verdict"))
