"""Distillation and self-supervised losses, one a module, each a pure function plus a small nn.Module."""

from seedrun.losses.infonce import infonce_loss
from seedrun.losses.seed import SEEDLoss, seed_loss

__all__ = ["SEEDLoss", "infonce_loss", "seed_loss"]
