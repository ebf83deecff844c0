"""The paper's backbones, in torchvision's layout so that official checkpoints load by key.

Every builder has the signature ``(*, small_images: bool, in_chans: int, width: int) -> (module, d)``;
the module maps (N, in_chans, H, W) images to (N, d) pooled features. No pretrained weights are ever
downloaded: every network starts from its random initialisation and official weights come in through
seedrun.models.teacher_formats.

``width`` is the base width, 64 in the paper:
- ResNets: the stem and first stage have ``width`` channels, stages double it (64-128-256-512), so
  d = 8 * width * expansion (512 for ResNet-18/34, 2048 for ResNet-50/101/152 at width 64).
- resnet50x2 (SimCLR/SwAV "R50x2"/"resnet50w2"): every channel of ResNet-50 doubled, i.e. a ResNet-50
  with base width 2 * width; d = 4096 at width 64. This is not torchvision's wide_resnet50_2, which
  widens only the bottleneck's inner 3x3 conv and keeps d = 2048.
- MobileNet-v3 / EfficientNet: torchvision's width multiplier = width / 64, so every channel, the
  feature dimension included, scales (d = make_divisible(1280 * width / 64, 8)); d = 1280 at width 64.

``small_images`` (28-32 px inputs): ResNets get a 3x3 stride-1 stem conv and no max-pool; MobileNet-v3 and
EfficientNet keep their 3x3 stem conv but with stride 1 instead of 2 (total stride 16 instead of 32).
``in_chans``: the stem conv takes this many channels (1 for grey images).
"""

from __future__ import annotations

from torch import nn

from seedrun.models.catalog import network_info
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
    def build(*, small_images: bool, in_chans: int, width: int) -> tuple[nn.Module, int]:
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


def _mobilenetv3_large(*, small_images: bool, in_chans: int, width: int) -> tuple[nn.Module, int]:
    """torchvision mobilenet_v3_large; the classifier keeps Linear(960, 1280) + Hardswish (+ its Dropout,
    as SEED's own MobileNet-v3 does) and drops the final Linear, so the output is the 1280-d feature."""
    from torchvision.models import mobilenetv3 as tv_mobilenetv3

    setting, last_channel = tv_mobilenetv3._mobilenet_v3_conf("mobilenet_v3_large", width_mult=_multiplier(width))
    net = tv_mobilenetv3.MobileNetV3(setting, last_channel)
    _replace_stem(net.features[0], small_images=small_images, in_chans=in_chans)
    net.classifier = nn.Sequential(*list(net.classifier.children())[:3])  # Linear, Hardswish, Dropout
    return net, last_channel


def _efficientnet(arch: str, depth_mult: float, dropout: float):
    def build(*, small_images: bool, in_chans: int, width: int) -> tuple[nn.Module, int]:
        from torchvision.models import efficientnet as tv_efficientnet

        setting, last_channel = tv_efficientnet._efficientnet_conf(
            arch, width_mult=_multiplier(width), depth_mult=depth_mult
        )
        net = tv_efficientnet.EfficientNet(setting, dropout, last_channel=last_channel)
        _replace_stem(net.features[0], small_images=small_images, in_chans=in_chans)
        d = net.classifier[-1].in_features
        net.classifier = nn.Identity()  # pooled features straight out
        return net, d

    return build


_register("mobilenetv3_large", _mobilenetv3_large)
_register("efficientnet_b0", _efficientnet("efficientnet_b0", depth_mult=1.0, dropout=0.2))
_register("efficientnet_b1", _efficientnet("efficientnet_b1", depth_mult=1.1, dropout=0.2))


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
