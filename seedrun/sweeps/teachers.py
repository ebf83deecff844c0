"""Teacher checkpoint files known by content, checked at plan time without torch.

A run that distils an official checkpoint is named by the file's sha256, not by its path
(seedrun.sweeps.spec: `teacher.checkpoint_sha256` enters the hash and `teacher.checkpoint` does not):
moving the teacher files, or another user's $SEEDRUN_TEACHERS, keeps every hash, and replacing a
file changes them, so finished runs never count as done against a different teacher. The path stays
in the config (the job loads it) and in provenance.

Hashing a 100 MB checkpoint takes a fraction of a second, and a sweep names the same few files many
times: each digest is computed once and cached by path, size and modification time in
$XDG_CACHE_HOME/seedrun/teacher-digests.json (~/.cache by default).

The checkpoint's layout is read from the names in its pickle, never by unpickling it (no torch, no
code run): a torchvision checkpoint (a plain ResNet state dict, perhaps with its classifier, and no
projection head) is refused at check time with one line, rather than crashing at the
first step after its wait in the queue.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickletools
import zipfile
from typing import Optional

from seedrun.errors import InputError
from seedrun.models.layouts import layout_of

_MEMO: dict[tuple[str, int, int], dict] = {}


def _cache_file() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "seedrun", "teacher-digests.json")


def _load_cache() -> dict:
    try:
        with open(_cache_file(), encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_cache(data: dict) -> None:
    path = _cache_file()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except OSError:
        pass  # a cache: without it the digest is only computed again


def describe(path: str) -> dict:
    """{"sha256", "format"} of a checkpoint file (cached by absolute path, size and mtime)."""
    full = os.path.abspath(path)
    stat = os.stat(full)
    key = (full, stat.st_size, stat.st_mtime_ns)
    if key in _MEMO:
        return _MEMO[key]
    cache = _load_cache()
    entry = cache.get(full)
    if not (isinstance(entry, dict) and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns
            and entry.get("sha256")):
        entry = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256_of(full), "format": peek_format(full)}
        cache[full] = entry
        _save_cache(cache)
    _MEMO[key] = entry
    return entry


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _strings(data) -> set[str]:
    """The text constants of the pickles in `data` (a file object), read without unpickling."""
    found: set[str] = set()
    for _ in range(4):  # torch's legacy format: magic number, protocol, system info, then the object
        try:
            for opcode, arg, _ in pickletools.genops(data):
                if isinstance(arg, str) and "UNICODE" in opcode.name:
                    found.add(arg)
        except Exception:
            break
    return found


def peek_format(path: str) -> Optional[str]:
    """The checkpoint layout (seedrun.models.teacher_formats.FORMATS) from its key names; None if unsure."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next((n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
                if name is None:
                    return None
                with archive.open(name) as data:
                    names = _strings(data)
        else:
            with open(path, "rb") as data:
                names = _strings(data)
    except (OSError, zipfile.BadZipFile):
        return None
    if "seedrun" in names and "backbone" in names:
        return "seedrun"
    return layout_of(names)


def check_teacher_file(path: str, source: str, key: str) -> str:
    """The sha256 of an existing teacher checkpoint; InputError for a layout SEED cannot distil from."""
    entry = describe(path)
    if entry.get("format") == "torchvision":
        raise InputError(source, key, f"{path} is a torchvision checkpoint (plain ResNet weights, no projection "
                         "head): SEED distils a self-supervised teacher's embedding; use a MoCo-v2, SwAV, "
                         "SimCLR or seedrun checkpoint, or let seedrun train the teacher (teacher.checkpoint: null)")
    return entry["sha256"]
