"""Networks found by name (timm-style registry) and the projection heads SEED and MoCo put on them."""

from seedrun.models.heads import mlp_head
from seedrun.models.registry import NETWORKS, create_backbone, list_networks, register_network

__all__ = ["NETWORKS", "create_backbone", "list_networks", "mlp_head", "register_network"]
