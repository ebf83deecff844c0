"""The paper's backbones: the ResNets in torchvision's layout, MobileNet-v3-Large and EfficientNet-B0/B1
as the official SEED code builds them, so that official checkpoints load by key.

Every builder has the signature ``(*, small_images, in_chans, width, bn="official", layout="official")
-> (module, d)``; the module maps (N, in_chans, H, W) images to (N, d) pooled features. No pretrained
weights are ever downloaded: every network starts from its random initialisation and official weights
come in through seedrun.models.teacher_formats.

``bn`` and ``layout`` are `student.bn` and `student.layout` (seedrun.models.catalog.STUDENT_BUILD):
"official" builds the official code's MobileNet-v3 (plain BatchNorm2d) and EfficientNet
(EfficientNet-PyTorch's, BN momentum 0.01, eps 1e-3, TF-same padding), "torchvision" torchvision's
networks and BN settings, as seedrun built them before issue 21. The two act independently, so the BN
alone can be swapped. Both codes build the ResNets alike.

``width`` is the base width, 64 in the paper:
- ResNets: the stem and first stage have ``width`` channels, stages double it (64-128-256-512), so
  d = 8 * width * expansion (512 for ResNet-18/34, 2048 for ResNet-50/101/152 at width 64).
- resnet50x2 (SimCLR/SwAV "R50x2"/"resnet50w2"): every channel of ResNet-50 doubled, i.e. a ResNet-50
  with base width 2 * width; d = 4096 at width 64. This is not torchvision's wide_resnet50_2, which
  widens only the bottleneck's inner 3x3 conv and keeps d = 2048.
- MobileNet-v3 / EfficientNet: width multiplier = width / 64, so every channel, the feature dimension
  included, scales (d = 1280 * width / 64 rounded to a multiple of 8); d = 1280 at width 64.

``small_images`` (28-32 px inputs): ResNets get a 3x3 stride-1 stem conv and no max-pool; MobileNet-v3 and
EfficientNet keep their 3x3 stem conv but with stride 1 instead of 2 (total stride 16 instead of 32).
``in_chans``: the stem conv takes this many channels (1 for grey images).
"""

from __future__ import annotations

from functools import partial
from math import ceil

import torch
import torch.nn.functional as F
from torch import nn

from seedrun.models.catalog import BN_SETTINGS, check_student_build, network_info
from seedrun.models.registry import register_network
from seedrun.models.resnet_blocks import BasicBlock, Bottleneck, ResNetBase

# torchvision itself is imported only where a MobileNet or EfficientNet is built: its package import
# costs a job seconds on 2 cores (seedrun.models.resnet_blocks says how many and why).


class ResNet(ResNetBase):
    """torchvision's ResNet with a base width (64 in the paper) and an optional small-image stem.

    Keys match torchvision's (conv1, bn1, layer1.0.conv1, ...), so official ResNet checkpoints load.
    ``width_per_group`` is torchvision's wide-ResNet knob (bottleneck inner width only); the paper's
    networks leave it at 64. The forward pass (torchvision's) returns the pooled (N, d) features: fc is
    an Identity.
    """

    def __init__(
        self,
        block,
        layers,
        *,
        width: int = 64,
        width_per_group: int = 64,
        small_images: bool = False,
        in_chans: int = 3,
    ):
        # torchvision's __init__ hard-codes 64-128-256-512, so build the same attributes here directly
        # (building the full-size network first and replacing it would cost seconds for ResNet-152).
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = width
        self.dilation = 1
        self.groups = 1
        self.base_width = width_per_group
        if small_images:
            self.conv1 = nn.Conv2d(in_chans, width, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_chans, width, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Identity()
        self.feature_dim = width * 8 * block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


def _resnet(block, layers, width_factor: int = 1):
    def build(*, small_images: bool, in_chans: int, width: int, bn: str = "official",
              layout: str = "official") -> tuple[nn.Module, int]:
        # Both codes build the ResNets alike (plain BatchNorm2d, torchvision's keys): the settings are only checked.
        for key, value in (("bn", bn), ("layout", layout)):
            if check_student_build(key, value):
                raise ValueError(check_student_build(key, value))
        net = ResNet(block, layers, width=width * width_factor, small_images=small_images, in_chans=in_chans)
        return net, net.feature_dim

    return build


def _register(name: str, builder) -> None:
    info = network_info(name)  # role and description live in the torch-free catalog
    register_network(name, info.role, info.description)(builder)


_register("resnet18", _resnet(BasicBlock, [2, 2, 2, 2]))
_register("resnet34", _resnet(BasicBlock, [3, 4, 6, 3]))
_register("resnet50", _resnet(Bottleneck, [3, 4, 6, 3]))
_register("resnet101", _resnet(Bottleneck, [3, 4, 23, 3]))
_register("resnet152", _resnet(Bottleneck, [3, 8, 36, 3]))
_register("resnet50x2", _resnet(Bottleneck, [3, 4, 6, 3], width_factor=2))

def _replace_stem(stem_block: nn.Sequential, *, small_images: bool, in_chans: int) -> None:
    """Swap the first conv of a torchvision Conv2dNormActivation stem for one with in_chans inputs and,
    for small images, stride 1. Same kernel, padding and initialisation as torchvision's."""
    old = stem_block[0]
    new = nn.Conv2d(
        in_chans,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=1 if small_images else old.stride,
        padding=old.padding,
        bias=old.bias is not None,
    )
    nn.init.kaiming_normal_(new.weight, mode="fan_out")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    stem_block[0] = new


def _multiplier(width: int) -> float:
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    return width / 64


def _round_channels(value: float, divisor: int = 8) -> int:
    """A channel count rounded to a multiple of 8, never more than 10% below `value`: the rule of the
    TensorFlow MobileNet and EfficientNet releases, which both official networks (and torchvision) follow."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


# MobileNet-v3-Large's inverted residual blocks (the paper's Table 1; the official code's cfgs):
# kernel, expansion, output channels, squeeze-excite, hard-swish (else ReLU), stride.
MOBILENET_V3_LARGE = (
    (3, 1, 16, False, False, 1), (3, 4, 24, False, False, 2), (3, 3, 24, False, False, 1),
    (5, 3, 40, True, False, 2), (5, 3, 40, True, False, 1), (5, 3, 40, True, False, 1),
    (3, 6, 80, False, True, 2), (3, 2.5, 80, False, True, 1), (3, 2.3, 80, False, True, 1),
    (3, 2.3, 80, False, True, 1), (3, 6, 112, True, True, 1), (3, 6, 112, True, True, 1),
    (5, 6, 160, True, True, 2), (5, 6, 160, True, True, 1), (5, 6, 160, True, True, 1),
)


class _SqueezeExcite(nn.Module):
    """Squeeze-excite on the pooled vector with Linear layers (keys fc.0, fc.2), as the official network has
    it; torchvision's uses 1x1 convolutions (fc1, fc2): the same function under other keys and shapes."""

    def __init__(self, channels: int):
        super().__init__()
        squeezed = _round_channels(channels // 4)
        self.fc = nn.Sequential(nn.Linear(channels, squeezed), nn.ReLU(inplace=True),
                                nn.Linear(squeezed, channels), nn.Hardsigmoid())

    def forward(self, x):
        return x * self.fc(x.mean((2, 3)))[:, :, None, None]


class _InvertedResidual(nn.Module):
    """One block, its layers in `conv` in the official order. Where the block expands, the official network
    applies squeeze-excite *before* the activation that follows the depthwise conv; torchvision after it."""

    def __init__(self, inp: int, hidden: int, out: int, kernel: int, stride: int, se: bool, hswish: bool, norm):
        super().__init__()
        act = nn.Hardswish if hswish else nn.ReLU
        depthwise = [nn.Conv2d(hidden, hidden, kernel, stride, (kernel - 1) // 2, groups=hidden, bias=False),
                     norm(hidden)]
        excite = _SqueezeExcite(hidden) if se else nn.Identity()  # Identity keeps the official indices
        project = [nn.Conv2d(hidden, out, 1, bias=False), norm(out)]
        if inp == hidden:  # no expansion (the first block): depthwise, activation, SE, projection
            layers = [*depthwise, act(inplace=True), excite, *project]
        else:
            layers = [nn.Conv2d(inp, hidden, 1, bias=False), norm(hidden), act(inplace=True),
                      *depthwise, excite, act(inplace=True), *project]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and inp == out

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class OfficialMobileNetV3(nn.Module):
    """MobileNet-v3-Large as the official SEED code builds it (keys features.N.conv.M, conv, classifier.0),
    without its `fc`: SEED replaces that with the student's projection head.

    Channels follow the official width rule (each block's expansion from its scaled input). One exception,
    for seedrun's narrow CPU students only: the 1280-d feature layer scales with the width here (as
    torchvision's does), where the official code keeps 1280 below a multiplier of 1; at width 64 they agree.
    """

    head_init_std = 0.01  # the official fc (the head's last Linear in SEED) starts from N(0, 0.01)

    def __init__(self, *, width_mult: float, small_images: bool, in_chans: int, norm):
        super().__init__()
        channels = _round_channels(16 * width_mult)
        stem = nn.Conv2d(in_chans, channels, 3, 1 if small_images else 2, 1, bias=False)
        layers: list[nn.Module] = [nn.Sequential(stem, norm(channels), nn.Hardswish(inplace=True))]
        for kernel, expansion, out, se, hswish, stride in MOBILENET_V3_LARGE:
            out, hidden = _round_channels(out * width_mult), _round_channels(channels * expansion)
            layers.append(_InvertedResidual(channels, hidden, out, kernel, stride, se, hswish, norm))
            channels = out
        self.features = nn.Sequential(*layers)
        self.conv = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), norm(hidden), nn.Hardswish(inplace=True))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = _round_channels(1280 * width_mult)
        self.classifier = nn.Sequential(nn.Linear(hidden, self.feature_dim), nn.Hardswish(inplace=True),
                                        nn.Dropout(0.2))
        for m in self.modules():  # the official initialisation
            if isinstance(m, nn.Conv2d):  # N(0, 2 / (k * k * out)): He's fan-out rule
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):  # the SE layers too, where torchvision's 1x1 convs get He's rule
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.classifier(self.avgpool(self.conv(self.features(x))).flatten(1))


# EfficientNet's stages as EfficientNet-PyTorch's block strings give them (squeeze-excite ratio 0.25 in
# all): repeats, kernel, stride, expansion, output channels.
EFFICIENTNET_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                       (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
# depth multiplier, the image size its padding is fixed for, dropout before fc (efficientnet_params)
EFFICIENTNET_PARAMS = {"efficientnet_b0": (1.0, 224, 0.2), "efficientnet_b1": (1.1, 240, 0.2)}
DROP_CONNECT = 0.2  # the last block's rate; block i of n drops its residual branch with 0.2 * i / n


class _SamePadConv2d(nn.Conv2d):
    """A convolution padded as TensorFlow's "SAME" for the image size the network is designed for, as the
    official network's (static padding: the odd pixel of the padding goes right and bottom). The padding
    is fixed when built, so any input size gets the padding the official network gives it."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, *, image_size: int, groups: int = 1):
        super().__init__(cin, cout, kernel, stride, padding=0, groups=groups, bias=False)
        total = max((ceil(image_size / stride) - 1) * stride + kernel - image_size, 0)
        self.same = (total // 2, total - total // 2) * 2  # left, right, top, bottom

    def forward(self, x):
        return super().forward(F.pad(x, self.same) if any(self.same) else x)


class _MBConv(nn.Module):
    """EfficientNet-PyTorch's MBConvBlock, with its keys (_expand_conv, _bn0, _depthwise_conv, _bn1,
    _se_reduce, _se_expand, _project_conv, _bn2); swish is SiLU."""

    def __init__(self, inp: int, out: int, kernel: int, stride: int, expansion: int, *, image_size: int, norm,
                 drop: float):
        super().__init__()
        hidden = inp * expansion
        if expansion != 1:
            self._expand_conv = nn.Conv2d(inp, hidden, 1, bias=False)
            self._bn0 = norm(hidden)
        self._depthwise_conv = _SamePadConv2d(hidden, hidden, kernel, stride, image_size=image_size, groups=hidden)
        self._bn1 = norm(hidden)
        squeezed = max(1, int(inp * 0.25))  # from the block's input, not its expanded width
        self._se_reduce = nn.Conv2d(hidden, squeezed, 1)
        self._se_expand = nn.Conv2d(squeezed, hidden, 1)
        self._project_conv = nn.Conv2d(hidden, out, 1, bias=False)
        self._bn2 = norm(out)
        self.residual, self.drop = stride == 1 and inp == out, drop

    def forward(self, x):
        y = F.silu(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        y = F.silu(self._bn1(self._depthwise_conv(y)))
        y = y * torch.sigmoid(self._se_expand(F.silu(self._se_reduce(y.mean((2, 3), keepdim=True)))))
        y = self._bn2(self._project_conv(y))
        if not self.residual:
            return y
        if self.training and self.drop:  # drop connect: a whole sample's branch, the rest scaled up
            keep = torch.empty(y.shape[0], 1, 1, 1, dtype=y.dtype, device=y.device).bernoulli_(1 - self.drop)
            y = y * keep / (1 - self.drop)
        return x + y


class OfficialEfficientNet(nn.Module):
    """EfficientNet-B0/B1 as the official SEED code builds them (EfficientNet-PyTorch 0.7: keys _conv_stem,
    _bn0, _blocks.N.*, _conv_head, _bn1), without `fc`. Its output is the pooled 1280-d feature after
    the official Dropout(0.2), the input of the student's projection head. PyTorch's default
    initialisation, as the official network has no initialiser of its own."""

    def __init__(self, arch: str, *, width_mult: float, small_images: bool, in_chans: int, norm):
        super().__init__()
        depth, size, dropout = EFFICIENTNET_PARAMS[arch]
        channels, stride = _round_channels(32 * width_mult), 1 if small_images else 2
        self._conv_stem = _SamePadConv2d(in_chans, channels, 3, stride, image_size=size)
        self._bn0 = norm(channels)
        size = ceil(size / stride)
        plan = [(ceil(depth * repeats), *rest) for repeats, *rest in EFFICIENTNET_STAGES]
        total, blocks = sum(p[0] for p in plan), []
        for repeats, kernel, stride, expansion, out in plan:
            out = _round_channels(out * width_mult)
            for i in range(repeats):
                step = stride if i == 0 else 1
                blocks.append(_MBConv(channels, out, kernel, step, expansion, image_size=size, norm=norm,
                                      drop=DROP_CONNECT * len(blocks) / total))
                channels, size = out, ceil(size / step)
        self._blocks = nn.ModuleList(blocks)
        self.feature_dim = _round_channels(1280 * width_mult)
        self._conv_head = nn.Conv2d(channels, self.feature_dim, 1, bias=False)
        self._bn1 = norm(self.feature_dim)
        self._dropout = nn.Dropout(dropout)

    @property
    def features(self) -> tuple:
        """Stem, blocks and head in torchvision's order (features[0][0] is the stem conv), for code that
        walks a torchvision EfficientNet. Not a module: it adds no keys."""
        return ((self._conv_stem, self._bn0), *self._blocks, (self._conv_head, self._bn1))

    def forward(self, x):
        x = F.silu(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self._dropout(F.silu(self._bn1(self._conv_head(x))).mean((2, 3)))


def _norm(family: str, bn: str):
    """The BatchNorm2d constructor of `student.bn` for this family (catalog.BN_SETTINGS)."""
    problem = check_student_build("bn", bn)
    if problem:
        raise ValueError(problem)
    momentum, eps = BN_SETTINGS[family][bn]
    return partial(nn.BatchNorm2d, momentum=momentum, eps=eps)


def _check_layout(layout: str) -> None:
    problem = check_student_build("layout", layout)
    if problem:
        raise ValueError(problem)


def _mobilenetv3_large(*, small_images: bool, in_chans: int, width: int, bn: str = "official",
                       layout: str = "official") -> tuple[nn.Module, int]:
    """The output is the classifier's 1280-d Linear + Hardswish (+ Dropout): the official student's feature
    layer, the input of its `fc` projection head. layout=official: OfficialMobileNetV3;
    layout=torchvision: torchvision's mobilenet_v3_large without its last Linear."""
    _check_layout(layout)
    norm = _norm("mobilenet", bn)
    if layout == "official":
        net = OfficialMobileNetV3(width_mult=_multiplier(width), small_images=small_images, in_chans=in_chans,
                                  norm=norm)
        return net, net.feature_dim
    from torchvision.models import mobilenetv3 as tv_mobilenetv3

    setting, last_channel = tv_mobilenetv3._mobilenet_v3_conf("mobilenet_v3_large", width_mult=_multiplier(width))
    net = tv_mobilenetv3.MobileNetV3(setting, last_channel, norm_layer=norm)
    _replace_stem(net.features[0], small_images=small_images, in_chans=in_chans)
    net.classifier = nn.Sequential(*list(net.classifier.children())[:3])  # Linear, Hardswish, Dropout
    return net, last_channel


def _efficientnet(arch: str, depth_mult: float, dropout: float):
    def build(*, small_images: bool, in_chans: int, width: int, bn: str = "official",
              layout: str = "official") -> tuple[nn.Module, int]:
        """layout=official: EfficientNet-PyTorch's network as the official code uses it, output the pooled
        1280-d features after its Dropout (the input of `fc`). layout=torchvision: torchvision's, classifier
        (Dropout and Linear) removed, as seedrun built it before issue 21."""
        _check_layout(layout)
        norm = _norm("efficientnet", bn)
        if layout == "official":
            net = OfficialEfficientNet(arch, width_mult=_multiplier(width), small_images=small_images,
                                       in_chans=in_chans, norm=norm)
            return net, net.feature_dim
        from torchvision.models import efficientnet as tv_efficientnet

        setting, last_channel = tv_efficientnet._efficientnet_conf(
            arch, width_mult=_multiplier(width), depth_mult=depth_mult
        )
        net = tv_efficientnet.EfficientNet(setting, dropout, last_channel=last_channel, norm_layer=norm)
        _replace_stem(net.features[0], small_images=small_images, in_chans=in_chans)
        d = net.classifier[-1].in_features
        net.classifier = nn.Identity()  # pooled features straight out
        return net, d

    return build


_register("mobilenetv3_large", _mobilenetv3_large)
_register("efficientnet_b0", _efficientnet("efficientnet_b0", depth_mult=1.0, dropout=0.2))
_register("efficientnet_b1", _efficientnet("efficientnet_b1", depth_mult=1.1, dropout=0.2))


def without_dropout(net: nn.Module) -> nn.Module:
    """`net` with its dropout and drop connect (stochastic depth) off, in place: a student-alone run's
    `baseline.dropout: false`. They are ImageNet classification's regularisers, kept by the official
    students; a narrow network learning alone by MoCo-v2 at CPU scale learns less with them (README)."""
    from torchvision.ops import StochasticDepth

    for module in net.modules():
        if isinstance(module, (nn.Dropout, StochasticDepth)):
            module.p = 0.0
        elif isinstance(module, _MBConv):
            module.drop = 0.0
        elif hasattr(module, "drop_prob"):  # timm's DropPath
            module.drop_prob = 0.0
    return net


def timm_backbone(arch: str, *, in_chans: int) -> tuple[nn.Module, int]:
    """Any timm architecture as a backbone, from `timm/NAME[:key=value,...]` (seedrun.models.catalog.
    parse_timm_arch): timm.create_model(NAME, pretrained=False, num_classes=0, **keywords) outputs its pooled
    pre-logits features. Never pretrained: a run starts from its seed, as the paper's students do, and
    nothing is downloaded. d is what the forward pass returns: head_hidden_size where timm's head has a
    layer before the classifier (MobileNetV4's 1280 after 960 channels), num_features elsewhere."""
    import timm  # imported only where a timm network is built: it imports torchvision and its ops

    from seedrun.models.catalog import parse_timm_arch

    name, kwargs = parse_timm_arch(arch)
    net = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans, **kwargs)
    return net, int(getattr(net, "head_hidden_size", None) or net.num_features)
