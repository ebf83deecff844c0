"""Real JPEG data sets written by the tests of the stream loader: Fashion-MNIST test images upscaled to
64-96 px in ImageNet's train/<class>/ and val/<class>/ layout, and the official SEED TSV files made from
the same JPEGs."""

from __future__ import annotations

import base64
import gzip
from pathlib import Path

import numpy as np

FASHION = Path("/usr/share/datasets/fashion-mnist")


def fashion(count: int):
    images = np.frombuffer(gzip.open(FASHION / "t10k-images-idx3-ubyte.gz").read(), np.uint8, offset=16)
    labels = np.frombuffer(gzip.open(FASHION / "t10k-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
    return images.reshape(-1, 28, 28)[:count], labels[:count]


def write_tree(root: Path, n_train: int, n_val: int, sizes=((96, 80), (64, 72), (80, 96))) -> Path:
    """JPEGs in root/train/<class>/ and root/val/<class>/ (ImageNet's layout and file names)."""
    from PIL import Image

    images, labels = fashion(n_train + n_val)
    for i in range(n_train + n_val):
        split = "train" if i < n_train else "val"
        folder = root / split / f"n{labels[i]:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray(images[i]).convert("RGB").resize(sizes[i % len(sizes)], Image.BILINEAR)
        picture.save(folder / f"{split}_{i:05d}.JPEG", quality=90)
    return root


def write_tsv(tree: Path, root: Path) -> Path:
    """The official code's format from the same JPEGs, in the tree's file-list order: rows
    key<TAB>label<TAB>base64 JPEG, and a .lineidx of the rows' byte offsets."""
    from seedrun.data.formats import file_list

    root.mkdir(parents=True, exist_ok=True)
    for split, name in (("train", "train"), ("test", "val")):
        files = file_list(tree, split)
        offsets, position = [], 0
        with open(root / f"{name}.tsv", "wb") as tsv:
            for i in range(len(files)):
                row = b"%s\t%d\t%s\n" % (Path(files.path(i)).stem.encode(), files.label(i),
                                         base64.b64encode(Path(files.path(i)).read_bytes()))
                offsets.append(position)
                position += tsv.write(row)
        (root / f"{name}.lineidx").write_text("".join(f"{o}\n" for o in offsets))
    return root
