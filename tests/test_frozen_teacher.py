"""The teacher stays frozen in memory while it is distilled from (issue 16 item 6; official main.py:
model.teacher.eval() and no gradients): after distillation steps its parameters *and* BatchNorm buffers
(running mean, variance, batches tracked) are unchanged, it was called in eval mode at every step, and
no gradient reached it. A teacher left in train mode moves its BN running statistics at every forward,
which this catches even though the teacher file on disk (tests/test_train.py) never changes."""

from __future__ import annotations

import torch
from torch import nn

import seedrun.training.distill as distill_module
from seedrun.models.registry import create_network
from seedrun.sweeps.compose import compose_config
from seedrun.training.loop import Hooks
from conftest import TINY_BASE


class Quiet(Hooks):
    def log(self, message: str) -> None:
        pass


def test_teacher_parameters_and_bn_buffers_are_unchanged_and_it_runs_in_eval_mode(monkeypatch, tmp_path):
    config = compose_config(TINY_BASE + ["data.train_subset=64", "data.test_subset=20", "distill.batch_size=16",
                                         "distill.queue_size=64", "distill.epochs=1", "eval.knn.k=5"])  # 3 steps
    torch.manual_seed(0)
    backbone, head, _ = create_network("resnet18", 8, True, 3, config["student"]["dim"])
    batch_norms = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert batch_norms
    for bn in batch_norms:  # statistics a train-mode forward would pull towards the batch's
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    before = {k: v.clone() for k, v in {**backbone.state_dict(), **{"head." + k: v for k, v in head.state_dict().items()}}.items()}
    monkeypatch.setattr(distill_module, "load_teacher", lambda config, teacher_dir: (backbone, head))

    modes = []
    for module in (backbone, head, *batch_norms):
        module.register_forward_pre_hook(lambda m, args: modes.append(m.training))
    distill_module.distill(config, tmp_path, Quiet(), None)

    assert len(modes) >= 3 * (2 + len(batch_norms))  # the teacher was called at each of the 3 steps
    assert not any(modes), "the teacher ran in train mode during distillation"
    after = {**backbone.state_dict(), **{"head." + k: v for k, v in head.state_dict().items()}}
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"teacher state changed: {changed[:5]}"
    assert any(k.endswith("running_mean") for k in before) and any(k.endswith("num_batches_tracked") for k in before)
    assert all(p.grad is None and not p.requires_grad for p in [*backbone.parameters(), *head.parameters()])
