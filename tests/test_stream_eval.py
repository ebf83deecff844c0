"""Semi-supervised fine-tuning and transfer read streamed sets through the loader interface, as k-NN and
the linear probe do: on real JPEGs (tests/stream_trees.py) they complete without the in-memory loader,
reading batches and chunks, never the whole set; and on the same images they give the in-memory path's
numbers exactly. "The same images": the stream loader's evaluation views (Resize(256 s / 224) ->
CenterCrop(s)) are not the in-memory loader's (Resize(s) -> CenterCrop(s)), so the in-memory runs here
read a PNG copy of the streamed views at s x s, which the in-memory loaders take unchanged. A TSV made
from the same JPEGs gives the tree's numbers (its labels read from the label column), and
data.train_subset/test_subset draw the same class-balanced subsets from a TSV as from the tree."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from stream_trees import FASHION, write_tree, write_tsv

pytestmark = pytest.mark.skipif(not FASHION.exists(), reason="Debian's dataset-fashion-mnist is not installed")

N_TRAIN, N_VAL, SIZE = 200, 60, 32


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache")
    patcher = pytest.MonkeyPatch()
    patcher.setenv("SEEDRUN_CACHE", str(path))
    yield path
    patcher.undo()


@pytest.fixture(scope="module")
def tree(tmp_path_factory, cache):
    return write_tree(tmp_path_factory.mktemp("imagenet"), N_TRAIN, N_VAL)


@pytest.fixture(scope="module")
def tsv(tree, tmp_path_factory):
    return write_tsv(tree, tmp_path_factory.mktemp("tsv"))


def data_config(root, loader="stream", *more):
    from seedrun.sweeps.compose import compose_config

    return compose_config(["data=imagenet", f"data.root={root}", f"data.image_size={SIZE}", f"data.loader={loader}",
                           "data.workers=1", *more])["data"]


@pytest.fixture(scope="module")
def pngs(tree, tmp_path_factory):
    """The streamed evaluation views of the tree, as lossless PNGs at SIZE x SIZE in the same layout."""
    from PIL import Image

    from seedrun.data.loader import open_split

    root = tmp_path_factory.mktemp("pngs")
    for split in ("train", "test"):
        data = open_split(data_config(tree), split)
        done = 0
        for images, _ in data.chunks(64):
            for image in images:
                path = root / Path(data.files.path(done)).relative_to(tree).with_suffix(".png")
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
                done += 1
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A student's model.pt (a randomly initialised small ResNet-18: evaluation only reads it)."""
    from seedrun.models.model_file import save_model
    from seedrun.models.registry import create_backbone

    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    backbone, dim = create_backbone("resnet18", small_images=True, in_chans=3, width=8)
    save_model(folder / "model.pt", backbone, torch.nn.Linear(dim, 16), arch="resnet18", width=8, small_images=True,
               in_chans=3)
    return folder


def evaluate(protocol, settings, data, model, run_dir):
    from seedrun.evaluate.run import evaluate

    run_dir.mkdir(parents=True)
    torch.manual_seed(0)  # as a fresh job process starts: a fine-tuning head is initialised from torch's generator
    config = {"protocol": protocol, "settings": settings, "data": data, "seed": 0, "threads": 1, "device": "cpu"}
    return evaluate(config, run_dir, model, log=lambda _: None)


def streaming_only(monkeypatch):
    """Fails the test if a split is loaded whole into memory; records the batches the stream loader reads."""
    from seedrun.data import datasets, loader
    from seedrun.evaluate import transfer

    def refuse(*args, **kwargs):
        raise AssertionError("a streamed evaluation loaded a whole set into memory")

    monkeypatch.setattr(datasets, "load", refuse)
    monkeypatch.setattr(loader, "load", refuse)
    monkeypatch.setattr(transfer, "imagefolder_tensors", refuse)
    read = []
    gather = loader.StreamData.gather

    def spy(self, batches, batch_size=0):
        for images, labels in gather(self, batches, batch_size):
            read.append(len(images))
            yield images, labels

    monkeypatch.setattr(loader.StreamData, "gather", spy)
    return read


SEMISUP = {"fractions": [0.1, 0.3], "subset_seed": 0, "epochs": 2, "lr": 0.05, "batch_size": 16,
           "crop_scale": [0.5, 1.0]}


def test_semisup_streams_and_gives_the_memory_paths_numbers(tree, tsv, pngs, model, tmp_path, home, monkeypatch):
    memory = evaluate("semisup", SEMISUP, data_config(pngs, "memory"), model, tmp_path / "memory")
    with monkeypatch.context() as patch:
        read = streaming_only(patch)
        streamed = evaluate("semisup", SEMISUP, data_config(tree), model, tmp_path / "stream")
        # fine-tuning read the labelled subset a batch at a time (2 epochs: 2 x 20 and 2 x 60 images),
        # then the test set in chunks of the batch size
        assert max(read) <= 16 and sum(read) == 2 * (20 + 60) + 2 * N_VAL
        from_tsv = evaluate("semisup", SEMISUP, data_config(tsv), model, tmp_path / "tsv")
    assert set(memory) == {"semisup10_top1", "semisup10_top5", "semisup30_top1", "semisup30_top5"}
    assert streamed == memory and from_tsv == memory
    for name in ("subset-0.1.json", "subset-0.3.json"):
        subsets = [json.loads((tmp_path / kind / name).read_text()) for kind in ("memory", "stream", "tsv")]
        assert subsets[0] == subsets[1] == subsets[2] and subsets[0]["per_class"] in (2, 6)


def test_fine_tuning_is_seeded_by_the_run_not_by_the_process(pngs, model, tmp_path):
    """The head's initialisation came from torch's generator as the process left it: two jobs of one run gave
    two numbers. Now the run's seed sets it, whatever ran before in the process."""
    from seedrun.evaluate.run import evaluate as run_evaluate

    results = []
    for before in (1, 2):
        run_dir = tmp_path / f"after-{before}"
        run_dir.mkdir()
        torch.manual_seed(before)
        torch.rand(before)
        config = {"protocol": "semisup", "settings": SEMISUP, "data": data_config(pngs, "memory"), "seed": 0,
                  "threads": 1, "device": "cpu"}
        results.append(run_evaluate(config, run_dir, model, log=lambda _: None))
    assert results[0] == results[1]


TRANSFER = {"datasets": ["fm"], "recipe": "moco", "epochs": 10, "batch_size": 64}


def test_transfer_to_a_streamed_tree_gives_the_memory_paths_numbers(tree, pngs, model, tmp_path, home, monkeypatch):
    memory = evaluate("transfer", {**TRANSFER, "roots": {"fm": str(pngs)}}, data_config(pngs, "memory"), model,
                      tmp_path / "memory")
    target = tmp_path / "fm"  # a transfer tree's held-out split may be test/ instead of val/
    shutil.copytree(tree / "train", target / "train")
    shutil.copytree(tree / "val", target / "test")
    with monkeypatch.context() as patch:
        read = streaming_only(patch)
        streamed = evaluate("transfer", {**TRANSFER, "roots": {"fm": str(target)}}, data_config(tree), model,
                            tmp_path / "stream")
        # one pass for the training images' channel statistics, one for features; chunks of 256
        assert sum(read) == 2 * N_TRAIN + N_VAL and max(read) <= 256
        read.clear()
        again = evaluate("transfer", {**TRANSFER, "roots": {"fm": str(target)}}, data_config(tree), model,
                         tmp_path / "again")
        assert again == streamed and read == []  # statistics and features came from the cache
    assert 10.0 < memory["transfer_fm_top1"] <= 100.0
    assert streamed == memory


def test_tsv_subsets_are_the_trees_read_from_the_label_column(tree, tsv, tmp_path, cache):
    from seedrun.data.formats import DataInvalid, read_lineidx, tsv_labels
    from seedrun.data.loader import open_split

    subsets = "data.num_classes=10", "data.train_subset=100", "data.test_subset=20"
    for split, count in (("train", 100), ("test", 20)):
        folders = open_split(data_config(tree, "stream", *subsets), split).files
        rows = open_split(data_config(tsv, "stream", *subsets), split).files
        assert len(rows) == len(folders) == count
        assert rows.label_array().tolist() == folders.label_array().tolist()
        assert [Path(folders.path(i)).stem for i in range(count)] == [
            rows_key(rows, i) for i in range(count)]  # the same images, in the same order
        assert sorted(set(torch.bincount(torch.from_numpy(rows.label_array())).tolist())) == [count // 10]

    # only the label column is read: a TSV whose image column is not even base64 gives its labels;
    # they are cached while the file keeps its size and modification time
    broken = tmp_path / "broken"
    broken.mkdir()
    rows = [f"key{i}\t{i % 3}\t%%%not-base64%%%\n".encode() for i in range(50)]
    (broken / "train.tsv").write_bytes(b"".join(rows))
    offsets = [sum(map(len, rows[:i])) for i in range(len(rows))]
    (broken / "train.lineidx").write_text("".join(f"{o}\n" for o in offsets))
    table, offsets = broken / "train.tsv", read_lineidx(broken / "train.tsv")
    assert tsv_labels(table, offsets).tolist() == [i % 3 for i in range(50)]
    stat = (broken / "train.tsv").stat()
    (broken / "train.tsv").write_bytes(b"".join(row.replace(b"\t1\t", b"\t7\t") for row in rows))
    os.utime(broken / "train.tsv", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert 7 not in tsv_labels(table, offsets).tolist()  # from the cache
    os.utime(broken / "train.tsv", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10 ** 9))
    assert 7 in tsv_labels(table, offsets).tolist()  # a changed file is read again
    (broken / "train.tsv").write_bytes(b"".join(rows).replace(b"key3\t0\t", b"key3\tx\t"))
    with pytest.raises(DataInvalid, match=rf"^{broken / 'train.tsv'}: expected rows key<TAB>label<TAB>base64 image "
                                          r"with an integer label; line 4 has b'x'$"):
        tsv_labels(table, offsets)


def rows_key(files, i):
    with open(files.folder, "rb") as f:
        f.seek(files.offset(i))
        return f.read(64).split(b"\t")[0].decode()
