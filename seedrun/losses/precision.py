"""Losses in fp32 whatever autocast the caller runs under.

Why: under bf16 autocast every matmul of a loss (z_S . queue, z_T . queue) returns bf16, whose 8-bit
mantissa rounds a cosine near 1 to steps of 2^-8; divided by tau_T = 0.001 (tau_T = 0.01 in the paper's
best setting) that is a logit error of ~4 (0.4), enough to move the SEED target softmax(z_T . D / tau_T)
by a total variation of ~0.1. The networks still run in bf16 (the speed); the logits, softmaxes and
log-softmaxes of the loss are computed in fp32 (tests/test_gpu_settings.py checks the loss under
autocast equals the fp32 one).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])


def _float(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype not in (torch.float32, torch.float64):
        return value.float()
    if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
        return type(value)(_float(v) for v in value)
    return value


def _devices(values) -> set[str]:
    found = set()
    for value in values:
        if isinstance(value, torch.Tensor):
            found.add(value.device.type)
        elif isinstance(value, (list, tuple)):
            found |= _devices(value)
    return found


def fp32(fn: F) -> F:
    """Run `fn` with autocast off on its tensors' devices and its floating-point tensor arguments in fp32."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with contextlib.ExitStack() as stack:
            for device in _devices([*args, *kwargs.values()]) | {"cpu"}:
                if torch.is_autocast_enabled(device):
                    stack.enter_context(torch.autocast(device, enabled=False))
            return fn(*[_float(a) for a in args], **{k: _float(v) for k, v in kwargs.items()})

    return wrapper  # type: ignore[return-value]
