"""Residual blocks and the stages and forward pass of a ResNet (He et al., 2016), written for seedrun.

A residual block is a short chain of convolutions, each followed by its batch norm and, all but the
last, by a ReLU. The block's input is added to the chain's output and the sum goes through a last ReLU.
Where the block changes the shape of what flows through it (a stride, or more channels out than in),
the input first goes through the block's `downsample`: a 1x1 convolution with the same stride, then a
batch norm. The two kinds of block differ only in their chain:

    BasicBlock  (ResNet-18, -34)           3x3, 3x3                      the stride on the first
    Bottleneck  (ResNet-50, -101, -152)    1x1 in, 3x3, 1x1 out (x4)     the stride on the 3x3

Putting a bottleneck's stride on its 3x3 convolution rather than on the first 1x1 ("ResNet v1.5") is
what torchvision and the official MoCo and SEED code train, so their checkpoints describe this network.

Names are what those checkpoints hold (conv1/bn1, conv2/bn2, conv3/bn3 and downsample.0/.1 in a
block; conv1, bn1, layer1-layer4 in the network), so that their weights load by key. Parameters are
registered in the same order as theirs, so the network's initialisation (seedrun.models.networks.ResNet)
draws the same weights from the same seed. tests/test_networks.py holds both against torchvision.

seedrun.models.networks.ResNet builds the stem, the classifier slot and the initialisation. Nothing here
imports torchvision: its package import brings in every model it has and, through torchvision.ops,
torch._dynamo, seconds of each job's start for networks a ResNet run never builds.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

# One link of a block's chain: (channels in, channels out, kernel size, stride).
Link = tuple[int, int, int, int]


class _ResidualBlock(nn.Module):
    """A chain of conv + batch norm links, described by the subclass's `chain`, and its shortcut."""

    expansion = 1  # the block's output channels per `channels` it is built with

    def __init__(self, in_channels: int, channels: int, stride: int = 1, width_per_group: int = 64):
        super().__init__()
        chain = self.chain(in_channels, channels, stride, width_per_group)
        for number, (c_in, c_out, kernel, link_stride) in enumerate(chain, start=1):
            # a padding of half the kernel keeps a stride-1 convolution's output the size of its input
            setattr(self, f"conv{number}", nn.Conv2d(c_in, c_out, kernel, link_stride, padding=kernel // 2, bias=False))
            setattr(self, f"bn{number}", nn.BatchNorm2d(c_out))
        self.length = len(chain)  # convolutions in the chain
        out_channels = channels * self.expansion
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                            nn.BatchNorm2d(out_channels))
        else:
            self.downsample = None  # the input is added as it is

    @staticmethod
    def chain(in_channels: int, channels: int, stride: int, width_per_group: int) -> list[Link]:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        out = x
        for number in range(1, self.length + 1):
            if number > 1:
                out = F.relu(out, inplace=True)
            out = getattr(self, f"bn{number}")(getattr(self, f"conv{number}")(out))
        out += x if self.downsample is None else self.downsample(x)
        return F.relu(out, inplace=True)


class BasicBlock(_ResidualBlock):
    """Two 3x3 convolutions of `channels` each."""

    expansion = 1

    @staticmethod
    def chain(in_channels: int, channels: int, stride: int, width_per_group: int) -> list[Link]:
        if width_per_group != 64:
            raise ValueError(f"a basic block has no inner width to widen (width_per_group {width_per_group}, not 64)")
        return [(in_channels, channels, 3, stride), (channels, channels, 3, 1)]


class Bottleneck(_ResidualBlock):
    """A 1x1 convolution into an inner width, a 3x3 at that width, a 1x1 out to 4 x `channels`. The inner
    width is `channels` scaled by width_per_group / 64 (wide ResNets widen only this)."""

    expansion = 4

    @staticmethod
    def chain(in_channels: int, channels: int, stride: int, width_per_group: int) -> list[Link]:
        inner = channels * width_per_group // 64
        return [(in_channels, inner, 1, 1), (inner, inner, 3, stride), (inner, channels * Bottleneck.expansion, 1, 1)]


class ResNetBase(nn.Module):
    """What every ResNet shares past its stem: stages of blocks and the forward pass.

    The subclass sets `inplanes` (the stem's channels) and `base_width` (a bottleneck's width_per_group),
    builds conv1, bn1, relu and maxpool (the stem), then layer1-layer4 with `_make_layer`, then avgpool
    and fc.
    """

    inplanes: int
    base_width: int = 64

    def _make_layer(self, block: type[_ResidualBlock], channels: int, count: int, stride: int = 1) -> nn.Sequential:
        """One stage: `count` blocks, the first with `stride`, all of `channels` (x the block's expansion
        out). `inplanes` follows the channels from one stage to the next."""
        blocks = []
        for index in range(count):
            blocks.append(block(self.inplanes, channels, stride if index == 0 else 1, self.base_width))
            self.inplanes = channels * block.expansion
        return nn.Sequential(*blocks)

    def forward(self, images: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))
