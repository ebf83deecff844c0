"""Projection heads.

SEED's student head is Linear(d, d) -> ReLU -> Linear(d, 128) without BN (official seed/builder.py);
MoCo-v2's head is the same shape (2048 -> 2048 -> ReLU -> 128), so one builder serves both.
"""

from __future__ import annotations

from torch import nn


def mlp_head(dim_in: int, dim_out: int = 128, hidden: int | None = None) -> nn.Sequential:
    hidden = hidden or dim_in
    return nn.Sequential(nn.Linear(dim_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim_out))
