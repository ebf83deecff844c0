"""Should the mobile students come from timm? torchvision's reference MobileNet-v3-Large and
EfficientNet-B0/B1 (what seedrun.models.networks builds) against timm's `mobilenetv3_large_100`,
`efficientnet_b0`, `efficientnet_b1`: parameters (with the 1000-class classifier, the figure papers
quote, and without it, the backbone a student is) and forward + backward time on a batch at 224 px,
timm's time as the baseline measured in the same run. timm is imported here only: it is not a
dependency of seedrun (see README, Benchmarks).
Run: .venv/bin/pip install timm && .venv/bin/python benchmarks/networks.py
"""

from __future__ import annotations

import time

import torch
from torchvision import models as tv

PAIRS = [("MobileNet-v3-Large", tv.mobilenet_v3_large, "mobilenetv3_large_100"),
         ("EfficientNet-B0", tv.efficientnet_b0, "efficientnet_b0"),
         ("EfficientNet-B1", tv.efficientnet_b1, "efficientnet_b1")]
BATCH, SIZE, REPEAT = 8, 224, 3


def millions(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def step_seconds(model: torch.nn.Module, images: torch.Tensor) -> float:
    model.train()
    best = float("inf")
    for _ in range(REPEAT + 1):  # the first call warms the allocator up
        start = time.perf_counter()
        model(images).float().sum().backward()
        best = min(best, time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    return best


def main() -> None:
    import timm

    torch.manual_seed(0)
    images = torch.randn(BATCH, 3, SIZE, SIZE)
    print(f"{'network':<20} {'params tv / timm (M)':>22} {'backbone tv / timm (M)':>24} "
          f"{'fwd+bwd tv / timm (s)':>23} {'ratio':>6}")
    for name, torchvision_builder, timm_name in PAIRS:
        ours, theirs = torchvision_builder(), timm.create_model(timm_name)
        backbone_ours = millions(ours) - millions(ours.classifier[-1])
        backbone_theirs = millions(theirs) - millions(theirs.get_classifier())
        t_ours, t_theirs = step_seconds(ours, images), step_seconds(theirs, images)
        print(f"{name:<20} {millions(ours):>10.2f} / {millions(theirs):<9.2f} {backbone_ours:>12.2f} / "
              f"{backbone_theirs:<9.2f} {t_ours:>11.3f} / {t_theirs:<9.3f} {t_ours / t_theirs:>6.2f}x")


if __name__ == "__main__":
    main()
