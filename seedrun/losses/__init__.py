"""Distillation and self-supervised losses, one a module, each a pure function plus a small nn.Module."""

from seedrun.losses.binary_contrastive import BinaryContrastiveLoss, binary_contrastive_loss
from seedrun.losses.infonce import infonce_loss
from seedrun.losses.kmeans import KMeansLoss, KMeansTargets, kmeans, kmeans_loss
from seedrun.losses.l2 import L2Loss, l2_loss
from seedrun.losses.ntxent import NTXentLoss, ntxent_loss
from seedrun.losses.online_clustering import OnlineClusteringLoss, online_clustering_loss, sinkhorn
from seedrun.losses.seed import SEEDLoss, seed_loss
from seedrun.losses.seed_mocov2 import SEEDMoCoV2Loss, seed_mocov2_loss
from seedrun.losses.swav import SwAVLoss, swav_loss

__all__ = [
    "BinaryContrastiveLoss",
    "KMeansLoss",
    "KMeansTargets",
    "L2Loss",
    "NTXentLoss",
    "OnlineClusteringLoss",
    "SEEDLoss",
    "SEEDMoCoV2Loss",
    "SwAVLoss",
    "binary_contrastive_loss",
    "infonce_loss",
    "kmeans",
    "kmeans_loss",
    "l2_loss",
    "ntxent_loss",
    "online_clustering_loss",
    "seed_loss",
    "seed_mocov2_loss",
    "sinkhorn",
    "swav_loss",
]
