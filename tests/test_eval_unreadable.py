"""Evaluation images that cannot be read are skipped and counted, never replaced (issue 25 item 8).

The stream loader used to fill an unreadable test image's slot with a copy of another test image and its
label, which counts that image twice in the metric. On a tree of real JPEGs (tests/stream_trees.py) with
one corrupt test JPEG, every evaluation reports N - 1 test images and 1 skipped, and its metric is the
metric on the same tree without that file: k-NN and the cached linear probe of `seedrun eval`,
semi-supervised fine-tuning's test accuracy, and the k-NN at the end of training on 2 ranks (gloo).
Training keeps its bad-image budget: its batches stay full (tests/test_stream_data.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from gloo_ranks import spawn
import test_stream_eval
from stream_trees import FASHION, write_tree

pytestmark = pytest.mark.skipif(not FASHION.exists(), reason="Debian's dataset-fashion-mnist is not installed")

N_TRAIN, N_VAL, SIZE = 60, 30, 32
KNN = {"variants": [[20, 0.07], [1, None]]}
COUNTS = {"knn_skipped_images", "knn_test_images"}


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """(a tree with one corrupt test JPEG, the same tree without that file, the corrupt file's path)."""
    cache = tmp_path_factory.mktemp("cache")
    patcher = pytest.MonkeyPatch()
    patcher.setenv("SEEDRUN_CACHE", str(cache))
    clean = write_tree(tmp_path_factory.mktemp("clean"), N_TRAIN, N_VAL)
    corrupt = tmp_path_factory.mktemp("corrupt") / "tree"
    shutil.copytree(clean, corrupt)
    victim = sorted((clean / "val").glob("*/*.JPEG"))[7]  # inside the first chunk, not at its end
    victim.unlink()
    broken = corrupt / victim.relative_to(clean)
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a JPEG after its first bytes")
    yield corrupt, clean, broken
    patcher.undo()


model = test_stream_eval.model  # the same student's model.pt, used here by name


def data_config(root, workers=1):
    from seedrun.sweeps.compose import compose_config

    return compose_config(["data=imagenet", f"data.root={root}", f"data.image_size={SIZE}", "data.loader=stream",
                           f"data.workers={workers}"])["data"]


def evaluate(protocol, settings, root, model, run_dir, logged=None):
    from seedrun.evaluate.run import evaluate as run

    run_dir.mkdir(parents=True)
    torch.manual_seed(0)
    config = {"protocol": protocol, "settings": settings, "data": data_config(root), "seed": 0, "threads": 1,
              "device": "cpu"}
    return run(config, run_dir, model, log=(logged if logged is not None else []).append)


def test_training_batches_stay_full_and_evaluation_batches_leave_the_image_out():
    from seedrun.data.stream import collate

    def item(index):
        return {"index": index, "label": index % 3, "views": {0: torch.full((1, 2, 2), index, dtype=torch.uint8)}}

    items = [item(0), {"index": 1, "bad": "b: unreadable"}, item(2)]
    train, evaluation = collate(items, channels=1), collate(items, channels=1, fill=False)
    # training: the batch size holds (the queue arithmetic needs it); the slot is another image of the batch
    assert train["indices"].tolist() == [0, 2, 2] and train["labels"].tolist() == [0, 2, 2]
    assert evaluation["indices"].tolist() == [0, 2] and evaluation["labels"].tolist() == [0, 2]
    assert evaluation["views"][0][:, 0, 0, 0].tolist() == [0, 2]
    assert train["bad"] == evaluation["bad"] == ["b: unreadable"] and train["bad_indices"] == [1]


def test_the_evaluation_loader_leaves_an_unreadable_image_out(trees):
    from seedrun.data.loader import open_split

    corrupt, clean, broken = trees
    logged = []
    read = list(open_split(data_config(corrupt), "test", log=logged.append).chunks(16))
    want = list(open_split(data_config(clean), "test").chunks(16))
    images, labels = torch.cat([i for i, _ in read]), torch.cat([lab for _, lab in read])
    assert len(labels) == N_VAL - 1  # not N_VAL with a copy of a neighbour in the corrupt one's slot
    assert torch.equal(images, torch.cat([i for i, _ in want])) and torch.equal(labels, torch.cat([lab for _, lab in want]))
    assert [line for line in logged if "unreadable" in line and str(broken) in line]


@pytest.mark.parametrize("protocol, settings, prefix", [
    ("knn", KNN, "knn"),
    ("linear", {"recipe": "cached", "batch_size": 16, "epochs": 3}, "linear"),
    ("semisup", {"fractions": [0.5], "subset_seed": 0, "epochs": 1, "lr": 0.05, "batch_size": 16}, "semisup50"),
])
def test_an_evaluation_skips_counts_and_equals_the_tree_without_the_image(protocol, settings, prefix, trees, model,
                                                                          tmp_path, home):
    corrupt, clean, _ = trees
    logged = []
    skipped = evaluate(protocol, settings, corrupt, model, tmp_path / "corrupt", logged)
    without = evaluate(protocol, settings, clean, model, tmp_path / "clean")
    assert skipped[f"{prefix}_skipped_images"] == 1 and skipped[f"{prefix}_test_images"] == N_VAL - 1
    assert f"{prefix}_skipped_images" not in without  # nothing skipped, nothing recorded beside the metrics
    assert {k: v for k, v in skipped.items() if "_images" not in k} == without
    assert any("1 unreadable images skipped" in line for line in logged)


def _end_of_training(rank, world, root, out):
    from seedrun.data.loader import open_split
    from seedrun.evaluate.sharded_features import evaluate_knn_sharded
    from seedrun.models.model_file import load_own_model

    backbone, _ = load_own_model(Path(out) / "model" / "model.pt", 3)
    train = open_split(data_config(root, workers=0), "train", log=lambda _: None)
    test = open_split(data_config(root, workers=0), "test", log=lambda _: None)
    metrics = evaluate_knn_sharded(backbone, train, test, {"eval": {"knn": {"k": 20, "tau": 0.07}}},
                                   torch.device("cpu"))
    if rank == 0:
        torch.save(metrics, Path(out) / "metrics.pt")


def test_the_end_of_training_knn_on_two_ranks_skips_and_counts(trees, model, tmp_path):
    from seedrun.data.loader import open_split
    from seedrun.evaluate.sharded_features import evaluate_knn_sharded
    from seedrun.models.model_file import load_own_model

    corrupt, clean, _ = trees
    shutil.copytree(model, tmp_path / "model")
    spawn(_end_of_training, 2, tmp_path, str(corrupt), str(tmp_path))
    two_ranks = torch.load(tmp_path / "metrics.pt", weights_only=True)
    backbone, _ = load_own_model(model / "model.pt", 3)
    one = evaluate_knn_sharded(backbone, open_split(data_config(clean), "train"), open_split(data_config(clean), "test"),
                               {"eval": {"knn": {"k": 20, "tau": 0.07}}}, torch.device("cpu"))
    assert two_ranks["knn_skipped_images"] == 1 and two_ranks["knn_test_images"] == N_VAL - 1
    assert set(one) == {"knn_top1", "knn_top5"}
    # features of the same images by the same network in other batches: float32 rounding may differ in
    # the last bits, the accuracy over 29 images does not
    assert {k: two_ranks[k] for k in one} == one


def test_the_bad_image_budget_counts_a_file_once_however_many_epochs_meet_it():
    """One corrupt JPEG met every epoch used to spend the budget once an epoch: a 200-epoch run failed at
    epoch 101 with the default limit of 100."""
    from seedrun.data.formats import DataError
    from seedrun.data.loader import BadImages

    logged: list[str] = []
    budget = BadImages(limit=2, log=logged.append)
    for _epoch in range(5):
        budget.report(["a.jpg: truncated"], [7])
    assert len(logged) == 1 and len(budget.seen) == 1
    budget.report(["b.jpg: truncated"], [8])
    with pytest.raises(DataError, match="3 unreadable images"):
        budget.report(["c.jpg: truncated", "b.jpg: truncated"], [9, 8])
