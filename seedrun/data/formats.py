"""On-disk image sets the stream loader reads, without decoding them: ImageFolder trees and the official
SEED code's TSV files. Imports neither torch nor PIL, so that `seedrun sweep --dry-run` checks a tree's
layout quickly.

    ImageFolder  <root>/train/<class>/*.JPEG and <root>/val/<class>/*.JPEG (the usual ImageNet
                 preparation); classes are the sorted folder names of train/, val/ uses train's indices.
    TSV          <root>/train.tsv + train.lineidx and val.tsv + val.lineidx, as in the official SEED code
                 (tools/tsv_io.py): one row a line, `key<TAB>label<TAB>base64 JPEG`; the .lineidx holds
                 the byte offset of each line, one a line. Labels come with each row; where they are
                 needed ahead (class-balanced subsets, semi-supervised fine-tuning), `tsv_labels` reads
                 the label column alone, a few bytes at each offset, and caches it.
A tree whose held-out split is test/ rather than val/ (transfer sets) is read the same way.

A split's file list (`FileList`: paths as one byte blob with offsets, and labels, all numpy arrays so
that forked loader workers share them without copying) is built once and cached in the cache folder
under the tree's absolute path; the cache is used while the split folder and every class folder keep
their modification times (adding, removing or renaming a file changes its folder's), else rebuilt.

`check_layout` is the plan-time check: a missing train/ or val/, an empty class folder, val classes
unknown to train/, or a .lineidx that does not index its .tsv, as one InputError-style line
(DataInvalid) naming the path and what was expected.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SPLIT_FOLDER = {"train": "train", "test": "val"}
FILELIST_FORMAT = "seedrun-filelist/1"


class DataInvalid(Exception):
    """A data set whose layout is wrong: one line naming the path and what was expected."""


class DataError(Exception):
    """Training met more unreadable images than `data.max_bad_images` allows (failure class data_error)."""


def split_folder(root: Path, split: str) -> Path:
    """The folder of a split ("train" or "test"): train/, and val/ for the test split, or test/ in a tree
    that has test/ and no val/ (transfer sets: eval.protocols.transfer.roots)."""
    if split == "train":
        return root / "train"
    return root / "test" if (root / "test").is_dir() and not (root / "val").is_dir() else root / SPLIT_FOLDER[split]


def layout(root: Path) -> Optional[str]:
    """"folders" (train/ and val/ (or test/) folders), "tsv" (train.tsv and val.tsv) or None."""
    if (root / "train").is_dir() and split_folder(root, "test").is_dir():
        return "folders"
    if (root / "train.tsv").is_file() and (root / "val.tsv").is_file():
        return "tsv"
    return None


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _class_folders(split_dir: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir() and not entry.name.startswith("."))


def check_layout(root: Path) -> None:
    """Raise DataInvalid when `root` is not a readable ImageFolder tree or TSV pair (reads no image)."""
    kind = layout(root)
    if kind is None:
        raise DataInvalid(f"{root}: expected train/<class>/ and val/<class>/ folders (ImageFolder) "
                          f"or train.tsv + val.tsv with .lineidx files (the official SEED TSV format)")
    if kind == "tsv":
        for split in ("train", "val"):
            check_tsv(root / f"{split}.tsv")
        return
    train_classes = _class_folders(root / "train")
    for split in ("train", "test"):
        folder = split_folder(root, split)
        classes = train_classes if split == "train" else _class_folders(folder)
        if not classes:
            raise DataInvalid(f"{folder}: expected one folder per class with images inside; found no folder")
        for name in classes:
            with os.scandir(folder / name) as entries:  # stops at the first image: cheap on big trees
                if not any(entry.is_file() and _is_image(entry.name) for entry in entries):
                    raise DataInvalid(f"{folder / name}: expected images ({', '.join(IMAGE_SUFFIXES)}); "
                                      f"the class folder is empty")
    test = split_folder(root, "test")
    unknown = sorted(set(_class_folders(test)) - set(train_classes))
    if unknown:
        raise DataInvalid(f"{test / unknown[0]}: expected the classes of {root / 'train'}; "
                          f"{len(unknown)} {test.name} class folder(s) have no train folder")


LOADERS = ("auto", "memory", "stream")
DECODERS = ("pil", "torchvision")
# where the stream loader's training views are augmented after the crop: in the workers, or batched on
# the run's device (seedrun.data.batched_ops)
AUGMENT_ON = ("cpu", "gpu")


def check_settings(data: dict) -> Optional[tuple[str, str]]:
    """The first bad loader or augmentation setting of a data config as (key, what was expected), or None."""
    loader = data.get("loader") or "auto"
    if loader not in LOADERS:
        return "data.loader", f"expected one of {', '.join(LOADERS)}, got {loader!r}"
    if loader == "stream" and data.get("format") != "imagefolder":
        return "data.loader", (f"expected auto or memory: the stream loader reads ImageFolder trees and TSV files, "
                               f"{data.get('format')!r} data sets load into memory")
    for key in ("workers", "max_bad_images", "prefetch", "memory_budget_mb"):
        value = data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < (key == "prefetch")):
            return f"data.{key}", f"expected an integer >= {int(key == 'prefetch')}{' or null' if key == 'workers' else ''}, got {value!r}"
    if (data.get("decoder") or "torchvision") not in DECODERS:
        return "data.decoder", f"expected one of {', '.join(DECODERS)}, got {data.get('decoder')!r}"
    if (data.get("augment_on") or "cpu") not in AUGMENT_ON:
        return "data.augment_on", f"expected one of {', '.join(AUGMENT_ON)}, got {data.get('augment_on')!r}"
    from seedrun.data.presets import check as check_augment  # torch-free, as this module

    return check_augment(data.get("augment"))


def lineidx_path(tsv: Path) -> Path:
    return tsv.with_suffix(".lineidx")


def read_lineidx(tsv: Path):
    """The byte offsets of `tsv`'s lines (numpy int64), from its .lineidx."""
    import numpy as np

    index = lineidx_path(tsv)
    if not index.is_file():
        raise DataInvalid(f"{index}: expected the .lineidx of {tsv.name} (one byte offset a line); no such file")
    try:
        return np.array(index.read_bytes().split(), dtype=np.int64)
    except ValueError:
        raise DataInvalid(f"{index}: expected one integer byte offset a line") from None


def check_tsv(tsv: Path, probes: int = 64) -> int:
    """Check that the .lineidx indexes `tsv` (first offset 0, increasing, inside the file, each probed
    offset at the start of a line); the number of rows. Reads a few bytes per probe, no image."""
    offsets = read_lineidx(tsv)
    index, size = lineidx_path(tsv), tsv.stat().st_size
    what = f"byte offsets of the lines of {tsv.name} ({size} bytes)"
    if len(offsets) == 0:
        raise DataInvalid(f"{index}: expected {what}; the index is empty")
    if offsets[0] != 0 or (len(offsets) > 1 and not (offsets[1:] > offsets[:-1]).all()) or offsets[-1] >= size:
        raise DataInvalid(f"{index}: expected increasing {what}, starting at 0; the index does not match the file")
    step = max(1, len(offsets) // probes)
    with open(tsv, "rb") as f:
        for line in list(range(0, len(offsets), step)) + [len(offsets) - 1]:
            offset = int(offsets[line])
            if offset:
                f.seek(offset - 1)
                if f.read(1) != b"\n":
                    raise DataInvalid(f"{index}: expected {what}; offset {offset} (line {line + 1}) is not the "
                                      f"start of a line: the index does not match the file")
            else:
                f.seek(0)
            if f.readline().count(b"\t") < 2:
                raise DataInvalid(f"{tsv}: expected rows key<TAB>label<TAB>base64 image; line {line + 1} has "
                                  f"fewer than 3 fields")
    return len(offsets)


@dataclass
class FileList:
    """The images of one split: for a tree, path i is blob[offsets[i]:offsets[i+1]] relative to `folder`,
    label i its class; for a TSV, offsets are the .lineidx's and labels come with each row."""

    kind: str  # "folders" or "tsv"
    folder: Path  # the split folder, or the .tsv file
    blob: object  # numpy uint8: relative paths, concatenated (folders only)
    offsets: object  # numpy int64
    labels: object  # numpy int64, -1 where read with the image (tsv)
    classes: list[str]
    ids: object = None  # numpy int64: the entries a subset keeps (data.train_subset), None = all

    def __len__(self) -> int:
        return len(self.labels) if self.ids is None else len(self.ids)

    def entry(self, i: int) -> int:
        return i if self.ids is None else int(self.ids[i])

    def label(self, i: int) -> int:
        return int(self.labels[self.entry(i)])

    def offset(self, i: int) -> int:
        return int(self.offsets[self.entry(i)])

    def path(self, i: int) -> str:
        i = self.entry(i)
        if self.kind == "tsv":
            return f"{self.folder}:{i + 1}"
        return str(self.folder / bytes(self.blob[self.offsets[i]:self.offsets[i + 1]]).decode())

    def labelled(self) -> "FileList":
        """This list with every label known: a TSV's label column is read (tsv_labels), an image never."""
        if self.kind != "tsv" or (self.labels >= 0).all():
            return self
        return FileList(self.kind, self.folder, self.blob, self.offsets, tsv_labels(self.folder, self.offsets),
                        self.classes, self.ids)

    def label_array(self):
        """The labels of this list's images, in its order (numpy int64; see labelled() for a TSV's)."""
        return self.labels if self.ids is None else self.labels[self.ids]

    def subset(self, size: int, num_classes: int) -> "FileList":
        """The first size / num_classes images of each class, in list order (as the in-memory loader's
        balanced_subset); a TSV's labels are read from its label column first."""
        import numpy as np

        full = self.labelled()
        per_class = max(1, size // num_classes)
        keep = np.concatenate([np.flatnonzero(full.labels == c)[:per_class] for c in range(num_classes)])
        return FileList(full.kind, full.folder, full.blob, full.offsets, full.labels, full.classes, np.sort(keep))


def tsv_labels(tsv: Path, offsets):
    """The label column of a TSV (numpy int64, row order), read without the image column: a few bytes at
    each row's offset (no base64, no decode), cached in the cache folder while the file keeps its size and
    modification time. ImageNet's 1.28 M rows: one pass of small reads, once."""
    import numpy as np

    stat = tsv.stat()
    header = json.dumps({"format": FILELIST_FORMAT, "labels_of": str(tsv.absolute()), "size": stat.st_size,
                         "mtime_ns": stat.st_mtime_ns, "rows": len(offsets)})
    cache = _cache_file(tsv).with_suffix(".labels.npz")
    if cache.is_file():
        try:
            with np.load(cache) as stored:
                if str(stored["header"]) == header:
                    return stored["labels"]
        except Exception:  # unreadable or another format: read the column again
            pass
    labels = np.empty(len(offsets), dtype=np.int64)
    with open(tsv, "rb", buffering=0) as f:
        if hasattr(os, "posix_fadvise"):  # strided small reads: no readahead of the image column
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
        for row, offset in enumerate(offsets.tolist()):
            head = os.pread(f.fileno(), 256, offset)
            if head.count(b"\t") < 2:  # a long key: read on to the second tab
                f.seek(offset)
                head = f.read(1 << 16)
            fields = head.split(b"\t", 2)
            try:
                labels[row] = int(fields[1])
            except (IndexError, ValueError):
                raise DataInvalid(f"{tsv}: expected rows key<TAB>label<TAB>base64 image with an integer label; "
                                  f"line {row + 1} has {fields[1][:20] if len(fields) > 1 else b''!r}") from None
    _store(cache, header, labels=labels)
    return labels


def _signature(split_dir: Path, classes: list[str]) -> list:
    return [split_dir.stat().st_mtime_ns] + [[name, (split_dir / name).stat().st_mtime_ns] for name in classes]


def _cache_file(split_dir: Path) -> Path:
    from seedrun.data.datasets import cache_dir

    digest = hashlib.sha256(str(split_dir.absolute()).encode()).hexdigest()[:24]
    return cache_dir() / "filelists" / f"{digest}.npz"


def file_list(root: Path, split: str, log=None) -> FileList:
    """The file list of `split` ("train" or "test") under `root`, from the cache when the tree is unchanged."""
    import numpy as np

    if layout(root) == "tsv":
        tsv = root / f"{SPLIT_FOLDER[split]}.tsv"
        offsets = read_lineidx(tsv)
        return FileList("tsv", tsv, None, offsets, np.full(len(offsets), -1, dtype=np.int64), [])
    split_dir = split_folder(root, split)
    train_classes = _class_folders(root / "train")
    classes = _class_folders(split_dir)
    signature = _signature(split_dir, classes)
    cache = _cache_file(split_dir)
    header = json.dumps({"format": FILELIST_FORMAT, "folder": str(split_dir.absolute()), "signature": signature,
                         "classes": train_classes})
    if cache.is_file():
        try:
            with np.load(cache) as stored:
                if str(stored["header"]) == header:
                    return FileList("folders", split_dir, stored["blob"], stored["offsets"], stored["labels"],
                                    train_classes)
        except Exception:  # unreadable or another format: rebuild
            pass
    if log:
        log(f"scanning {split_dir} for images (cached for the next runs)")
    index = {name: i for i, name in enumerate(train_classes)}
    names, labels = [], []
    for name in classes:
        if name not in index:
            raise DataInvalid(f"{split_dir / name}: expected the classes of {root / 'train'}; this one has no train folder")
        files = sorted(entry.name for entry in os.scandir(split_dir / name) if entry.is_file() and _is_image(entry.name))
        names += [f"{name}/{file}".encode() for file in files]
        labels += [index[name]] * len(files)
    if not names:
        raise DataInvalid(f"{split_dir}: expected images in its class folders; found none")
    lengths = np.array([len(n) for n in names], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    blob = np.frombuffer(b"".join(names), dtype=np.uint8)
    labels_array = np.array(labels, dtype=np.int64)
    _store(cache, header, blob=blob, offsets=offsets, labels=labels_array)
    return FileList("folders", split_dir, blob, offsets, labels_array, train_classes)


def _store(cache: Path, header: str, **arrays) -> None:
    """Write a cache file atomically; a read-only cache folder costs a rescan next time, nothing else."""
    import numpy as np

    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_name(f"{cache.name[:-4]}.{os.getpid()}.tmp.npz")
        np.savez(partial, header=np.array(header), **arrays)
        os.replace(partial, cache)
    except OSError:
        pass
