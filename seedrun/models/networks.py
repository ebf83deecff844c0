"""The paper's backbones, in torchvision's layout so that official checkpoints load by key."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

from seedrun.models.registry import register_network


class ResNet(tv_resnet.ResNet):
    """torchvision's ResNet with a base width (64 in the paper) and an optional small-image stem.

    Keys match torchvision's (conv1, bn1, layer1.0.conv1, ...), so official ResNet checkpoints load.
    """

    def __init__(self, block, layers, *, width: int = 64, width_multiplier: int = 1, small_images: bool = False, in_chans: int = 3):
        super().__init__(block, layers, width_per_group=64 * width_multiplier)
        if width != 64:
            # Rebuild the stages with scaled channels; torchvision hard-codes 64-128-256-512.
            self.inplanes = width
            self.layer1 = self._make_layer(block, width, layers[0])
            self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
            self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
            self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
            self.bn1 = nn.BatchNorm2d(width)
        if small_images:
            self.conv1 = nn.Conv2d(in_chans, width, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_chans, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.feature_dim = width * 8 * block.expansion
        self.fc = nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def _resnet(block, layers, width_multiplier: int = 1):
    def build(*, small_images: bool, in_chans: int, width: int) -> tuple[nn.Module, int]:
        net = ResNet(block, layers, width=width, width_multiplier=width_multiplier, small_images=small_images, in_chans=in_chans)
        return net, net.feature_dim

    return build


register_network("resnet18", "student", "ResNet-18 (He et al. 2016), d=512")(_resnet(tv_resnet.BasicBlock, [2, 2, 2, 2]))
register_network("resnet34", "student", "ResNet-34, d=512")(_resnet(tv_resnet.BasicBlock, [3, 4, 6, 3]))
register_network("resnet50", "teacher", "ResNet-50, d=2048")(_resnet(tv_resnet.Bottleneck, [3, 4, 6, 3]))
register_network("resnet101", "teacher", "ResNet-101, d=2048")(_resnet(tv_resnet.Bottleneck, [3, 4, 23, 3]))
register_network("resnet152", "teacher", "ResNet-152, d=2048")(_resnet(tv_resnet.Bottleneck, [3, 8, 36, 3]))


def channels_last_ok(module: nn.Module) -> nn.Module:
    return module.to(memory_format=torch.channels_last)
