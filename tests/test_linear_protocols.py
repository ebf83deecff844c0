"""The linear probe protocols by name (issue 16 item 5): `moco`, the published SEED/MoCo probe, trains
the fc on fresh RandomResizedCrop + flip views through the frozen backbone (from either loader);
`cached` is MoCo's hyper-parameters on cached features; `compress` is CompRess's. Results are recorded
under the protocol's names, old `recipe: moco` evaluations (cached features) read as `cached`, and a
table names its protocol and compares with the paper's published numbers only for the paper's."""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn

from conftest import TINY_BASE, write_sweep
from stream_trees import FASHION

N_TEST_TINY, N_TRAIN_TINY = 160, 320


class Recorder(nn.Module):
    """A backbone that records every input it is given and the mode it was in."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.inputs, self.modes = inner, [], []

    def forward(self, x):
        self.inputs.append(x.detach().float().cpu().clone())
        self.modes.append(self.training)
        return self.inner(x)


def tiny_data():
    from seedrun.sweeps.compose import compose_config

    return compose_config(["data=tiny"])["data"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from seedrun.models.model_file import save_model
    from seedrun.models.registry import create_backbone

    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    backbone, dim = create_backbone("resnet18", small_images=True, in_chans=3, width=8)
    save_model(folder / "model.pt", backbone, nn.Linear(dim, 16), arch="resnet18", width=8, small_images=True,
               in_chans=3)
    return folder


def evaluate_linear(settings, model, run_dir, monkeypatch, data=None):
    """seedrun.evaluate.run.evaluate of the linear protocol, the backbone wrapped in a Recorder."""
    from seedrun.evaluate.run import evaluate
    from seedrun.models import model_file

    recorders = []
    load = model_file.load_own_model

    def recording(path, channels):
        backbone, head = load(path, channels)
        recorders.append(Recorder(backbone))
        return recorders[-1], head

    monkeypatch.setattr(model_file, "load_own_model", recording)
    run_dir.mkdir(parents=True)
    config = {"protocol": "linear", "settings": settings, "data": data or tiny_data(), "seed": 0, "threads": 1,
              "device": "cpu"}
    result = evaluate(config, run_dir, model, log=lambda _: None)
    return result, recorders[0]


def rows(tensors):
    return {t.numpy().tobytes() for batch in tensors for t in batch}


def test_moco_feeds_new_views_every_epoch_and_cached_reads_each_image_once(model, tmp_path, home, monkeypatch):
    moco = {"recipe": "moco", "epochs": 2, "batch_size": 64, "crop_scale": [0.08, 1.0]}
    result, backbone = evaluate_linear(moco, model, tmp_path / "moco", monkeypatch)
    seen = torch.cat(backbone.inputs)
    # the test set's evaluation views once, then every training image in each of the 2 epochs
    assert len(seen) == N_TEST_TINY + 2 * N_TRAIN_TINY
    epoch0 = seen[N_TEST_TINY:N_TEST_TINY + N_TRAIN_TINY]
    epoch1 = seen[N_TEST_TINY + N_TRAIN_TINY:]
    # no image is seen twice as the same view: new crops and flips every epoch
    assert not rows([epoch0]) & rows([epoch1]) and len(rows([epoch0])) == N_TRAIN_TINY
    assert 0.0 <= result["linear_top1"] <= 100.0 and 1 <= result["linear_best_epoch"] <= 2

    # cached: one forward per image (features extracted once, then the fc trains on those fixed features) ...
    cached = {**moco, "recipe": "cached"}
    first, backbone = evaluate_linear(cached, model, tmp_path / "cached", monkeypatch)
    assert sum(len(x) for x in backbone.inputs) == N_TRAIN_TINY + N_TEST_TINY
    # ... and, features cached on disk, none the second time: every epoch saw identical features
    again, backbone = evaluate_linear(cached, model, tmp_path / "again", monkeypatch)
    assert backbone.inputs == [] and again == first
    # an evaluation configured before the protocols had names (`recipe: moco`, no crop_scale) is the cached one
    old, backbone = evaluate_linear({"recipe": "moco", "epochs": 2, "batch_size": 64}, model, tmp_path / "old",
                                    monkeypatch)
    assert backbone.inputs == [] and old == first


def test_probe_views_are_crop_and_flip_only(tmp_path):
    """Constant-colour images stay their colour (no jitter, grayscale or blur) whatever the crop; a textured
    image is cropped differently every epoch; flips happen. In-memory loader."""
    from seedrun.evaluate.probe_views import train_views

    class Split:
        kind, mean, std = "memory", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

        def __init__(self):
            colours = torch.tensor([[200, 30, 60], [20, 180, 90], [90, 60, 220], [250, 250, 10]], dtype=torch.uint8)
            flat = colours.view(4, 3, 1, 1).expand(4, 3, 16, 16)
            ramp = torch.arange(16, dtype=torch.uint8).mul(15).view(1, 1, 1, 16).expand(4, 3, 16, 16)
            self.images = torch.cat([flat, ramp]).contiguous()
            self.labels = torch.arange(8)

        def __len__(self):
            return 8

    split = Split()
    views = train_views(split, {}, None, seed=0, batch_size=3, crop_scale=(0.08, 1.0), device=torch.device("cpu"))
    by_epoch = []
    for epoch in range(3):
        seen = {}
        for x, labels in views(epoch):
            assert x.shape[1:] == (3, 16, 16)
            seen.update({int(label): image for label, image in zip(labels, x)})
        assert sorted(seen) == list(range(8))  # every image every epoch, the last batch the remainder
        by_epoch.append(seen)
    for seen in by_epoch:
        for label in range(4):
            expected = (split.images[label, :, 0, 0].float() / 255 - 0.5) / 0.25
            assert torch.allclose(seen[label], expected.view(3, 1, 1).expand(3, 16, 16), atol=1e-4)
    for label in range(4, 8):
        assert not torch.equal(by_epoch[0][label], by_epoch[1][label])
    # a flipped ramp decreases left to right: over 3 epochs x 4 ramps some view is flipped and some is not
    slopes = [float(seen[label][0, 8, -1] - seen[label][0, 8, 0]) for seen in by_epoch for label in range(4, 8)]
    assert any(s > 0 for s in slopes) and any(s < 0 for s in slopes)
    # the same seed draws the same views again (a rerun), another epoch others
    again = {int(lb): im for x, labels in views(0) for lb, im in zip(labels, x)}
    assert all(torch.equal(again[k], by_epoch[0][k]) for k in range(8))


@pytest.mark.skipif(not FASHION.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_streamed_probe_views_are_crop_and_flip_only(tmp_path, monkeypatch):
    """The stream loader's probe views: constant-colour JPEGs keep their colour (the MoCo-v2 jitter the
    training config asks for is off), and no split is ever loaded whole into memory."""
    from PIL import Image

    from seedrun.data import datasets, loader
    from seedrun.evaluate.probe_views import probe_data_config, train_views
    from seedrun.sweeps.compose import compose_config

    colours = [(200, 30, 60), (20, 180, 90), (90, 60, 220), (250, 250, 10)]
    for split in ("train", "val"):
        for index, colour in enumerate(colours * 2):
            folder = tmp_path / split / f"n{index % 4:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40 + 8 * index, 48), colour).save(folder / f"{split}_{index}.png")
    data_cfg = compose_config(["data=imagenet", f"data.root={tmp_path}", "data.image_size=16", "data.loader=stream",
                               "data.workers=0", "data.num_classes=4"])["data"]

    def refuse(*args, **kwargs):
        raise AssertionError("a streamed probe loaded a whole split into memory")

    monkeypatch.setattr(datasets, "load", refuse)
    monkeypatch.setattr(loader, "load", refuse)
    train = loader.open_split(data_cfg, "train")
    assert train.data_cfg["augment"]["jitter_p"] > 0  # the training's augmentation has colour jitter ...
    assert probe_data_config(data_cfg, (0.08, 1.0))["augment"]["jitter_p"] == 0.0  # ... the probe's none
    views = train_views(train, data_cfg, None, seed=0, batch_size=4, crop_scale=(0.08, 1.0), device=torch.device("cpu"))
    batches = list(views(0))
    assert len(batches) == 2 and all(x.shape == (4, 3, 16, 16) for x, _ in batches)
    for x, labels in batches:
        for image, label in zip(x, labels):
            expected = (torch.tensor(colours[int(label)]).float() / 255 - torch.tensor(data_cfg["mean"])) / torch.tensor(
                data_cfg["std"])
            assert torch.allclose(image.mean(dim=(1, 2)), expected, atol=0.05), (label, image.mean(dim=(1, 2)))


def test_backbone_stays_frozen_and_in_eval_mode():
    from seedrun.evaluate.linear import MOCO, augmented_probe

    torch.manual_seed(0)
    inner = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
    backbone = Recorder(inner).train()  # handed over in training mode: the probe must switch it to eval
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    generator = torch.Generator().manual_seed(1)
    images, labels = torch.randn(24, 3, 12, 12, generator=generator), torch.arange(24) % 3

    def views(epoch):
        for start in range(0, 24, 8):
            yield images[start:start + 8] + 0.1 * epoch, labels[start:start + 8]

    with torch.no_grad():
        val = inner.eval()(images)
    result = augmented_probe(backbone, views, val, labels, 3, MOCO, batch_size=8, epochs=3)
    assert backbone.modes and not any(backbone.modes)  # BN running statistics, no dropout, every forward
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN statistics untouched
    assert all(p.grad is None for p in backbone.parameters())
    assert result["epochs"] == 3 and 0.0 <= result["linear_top1"] <= 100.0


def test_lr_steps_at_the_scaled_milestones(monkeypatch):
    from seedrun.evaluate import linear

    assert linear.MOCO.with_epochs(10).milestones == (6, 8)
    lrs = []
    step = linear._step

    def spy(x, y, weight, bias, buf_w, buf_b, eye, lr, protocol, first):
        assert x.dtype == torch.float32 and weight.dtype == torch.float32  # the fc in fp32
        lrs.append(lr)
        return step(x, y, weight, bias, buf_w, buf_b, eye, lr, protocol, first)

    monkeypatch.setattr(linear, "_step", spy)
    images, labels = torch.randn(64, 4), torch.arange(64) % 4

    def views(epoch):
        for start in range(0, 64, 32):  # two steps an epoch
            yield images[start:start + 32], labels[start:start + 32]

    linear.augmented_probe(nn.Identity(), views, images, labels, 4, "moco", batch_size=32, epochs=10)
    base = 30.0 * 32 / 256  # lr 30 x B/256
    expected = [base] * 12 + [base * 0.1] * 4 + [base * 0.01] * 4  # x0.1 from epoch 6 and again from 8
    assert lrs == pytest.approx(expected)


def test_results_are_recorded_under_the_protocols_names():
    from seedrun.store.protocols import candidates, protocol_key, qualified

    results = {"linear_top1": 61.0, "linear_top5": 84.0}

    def names(settings):
        return sorted(qualified(protocol_key({"protocol": "linear", "settings": settings}), results))

    assert names({"recipe": "moco", "crop_scale": [0.08, 1.0]}) == ["linear.moco.top1", "linear.moco.top5"]
    assert names({"recipe": "cached", "crop_scale": [0.08, 1.0]}) == ["linear.cached.top1", "linear.cached.top5"]
    assert names({"recipe": "compress"}) == ["linear.compress.top1", "linear.compress.top5"]
    # configured before the protocols had names: `moco` then meant cached features
    assert names({"recipe": "moco", "epochs": 100, "batch_size": 256}) == ["linear.cached.top1", "linear.cached.top5"]
    assert protocol_key({"protocol": "transfer", "settings": {"recipe": "moco"}}) == "transfer.moco"
    # a table reads each protocol's own names: never the moco probe's value for the cached column or back
    assert candidates("linear_top1", "cached") == ["linear.cached.top1", "linear_top1"]
    assert candidates("linear_top1") == ["linear.moco.top1", "linear_top1"]
    # transfer probes always cache features: their moco recipe is the cached protocol under its older name
    assert candidates("transfer_cifar10_top1", "cached")[:2] == ["transfer.cached.cifar10_top1",
                                                                 "transfer.moco.cifar10_top1"]


def test_the_table_names_its_protocol_and_compares_only_the_papers():
    from seedrun.store.groups import group_records
    from seedrun.store.protocols import protocol_note
    from seedrun.tables import build_table, render
    from test_tables import distill, m, pretrain

    records = [distill(tau=0.01, metrics=m(44.0, linear=57.0)), pretrain(metrics=m(40.0, linear=52.0))]
    paper = build_table("temperature", group_records(records), paper=True)
    assert "linear_top1" in paper.paper_columns and paper.cell("0.01", "linear_top1").diff is not None
    assert "linear top-1 Δ" in render(paper, "markdown")

    for recipe in ("cached", "compress"):
        other = build_table("temperature", group_records(records), paper=True, protocol=recipe)
        assert other.cell("0.01", "linear_top1").text() == "57.0"  # the value is shown ...
        assert "linear_top1" not in other.paper_columns and other.cell("0.01", "linear_top1").diff is None
        markdown = render(other, "markdown")
        assert "linear top-1 Δ" not in markdown and "linear top-1 paper" not in markdown  # ... never against the paper
        main = build_table("main", group_records(records), paper=True, protocol=recipe)
        # k-NN's protocol is the paper's: still compared; the linear columns are not
        assert "resnet18/knn_top1" in main.paper_columns and "resnet18/linear_top1" not in main.paper_columns
        assert main.cell("resnet50", "resnet18/knn_top1").diff is not None
        assert any(f"show the {recipe} probe protocol" in note and "not comparable" in note for note in other.notes)
        assert "not the paper's" in protocol_note({"linear_top1"}, recipe)
        assert all("Δ" not in line for line in render(other, "csv").splitlines()[0].split(",") if "linear" in line)
    assert "(the paper's" in protocol_note({"linear_top1"}, None)


def test_eval_then_table_through_the_cli(cli, tmp_path):
    overrides = TINY_BASE + ["eval.protocols.linear.epochs=3", "eval.protocols.linear.batch_size=64"]
    path = write_sweep(tmp_path / "s.yaml", "name: probes\nablation: temperature\nbase:\n"
                       + "".join(f"  - {o}\n" for o in overrides))
    assert "completed 2  failed 0" in cli("sweep", str(path)).stdout  # the teacher and the student, no probe
    student = next(r for r in json.loads(cli("status", "--json").stdout)["runs"] if r["stage"] == "distill")
    target = student["hash"][:12]  # the student alone: half the evaluations of the whole sweep

    out = cli("eval", target, "--protocol", "linear").stdout  # the recipe setting: moco
    assert "evaluation(s) with linear (moco), 1 to run" in out, out
    out = cli("eval", target, "--protocol", "linear", "--recipe", "cached").stdout
    assert "evaluation(s) with linear (cached), 1 to run" in out, out
    assert "0 to run" in cli("eval", target, "--protocol", "linear").stdout  # already done, not redone

    runs = json.loads(cli("status", "--json").stdout)["runs"]
    student = next(r for r in runs if r["stage"] == "distill")
    evals = [r for r in runs if r["stage"] == "eval"]
    assert len(evals) == 2 and all(r["state"] == "completed" for r in evals)
    moco, cached = student["metrics"]["linear.moco.top1"], student["metrics"]["linear.cached.top1"]
    assert sorted(r["metrics"]["linear_top1"] for r in evals) == sorted([moco, cached])
    logs = {r["hash"]: cli("logs", r["hash"][:12]).stdout for r in evals}
    # the augmented protocol ran for moco (crop + flip views, 3 epochs logged), not for cached
    assert sum("crop + flip views" in text and "epoch 3/3" in text for text in logs.values()) == 1

    table = cli("table", "--ablation", "temperature", "--paper", "--format", "markdown").stdout
    line = next(row for row in table.splitlines() if row.startswith("| 0.01 "))
    assert f"{moco:.1f}" in line and "linear top-1 Δ" in table, table
    assert "the moco probe protocol (the paper's)" in table
    table = cli("table", "--ablation", "temperature", "--paper", "--format", "markdown", "--protocol", "cached").stdout
    line = next(row for row in table.splitlines() if row.startswith("| 0.01 "))
    assert f"{cached:.1f}" in line and "linear top-1 Δ" not in table, table
    assert re.search(r"the cached probe protocol; not the paper's", table)
