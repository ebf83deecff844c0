"""The one way seedrun writes a file that someone else may read: write a temporary file in the same
folder, flush and fsync it, rename it over the target, fsync the folder.

A reader (status on another host, a requeued job, an evaluation run) sees the old file or the new one,
never half of one, and a crash after the rename cannot lose it. Used for training checkpoints, model
files, feature caches, subset files, JSON records and index files.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Union

PathLike = Union[str, "os.PathLike[str]"]


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], None], fsync: bool = True) -> Path:
    """Call `write` on a fresh binary file and put it at `path` atomically and (unless `fsync` is
    False: many small files that may be rewritten) durably."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if fsync:
        _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: PathLike, data: bytes, fsync: bool = True) -> Path:
    return atomic_write(path, lambda fh: fh.write(data), fsync=fsync)


def atomic_write_text(path: PathLike, text: str, fsync: bool = True) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def atomic_write_json(path: PathLike, value: Any, fsync: bool = True, **dumps: Any) -> Path:
    return atomic_write_text(path, json.dumps(value, **dumps) + "\n", fsync=fsync)


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    import torch  # only the callers that save tensors pay for it

    return atomic_write(path, lambda fh: torch.save(obj, fh))


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
