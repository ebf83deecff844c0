"""The GPU-path settings (seedrun.training.kernels, seedrun.losses.precision): losses in fp32 under bf16
autocast, the teacher under inference_mode, channels_last, compile and deterministic, and their checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seedrun import losses
from seedrun.training import kernels


def _unit(*shape, seed):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_seed_target_under_bf16_autocast_is_the_fp32_one():
    z_s = _unit(16, 128, seed=1)
    z_t = F.normalize(z_s + 0.3 * _unit(16, 128, seed=3), dim=1)  # a teacher close to the student
    # a queue holding near-duplicates of the batch (cosines ~0.999, as other views of the same images
    # give): at tau_T = 0.001 the target spreads over them, and bf16's 2^-8 steps near 1 move it
    near = F.normalize(z_t.repeat(8, 1) + 0.03 * _unit(128, 128, seed=4), dim=1)
    queue = torch.cat([near, _unit(896, 128, seed=2)])
    exact = losses.seed_loss(z_s, z_t, queue, 0.2, 0.001)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = losses.seed_loss(z_s, z_t, queue, 0.2, 0.001)
        # what the loss computed before: the target from matmuls autocast runs in bf16
        bf16_logits = torch.cat([(z_t * z_t).sum(1, keepdim=True), z_t @ queue.T], dim=1)
        assert (z_t @ queue.T).dtype == torch.bfloat16  # autocast does cast these matmuls
    assert under_autocast.dtype == torch.float32
    assert torch.allclose(under_autocast, exact, rtol=1e-6, atol=1e-6)
    fp32_logits = torch.cat([(z_t * z_t).sum(1, keepdim=True), z_t @ queue.T], dim=1)
    tv = 0.5 * (F.softmax(bf16_logits.float() / 0.001, 1) - F.softmax(fp32_logits / 0.001, 1)).abs().sum(1).mean()
    assert tv > 0.02, tv  # the error fp32 avoids is real at tau_T = 0.001


@pytest.mark.parametrize("name", ["binary_contrastive", "infonce", "l2", "ntxent", "seed_mocov2", "online_clustering",
                                  "swav", "kmeans"])
def test_every_loss_under_bf16_autocast_equals_fp32(name):
    a, b, queue, protos = _unit(8, 32, seed=4), _unit(8, 32, seed=5), _unit(64, 32, seed=6), _unit(20, 32, seed=7)
    kmeans = losses.KMeansLoss(32, 5)
    scores = [a @ protos.T, b @ protos.T]
    call = {
        "binary_contrastive": lambda: losses.binary_contrastive_loss(a, b, queue, 0.07),
        "infonce": lambda: losses.infonce_loss(a, b, queue, 0.07),
        "l2": lambda: losses.l2_loss(a, b),
        "ntxent": lambda: losses.ntxent_loss(a, b, 0.1),
        "seed_mocov2": lambda: losses.seed_mocov2_loss(a, b, queue, 0.2, 0.001, a, b, queue, 0.2, 1.0),
        "online_clustering": lambda: losses.online_clustering_loss(a, b, protos, 0.1, 0.05, 3, queue),
        "swav": lambda: losses.swav_loss(scores, 0.1),  # scores made by the caller, outside autocast
        "kmeans": lambda: kmeans(a, torch.arange(8) % 5),
    }[name]
    exact = call()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = call()
    assert under_autocast.dtype == torch.float32
    assert torch.allclose(under_autocast, exact, rtol=1e-6, atol=1e-6), (under_autocast, exact)


def test_teacher_forward_is_a_target_the_student_loss_can_use():
    teacher = torch.nn.Linear(4, 3).requires_grad_(False)
    student = torch.nn.Linear(4, 3)
    x = torch.randn(5, 4)
    target = kernels.teacher_forward(teacher, x)
    assert not target.is_inference() and not target.requires_grad
    assert torch.equal(target, teacher(x))
    (student(x) * target).sum().backward()  # an inference tensor saved for backward would raise here
    assert student.weight.grad is not None


def test_memory_format_compile_and_deterministic_settings(monkeypatch):
    assert kernels.memory_format(torch.device("cuda")) == torch.channels_last
    assert kernels.memory_format(torch.device("cpu")) == torch.contiguous_format
    net = torch.nn.Conv2d(3, 4, 3)
    assert kernels.maybe_compile(net, {}) is net and kernels.maybe_compile(net, {"compile": False}) is net
    assert isinstance(kernels.maybe_compile(net, {"compile": True}), torch._dynamo.eval_frame.OptimizedModule)

    # flags only (no GPU needed): restored afterwards, they are process-wide
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
             torch.backends.cudnn.deterministic, torch.is_deterministic_algorithms_warn_only_enabled())
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        kernels.configure({"deterministic": False}, torch.device("cuda"))
        assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
        kernels.configure({}, torch.device("cuda"))  # the default: deterministic
        assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        import os
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[3])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[1], saved[2]


def test_new_settings_keep_hashes_and_are_checked(tmp_path):
    from conftest import TINY_BASE
    from seedrun.errors import InputError
    from seedrun.sweeps.compose import compose_config
    from seedrun.sweeps.spec import config_hash
    from seedrun.sweeps.sweep_file import expand

    config = compose_config(TINY_BASE)
    assert (config["distill"]["sync_bn"], config["distill"]["deterministic"], config["distill"]["compile"]) == (
        False, True, False)
    without = {**config, "distill": {k: v for k, v in config["distill"].items()
                                     if k not in ("sync_bn", "deterministic", "compile")}}
    assert config_hash(config) == config_hash(without)  # recorded runs keep their hashes
    assert config_hash(compose_config(TINY_BASE + ["distill.sync_bn=true"])) != config_hash(config)
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nbase: [data=tiny, distill.batch_size=32, distill.queue_size=128, distill.sync_bn=yes]\n")
    with pytest.raises(InputError, match="distill.sync_bn.*expected true or false, got 'yes'"):
        expand(path, dry_run=True)
