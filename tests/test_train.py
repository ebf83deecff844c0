"""Training loops on tiny generated images: interrupted and resumed runs end bit-identical to
uninterrupted ones (CPU), and checkpoints are written atomically."""

from __future__ import annotations

import pytest
import torch

from seedrun.atomic import atomic_torch_save
from seedrun.models.model_file import MODEL, load_own_model
from seedrun.models.registry import create_network
from seedrun.training.checkpoints import CHECKPOINT
from seedrun.training.distill import distill
from seedrun.training.loop import Hooks, Interrupted, lr_at
from seedrun.training.pretrain import pretrain
from seedrun.sweeps.compose import compose_config
from seedrun.sweeps.spec import pretrain_config
from conftest import TINY_BASE


class StopAt(Hooks):
    def __init__(self, step_box: dict, stop_after: int | None):
        self.calls, self.stop_after, self.epochs = 0, stop_after, []

    def log(self, message: str) -> None:
        pass

    def epoch_end(self, epoch, metrics):
        self.epochs.append(epoch)

    def should_stop(self) -> bool:
        self.calls += 1
        return self.stop_after is not None and self.calls >= self.stop_after


@pytest.fixture(scope="module")
def configs():
    config = compose_config(TINY_BASE + ["distill.epochs=2", "teacher.pretrain.epochs=2"])
    return pretrain_config(config), config


@pytest.fixture(scope="module")
def teacher_dir(configs, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("teacher")
    pretrain(configs[0], run_dir, StopAt({}, None))
    return run_dir


def _weights(run_dir, key):
    return torch.load(run_dir / CHECKPOINT, weights_only=True)[key]


def test_pretrain_resumes_bit_identical(configs, tmp_path):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    straight.mkdir(), broken.mkdir()
    metrics = pretrain(configs[0], straight, StopAt({}, None))
    with pytest.raises(Interrupted):
        pretrain(configs[0], broken, StopAt({}, 13))  # mid second epoch
    assert torch.load(broken / CHECKPOINT, weights_only=True)["step"] == 13
    resumed = pretrain(configs[0], broken, StopAt({}, None))
    for key in ("encoder", "pretext"):  # the pretext holds MoCo's key encoder
        a, b = _weights(straight, key), _weights(broken, key)
        assert a and all(torch.equal(a[name], b[name]) for name in a), key
    queues = [_weights(d, "pretext_extra")["queue"]["embeddings"] for d in (straight, broken)]
    assert torch.equal(*queues)
    assert metrics == resumed


def test_distill_resumes_bit_identical(configs, teacher_dir, tmp_path):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    straight.mkdir(), broken.mkdir()
    config = configs[1]
    metrics = distill(config, straight, StopAt({}, None), teacher_dir)
    recorded = []
    for stop in (4, 6):  # interrupted mid-epoch, then exactly at the end of the first epoch (step 10)
        hooks = StopAt({}, stop)
        with pytest.raises(Interrupted):
            distill(config, broken, hooks, teacher_dir)
        recorded += hooks.epochs
    hooks = StopAt({}, None)
    resumed = distill(config, broken, hooks, teacher_dir)
    assert recorded + hooks.epochs == [1, 2]  # every epoch's metrics recorded exactly once
    a, b = _weights(straight, "student"), _weights(broken, "student")
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert metrics == resumed


def test_teacher_is_frozen_and_student_moves_towards_it(configs, teacher_dir, tmp_path):
    from seedrun.data.augment import normalize
    from seedrun.data.datasets import load
    from seedrun.losses import seed_loss

    before = torch.load(teacher_dir / MODEL, weights_only=True)
    config = configs[1]
    distill(config, tmp_path, StopAt({}, None), teacher_dir)
    after = torch.load(teacher_dir / MODEL, weights_only=True)
    assert all(torch.equal(before["backbone"][k], after["backbone"][k]) for k in before["backbone"])

    # SEED's loss on held-out images, against a queue of the teacher's embeddings of training images:
    # lower for the trained student than for the same network freshly initialised.
    test, train_set = load(config["data"], "test"), load(config["data"], "train")
    channels = config["data"]["channels"]
    teacher = torch.nn.Sequential(*load_own_model(teacher_dir / MODEL, channels)).eval()
    trained = torch.nn.Sequential(*load_own_model(tmp_path / MODEL, channels)).eval()
    torch.manual_seed(config["seed"])
    s = config["student"]
    fresh = torch.nn.Sequential(*create_network(s["arch"], s["width"], s["small_images"], channels, s["dim"])[:2]).eval()
    embed = lambda net, images: torch.nn.functional.normalize(net(normalize(images, test.mean, test.std)), dim=1)
    with torch.no_grad():
        queue, z_teacher = embed(teacher, train_set.images[:128]), embed(teacher, test.images)
        tau_s, tau_t = config["distill"]["tau_student"], config["distill"]["tau_teacher"]
        loss_trained = seed_loss(embed(trained, test.images), z_teacher, queue, tau_s, tau_t)
        loss_fresh = seed_loss(embed(fresh, test.images), z_teacher, queue, tau_s, tau_t)
    assert loss_trained < loss_fresh


def test_lr_schedule_warms_up_then_decays_to_zero():
    values = [lr_at(step, 100, 10, 1.0) for step in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[10] == pytest.approx(1.0) and values[99] < 0.001
    assert all(x >= y for x, y in zip(values[10:], values[11:]))


def test_atomic_save_leaves_no_partial_file(tmp_path):
    atomic_torch_save({"a": torch.ones(3)}, tmp_path / "c.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    assert torch.equal(torch.load(tmp_path / "c.pt", weights_only=True)["a"], torch.ones(3))


STRATEGY_OVERRIDES = {
    "seed": [], "binary_contrastive": [], "l2": [],
    "kmeans": ["distill.kmeans_k=10", "distill.kmeans_iterations=5"],
    "online_clustering": ["distill.prototypes=30"],
    "seed_mocov2": ["distill.moco_momentum=0.99"],
}


@pytest.mark.parametrize("strategy", sorted(STRATEGY_OVERRIDES))
def test_every_strategy_trains_and_resumes_bit_identical(strategy, configs, teacher_dir, tmp_path):
    config = compose_config(TINY_BASE + ["distill.epochs=2", "teacher.pretrain.epochs=2", f"distill={strategy}"]
                            + STRATEGY_OVERRIDES[strategy])
    assert config["distill"]["strategy"] == strategy
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    straight.mkdir(), broken.mkdir()
    metrics = distill(config, straight, StopAt({}, None), teacher_dir)
    with pytest.raises(Interrupted):
        distill(config, broken, StopAt({}, 7), teacher_dir)
    assert distill(config, broken, StopAt({}, None), teacher_dir) == metrics
    a, b = _weights(straight, "student"), _weights(broken, "student")
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert 10.0 < metrics["knn_top1"] <= 100.0


@pytest.mark.parametrize("teacher", ["small_resnet_simclr", "small_resnet_swav"])
def test_simclr_and_swav_teachers_train_and_resume_bit_identical(teacher, tmp_path):
    base = [o for o in TINY_BASE if not o.startswith("teacher.pretrain.queue_size")]  # MoCo's only
    config = pretrain_config(compose_config(base + [f"teacher={teacher}", "teacher.width=8", "teacher.pretrain.epochs=2",
                                                         "teacher.pretrain.batch_size=32"]))
    assert config["pretrain"]["method"] == teacher.split("_")[-1]
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    straight.mkdir(), broken.mkdir()
    metrics = pretrain(config, straight, StopAt({}, None))
    with pytest.raises(Interrupted):
        pretrain(config, broken, StopAt({}, 6))
    assert pretrain(config, broken, StopAt({}, None)) == metrics
    a, b = _weights(straight, "encoder"), _weights(broken, "encoder")
    assert all(torch.equal(a[name], b[name]) for name in a)
    # the saved model (backbone + the method's own head) is what a distillation run loads as its teacher
    backbone, head = load_own_model(straight / MODEL, config["data"]["channels"])
    assert head(backbone(torch.zeros(2, 3, 16, 16))).shape == (2, 128)


def test_small_patch_distillation_and_deeper_head(configs, teacher_dir, tmp_path):
    config = compose_config(TINY_BASE + ["distill.epochs=2", "teacher.pretrain.epochs=2", "distill.small_crops=2",
                                         "distill.small_crop_size=8", "student.head_layers=3"])
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    straight.mkdir(), broken.mkdir()
    metrics = distill(config, straight, StopAt({}, None), teacher_dir)
    with pytest.raises(Interrupted):
        distill(config, broken, StopAt({}, 5), teacher_dir)
    assert distill(config, broken, StopAt({}, None), teacher_dir) == metrics
    state = torch.load(straight / CHECKPOINT, weights_only=True)
    from seedrun.training.queue import EmbeddingQueue

    fresh = EmbeddingQueue(128, 128, torch.Generator().manual_seed(config["seed"] + 2)).embeddings
    assert not torch.equal(state["small_queue"]["embeddings"], fresh)  # the small-patch queue was filled too
    backbone, head = load_own_model(straight / MODEL, 3)
    assert sum(isinstance(m, torch.nn.Linear) for m in head) == 3  # the deeper head round-trips
