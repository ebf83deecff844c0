"""Networks found by name (timm-style registry) and the projection heads SEED and MoCo put on them.

Imports are lazy so that `seedrun.models.catalog` (plain data, for `seedrun list`) loads without torch.
"""

from importlib import import_module

_EXPORTS = {
    "mlp_head": "seedrun.models.heads",
    "NETWORKS": "seedrun.models.registry",
    "create_backbone": "seedrun.models.registry",
    "list_networks": "seedrun.models.registry",
    "register_network": "seedrun.models.registry",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'seedrun.models' has no attribute {name!r}")


__all__ = list(_EXPORTS)
