"""Training checkpoints: the state a recipe needs to resume bit-identically (networks, optimiser, queue,
RNG, step), written atomically so that a requeued job never reads half of one."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from seedrun.atomic import atomic_torch_save

CHECKPOINT = "checkpoint.pt"  # training state, overwritten as training goes


def save_checkpoint(state: dict[str, Any], run_dir: Path) -> None:
    atomic_torch_save(state, run_dir / CHECKPOINT)


def load_checkpoint(run_dir: Path) -> Optional[dict[str, Any]]:
    path = run_dir / CHECKPOINT
    return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
