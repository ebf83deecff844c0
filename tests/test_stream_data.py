"""The stream loader on real JPEGs written here (Fashion-MNIST images upscaled to 64-96 px, in ImageNet's
train/<class>/ and val/<class>/ layout, plus the official SEED TSV files made from the same images):
one epoch reads each image once, ranks read disjoint halves, a run resumed mid-epoch ends bit-identical,
unreadable images are skipped and reported (then fail the run past a limit), memory stays bounded, and
both formats train a distillation run through the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import CLI, ROOT, write_sweep
from stream_trees import FASHION, fashion as _fashion, write_tree, write_tsv

pytestmark = pytest.mark.skipif(not FASHION.exists(), reason="Debian's dataset-fashion-mnist is not installed")

N_TRAIN, N_VAL = 320, 100


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


def data_config(root, *more):
    from seedrun.sweeps.compose import compose_config

    return compose_config(["data=imagenet", f"data.root={root}", "data.image_size=32", "data.loader=stream",
                           "data.workers=2", *more])["data"]


def read_epoch(data, epoch=0, batch_size=32, **shard):
    indices, labels = [], []
    for batch in data.batches(0, batch_size, {0: None}, **shard).epoch(epoch):
        assert batch.view(0).shape == (batch_size, 3, 32, 32) and batch.view(0).dtype == torch.float32
        indices += batch.indices.tolist()
        labels += batch.labels.tolist()
    return indices, labels


@pytest.mark.parametrize("fmt", ["folders", "tsv"])
def test_one_epoch_reads_every_image_once(fmt, tree, tsv):
    from seedrun.data.loader import open_split

    data = open_split(data_config(tree if fmt == "folders" else tsv), "train")
    assert data.kind == "stream" and len(data) == N_TRAIN
    indices, labels = read_epoch(data, epoch=3)
    assert sorted(indices) == list(range(N_TRAIN))  # 320 = 10 batches of 32: nothing dropped, nothing twice
    assert indices != sorted(indices)  # shuffled
    _, truth = _fashion(N_TRAIN)
    folders = open_split(data_config(tree), "train").files
    assert labels == [folders.label(i) for i in indices]  # the TSV rows carry the folders' labels
    assert [folders.classes[label] for label in labels] == [f"n{truth[int(Path(folders.path(i)).stem[-5:])]:08d}"
                                                             for i in indices]
    chunks = list(open_split(data_config(tree if fmt == "folders" else tsv), "test").chunks(64))
    assert [tuple(images.shape) for images, _ in chunks] == [(64, 3, 32, 32), (N_VAL - 64, 3, 32, 32)]


def test_two_ranks_read_disjoint_halves_whose_union_is_the_epoch(tree):
    from seedrun.data.loader import open_split

    data = open_split(data_config(tree), "train")
    halves = [set(read_epoch(data, epoch=1, **{"rank": rank, "world": 2})[0]) for rank in (0, 1)]
    assert len(halves[0]) == len(halves[1]) == N_TRAIN // 2
    assert not halves[0] & halves[1]
    assert halves[0] | halves[1] == set(range(N_TRAIN))
    assert halves[0] != set(read_epoch(data, epoch=2, rank=0, world=2)[0])  # each epoch deals anew


def test_file_list_is_cached_and_a_changed_tree_is_seen(tmp_path, cache):
    from seedrun.data.formats import file_list

    root = write_tree(tmp_path / "t", 20, 10)
    logged = []
    assert len(file_list(root, "train", logged.append)) == 20 and len(logged) == 1
    assert len(file_list(root, "train", logged.append)) == 20 and len(logged) == 1  # from the cache
    target = next((root / "train").glob("*/*.JPEG"))
    shutil.copy(target, target.with_name("extra.JPEG"))
    assert len(file_list(root, "train", logged.append)) == 21 and len(logged) == 2


class StopAt:
    def __init__(self, stop_after):
        self.calls, self.stop_after, self.epochs, self.logged = 0, stop_after, [], []

    def log(self, message):
        self.logged.append(message)

    def epoch_end(self, epoch, metrics):
        self.epochs.append(epoch)

    def should_stop(self):
        self.calls += 1
        return self.stop_after is not None and self.calls >= self.stop_after


def test_a_streamed_run_resumed_mid_epoch_ends_bit_identical(tree, tmp_path, home):
    from seedrun.sweeps.compose import compose_config
    from seedrun.sweeps.spec import pretrain_config
    from seedrun.training.checkpoints import CHECKPOINT
    from seedrun.training.distill import distill
    from seedrun.training.loop import Interrupted
    from seedrun.training.pretrain import pretrain

    config = compose_config([
        "data=imagenet", f"data.root={tree}", "data.image_size=32", "data.loader=stream", "data.workers=2",
        "teacher.width=8", "student.width=8", "teacher.pretrain.epochs=1", "teacher.pretrain.batch_size=32",
        "teacher.pretrain.queue_size=128", "distill.epochs=2", "distill.batch_size=32", "distill.queue_size=128",
        "distill.warmup_epochs=0", "threads=1", "data.num_classes=10", "data.train_subset=160", "eval.knn.k=20"])  # 5 steps an epoch
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    hooks = StopAt(None)
    pretrain(pretrain_config(config), teacher, hooks)
    assert any("raw-pixel k-NN reference skipped" in line for line in hooks.logged)
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    straight.mkdir(), broken.mkdir()
    metrics = distill(config, straight, StopAt(None), teacher)
    with pytest.raises(Interrupted):
        distill(config, broken, StopAt(3), teacher)  # mid first epoch (5 steps an epoch)
    assert torch.load(broken / CHECKPOINT, weights_only=True)["step"] == 3
    hooks = StopAt(None)
    assert distill(config, broken, hooks, teacher) == metrics
    assert hooks.epochs == [1, 2]
    a, b = (torch.load(d / CHECKPOINT, weights_only=True) for d in (straight, broken))
    assert all(torch.equal(a["student"][name], b["student"][name]) for name in a["student"])
    assert torch.equal(a["queue"]["embeddings"], b["queue"]["embeddings"])

    # a k-NN evaluation run streams the same evaluation views in chunks: the training's own k-NN again
    from seedrun.evaluate.run import evaluate
    from seedrun.sweeps.spec import EXECUTION_KEYS

    settings = {"variants": [[20, 0.07], [1, None]]}
    evaluation = {"protocol": "knn", "settings": settings, "data": config["data"], "seed": 0,
                  **{key: config[key] for key in EXECUTION_KEYS if key in config}}
    (tmp_path / "eval").mkdir()
    result = evaluate(evaluation, tmp_path / "eval", straight, log=lambda _: None)
    assert result["knn20_top1"] == metrics["knn_top1"] and "nn1_top1" in result


def test_an_unreadable_jpeg_is_skipped_and_reported_then_fails_past_the_limit(tree, tmp_path, cache):
    from seedrun.data.formats import DataError
    from seedrun.data.loader import open_split
    from seedrun.job.failures import classify_failure

    root = tmp_path / "t"
    shutil.copytree(tree, root)
    broken = sorted((root / "train").glob("*/*.JPEG"))[:2]
    broken[0].write_bytes(b"not a JPEG at all")
    broken[1].write_bytes(broken[1].read_bytes()[:200])  # truncated
    logged = []
    data = open_split(data_config(root, "data.max_bad_images=2"), "train", log=logged.append)
    indices, _ = read_epoch(data)
    assert len(indices) == N_TRAIN  # full batches: a skipped image's slot is another image of the batch
    reported = [line for line in logged if line.startswith("skipped an unreadable image")]
    assert sorted(str(path) for path in broken) == sorted(line.split(": ")[1] for line in reported)
    assert not {data.files.path(i) for i in indices} & {str(path) for path in broken}

    strict = open_split(data_config(root, "data.max_bad_images=1"), "train", log=logged.append)
    with pytest.raises(DataError, match="more than data.max_bad_images=1") as failure:
        read_epoch(strict)
    assert classify_failure(failure.value) == "data_error"


MEMORY_PROBE = """
import itertools, resource, sys
import torch
torch.set_num_threads(1)
from seedrun.sweeps.compose import compose_config
from seedrun.data.loader import open_split

def config(root):
    return compose_config(["data=imagenet", "data.root=" + root, "data.image_size=64", "data.loader=auto",
                           "data.memory_budget_mb=4", "data.workers=0",  # no blur, no jitter: quicker, same memory
                           "data.augment.blur_p=0", "data.augment.jitter_p=0"])["data"]

warm = open_split(config(sys.argv[1]), "train")  # lazy imports and first allocations, on another tree
for batch in itertools.islice(warm.batches(0, 50, {0: None}).epoch(0), 5):
    batch.view(0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
train = open_split(config(sys.argv[2]), "train")
seen = sum(len(batch.view(0)) for batch in train.batches(0, 50, {0: None}).epoch(0))
print(train.kind, seen, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def test_memory_stays_bounded_on_a_tree_larger_than_the_budget(tree, tmp_path, cache):
    # 600 images of 128 x 112: 7 MB decoded at 64 px, 26 MB at full size; the budget is 4 MB, so auto
    # streams them, and reading an epoch must not grow the process by anything like the set's size
    # (the in-memory loader grows it by about 17 MB here)
    root = write_tree(tmp_path / "big", 600, 10, sizes=((128, 112),))
    result = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(tree), str(root)], capture_output=True,
                            text=True, cwd=ROOT, timeout=300, env={**os.environ, "SEEDRUN_CACHE": str(cache)})
    assert result.returncode == 0, result.stderr
    kind, seen, growth = result.stdout.splitlines()[-1].split()
    assert kind == "stream" and int(seen) == 600
    assert int(growth) < 4 * 2 ** 20, f"peak RSS grew by {int(growth) / 2 ** 20:.1f} MB reading one epoch"


def test_both_formats_train_a_distillation_through_the_cli(tree, tsv, tmp_path, cache):
    runs = {}
    for fmt, root in (("folders", tree), ("tsv", tsv)):  # side by side: each sweep waits on its jobs
        cli = CLI(tmp_path / fmt / "home")
        cli.env["SEEDRUN_CACHE"] = str(cache)
        sweep = write_sweep(tmp_path / f"{fmt}.yaml", f"""name: stream-{fmt}
base:
  data: imagenet
  data.root: {root}
  data.image_size: 32
  data.loader: stream
  data.workers: 1
  data.num_classes: 10
  data.train_subset: 160
  eval.knn.k: 20
  teacher.width: 8
  teacher.pretrain.epochs: 1
  teacher.pretrain.batch_size: 32
  teacher.pretrain.queue_size: 128
  student.width: 8
  distill.epochs: 1
  distill.batch_size: 32
  distill.queue_size: 128
  distill.warmup_epochs: 0
  threads: 1
""")
        runs[fmt] = cli, subprocess.Popen([sys.executable, "-m", "seedrun", "sweep", str(sweep)], cwd=cli.cwd,
                                          env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for fmt, (cli, process) in runs.items():
        out, _ = process.communicate(timeout=600)
        # the teacher and the student, on 16 images of each class (a TSV's subset drawn from its label column)
        assert process.returncode == 0 and "completed 2  failed 0" in out, out
        recorded = json.loads(cli("status", "--json").stdout)["runs"]
        assert len(recorded) == 2 and all(10.0 < r["metrics"]["knn_top1"] <= 100.0 for r in recorded), fmt


def _tiny_copy(tree: Path, root: Path) -> Path:
    shutil.copytree(tree / "train" / "n00000000", root / "train" / "n00000000")
    shutil.copytree(tree / "val" / "n00000000", root / "val" / "n00000000")
    return root


def _no_val(tree, tmp_path):
    root = _tiny_copy(tree, tmp_path / "t")
    shutil.rmtree(root / "val")
    return root, f"{root}: expected {root}/train/<class>/ and {root}/val/<class>/"


def _empty_class(tree, tmp_path):
    root = _tiny_copy(tree, tmp_path / "t")
    (root / "train" / "n00000009").mkdir()
    return root, f"{root / 'train' / 'n00000009'}: expected images"


def _lineidx_mismatch(tree, tmp_path):
    root = write_tsv(_tiny_copy(tree, tmp_path / "t"), tmp_path / "tsv")
    offsets = (root / "val.lineidx").read_text().split()
    (root / "val.lineidx").write_text("".join(f"{int(o) + 7 * (i > 0)}\n" for i, o in enumerate(offsets)))
    return root, f"{root / 'val.lineidx'}: expected byte offsets of the lines of val.tsv"


@pytest.mark.parametrize("problem", [_no_val, _empty_class, _lineidx_mismatch])
def test_a_bad_tree_is_one_line_at_plan_time(problem, tree, tmp_path, cache):
    root, expected = problem(tree, tmp_path)
    cli = CLI(tmp_path / "home")
    mine = write_sweep(tmp_path / "s.yaml", "name: s\nbase:\n  data: imagenet\n")
    for sweep, dry_run in (("sweeps/temperature.yaml", ["--dry-run"]), (str(mine), ["--dry-run"]), (str(mine), [])):
        result = cli("sweep", sweep, "--data-root", str(root), *dry_run, check=False)
        assert result.returncode == 2, result.stdout + result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(f"error: {sweep}: data.root: ") and expected in line, line
    assert not cli.db.exists()


def test_the_imagenet_layout_passes_the_plan_time_check(tree, tsv, tmp_path, cache):
    cli = CLI(tmp_path / "home")
    for root in (tree, tsv):
        out = cli("sweep", "sweeps/temperature.yaml", "--dry-run", "--data-root", str(root))
        assert "data set" not in out.stdout + out.stderr, out.stdout + out.stderr
