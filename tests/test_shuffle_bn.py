"""Shuffle BN in one process (MoCo sec. 3.3): the key encoder's BatchNorm normalises groups of a *permuted*
batch, the query encoder's groups of the batch in its own order, and the keys come back in query order.
Real networks, real BatchNorm layers observed through hooks; nothing mocked."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seedrun.models.heads import teacher_head
from seedrun.models.registry import create_backbone
from seedrun.training.pretexts import create_pretext

GROUPS, BATCH = 4, 16
SETTINGS = {"method": "mocov2", "encoder_momentum": 0.99, "tau": 0.2, "queue_size": 64, "dim": 16,
            "shuffle_bn_groups": GROUPS}


def _encoder() -> nn.Module:
    torch.manual_seed(0)
    backbone, d = create_backbone("resnet18", small_images=True, in_chans=1, width=8)
    return nn.Sequential(backbone, teacher_head("mocov2", d, 16))


def _views() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 1, 12, 12, generator=g), torch.randn(BATCH, 1, 12, 12, generator=g)


def _first_bn(module: nn.Module) -> nn.BatchNorm2d:
    return next(m for m in module.modules() if isinstance(m, nn.BatchNorm2d))


def _record(bn: nn.Module, into: list):
    return bn.register_forward_hook(lambda m, inputs, output: into.append((inputs[0].detach().clone(), output.detach().clone())))


def _row_order(seen: torch.Tensor, reference: torch.Tensor) -> list[int]:
    """Which row of `reference` each row of `seen` is (the first BN's input depends on its own image only)."""
    distances = torch.cdist(seen.flatten(1), reference.flatten(1))
    assert distances.min(dim=1).values.max() < 1e-4, "a row the key encoder normalised is no image of the batch"
    return distances.argmin(dim=1).tolist()


def _group_means_are_the_bias(bn: nn.BatchNorm2d, output: torch.Tensor, groups: int) -> bool:
    """Normalised per group: each contiguous group's output has mean `bias` in every channel."""
    means = output.reshape(groups, -1, *output.shape[1:]).mean(dim=(1, 3, 4))
    return torch.allclose(means, bn.bias.detach().expand_as(means), atol=1e-4)


def test_the_key_encoders_batchnorm_sees_groups_of_a_permuted_batch():
    encoder = _encoder()
    pretext = create_pretext(SETTINGS, encoder, seed=0)
    view_a, view_b = _views()
    keys_seen, queries_seen = [], []
    hooks = [_record(_first_bn(pretext.key_encoder), keys_seen), _record(_first_bn(encoder), queries_seen)]
    encoder.train()
    pretext(encoder, view_a, view_b)
    for hook in hooks:
        hook.remove()

    # the images' pre-BN features in query order, from the same layers in eval mode (no batch statistics)
    reference = []
    hook = _record(_first_bn(pretext.key_encoder), reference)
    pretext.key_encoder.eval()
    with torch.no_grad():
        pretext.key_encoder(view_b)
    hook.remove()

    (key_in, key_out), = keys_seen
    order = _row_order(key_in, reference[0][0])
    assert sorted(order) == list(range(BATCH))  # every image of the batch, each once
    assert order != list(range(BATCH))  # ... but not in the query's order
    # statistics per group of the permuted batch: each group of BATCH / GROUPS is normalised on its own
    key_bn = _first_bn(pretext.key_encoder)
    assert _group_means_are_the_bias(key_bn, key_out, GROUPS)
    # the query encoder: its own order, statistics per contiguous group too (MoCo's per-GPU BN)
    (query_in, query_out), = queries_seen
    assert _group_means_are_the_bias(_first_bn(encoder), query_out, GROUPS)
    full_batch = F.batch_norm(query_in, None, None, _first_bn(encoder).weight, _first_bn(encoder).bias, True)
    assert not torch.allclose(full_batch, query_out, atol=1e-3)  # not one batch's statistics


def test_keys_are_the_groups_of_the_permuted_batch_encoded_apart_and_unshuffled():
    encoder = _encoder()
    pretext = create_pretext(SETTINGS, encoder, seed=0)
    view_a, view_b = _views()
    encoder.train()
    pretext(encoder, view_a, view_b)
    after_step = pretext.queue.embeddings.clone()
    pretext.after_step()
    keys = pretext.queue.embeddings[:BATCH]  # the step's keys, as the queue received them
    assert not torch.equal(keys, after_step[:BATCH])

    # find the permutation from the key encoder's own first layer, then encode each group alone (plain
    # BatchNorm in training mode: the group's statistics) and put the keys back in query order
    seen, reference = [], []
    bn = _first_bn(pretext.key_encoder)
    hook = _record(bn, seen)
    pretext(encoder, view_a, view_b)  # the same step 0: the same permutation
    hook.remove()
    hook = _record(bn, reference)
    pretext.key_encoder.eval()
    with torch.no_grad():
        pretext.key_encoder(view_b)
    hook.remove()
    order = torch.tensor(_row_order(seen[0][0], reference[0][0]))
    pretext.key_encoder.train()
    with torch.no_grad():
        groups = [pretext.key_encoder(view_b[part]) for part in order.chunk(GROUPS)]
    expected = torch.empty(BATCH, 16)
    expected[order] = F.normalize(torch.cat(groups).float(), dim=1)
    assert torch.allclose(pretext._keys, expected, atol=1e-5)
    # not what one batch's statistics would give: the shortcut MoCo closes
    with torch.no_grad():
        whole = F.normalize(pretext.key_encoder(view_b).float(), dim=1)
    assert not torch.allclose(pretext._keys, whole, atol=1e-3)


def test_the_permutation_follows_the_step_and_one_group_turns_it_off():
    encoder = _encoder()
    pretext = create_pretext(SETTINGS, encoder, seed=0)
    view_a, view_b = _views()
    orders = []
    for step in (0, 0, 1):
        seen, reference = [], []
        hook = _record(_first_bn(pretext.key_encoder), seen)
        pretext(encoder, view_a, view_b, step)
        hook.remove()
        hook = _record(_first_bn(pretext.key_encoder), reference)
        pretext.key_encoder.eval()
        with torch.no_grad():
            pretext.key_encoder(view_b)
        hook.remove()
        orders.append(_row_order(seen[0][0], reference[0][0]))
    assert orders[0] == orders[1] != orders[2]  # (seed, step) alone: a resumed run draws the same

    plain = create_pretext({**SETTINGS, "shuffle_bn_groups": 1}, _encoder(), seed=0)
    with torch.no_grad():
        plain(plain.key_encoder, view_a, view_b)  # any encoder: only the keys matter here
        plain.key_encoder.train()
        assert torch.allclose(plain._keys, F.normalize(plain.key_encoder(view_b).float(), dim=1), atol=1e-5)


def test_grouped_batchnorm_is_restored_and_averages_running_statistics():
    from seedrun.training.pretexts import batchnorm_groups

    bn = nn.BatchNorm2d(3).train()
    x = torch.randn(8, 3, 4, 4)
    with batchnorm_groups(bn, 2):
        out = bn(x)
    assert "forward" not in bn.__dict__  # the class's own forward again
    halves = [nn.BatchNorm2d(3).train() for _ in range(2)]
    expected = torch.cat([half(part) for half, part in zip(halves, x.chunk(2))])
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(bn.running_mean, (halves[0].running_mean + halves[1].running_mean) / 2, atol=1e-6)
    assert torch.allclose(bn.running_var, (halves[0].running_var + halves[1].running_var) / 2, atol=1e-6)
    assert int(bn.num_batches_tracked) == 1
    bn.eval()  # evaluation uses the running statistics, groups or not
    with batchnorm_groups(bn, 2):
        assert torch.allclose(bn(x), F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False))


@pytest.mark.parametrize("groups, match", [(0, "an integer >= 1, got 0"), ("4", "an integer >= 1, got '4'"),
                                           (3, "a divisor of pretrain.batch_size=16"), (16, "a divisor .* at least 2 images, got 16")])
def test_bad_group_counts_are_one_line_errors(groups, match):
    view_a, view_b = _views()
    with pytest.raises(ValueError, match=f"pretrain.shuffle_bn_groups: expected {match}") as info:
        encoder = _encoder()
        create_pretext({**SETTINGS, "shuffle_bn_groups": groups}, encoder, seed=0)(encoder, view_a, view_b)
    assert "\n" not in str(info.value)
