"""Images/s of the stream loader against a plain torchvision pipeline, on ImageNet-sized JPEGs.

Writes a tree of SEEDRUN_BENCH_IMAGES (default 2,000) JPEGs of 500x375 (ImageNet's typical size, smooth
random content plus noise, quality 90: about 60 KB each) in 10 class folders, then:

1. decoders: ms per image for torchvision.io.decode_jpeg, PIL with `draft` at the size the stream loader
   asks for at 224 px (which is the full image: the smallest crop, scale 0.2, must keep 224 px), and PIL
   with draft at half scale (what it gives where crops are much smaller than the image);
2. loaders, W worker processes each (SEEDRUN_BENCH_WORKERS, default the CPUs minus one), batch 64, one
   MoCo-v2 view a image (SEED's distillation view), 224 px, after a warm-up of 3 batches:
   - seedrun: `data.loader=stream` through seedrun.data.loader.open_split (sharded sampler, per-sample
     seeded augmentation, uint8 through the workers, normalised in the training process);
   - baseline: torchvision.datasets.ImageFolder (PIL loader) with transforms.v2 (ToImage, the same
     RandomResizedCrop / ColorJitter / RandomGrayscale / GaussianBlur / flip, ToDtype, Normalize) and a
     shuffling DataLoader with the same W, batch and prefetch.
Each loader runs SEEDRUN_BENCH_ROUNDS times (default 2), interleaved, best kept. Prints images/s,
images/s per worker, and the ratio to the baseline measured in the same run.
Not a timed test. Run: .venv/bin/python benchmarks/loader.py
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import time
from pathlib import Path

IMAGES = int(os.environ.get("SEEDRUN_BENCH_IMAGES", 2000))
WORKERS = int(os.environ.get("SEEDRUN_BENCH_WORKERS", max(1, len(os.sched_getaffinity(0)) - 1)))
BATCH, SIZE, WARMUP = 64, 224, 3
ROUNDS = int(os.environ.get("SEEDRUN_BENCH_ROUNDS", 2))


def write_tree(root: Path, count: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    bases = []
    for _ in range(16):  # smooth colour fields (upsampled noise) that compress like photographs
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        bases.append(np.asarray(Image.fromarray(small).resize((500, 375), Image.BICUBIC), dtype=np.int16))
    for i in range(count):
        folder = root / "train" / f"n{i % 10:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        noise = rng.integers(-12, 13, (375, 500, 3), dtype=np.int16)
        pixels = np.clip(bases[i % len(bases)] + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{i:06d}.JPEG", quality=90)
    val = root / "val" / "n00000000"
    val.mkdir(parents=True, exist_ok=True)
    (val / "img.JPEG").write_bytes((root / "train" / "n00000000" / "img_000000.JPEG").read_bytes())


def time_decoders(files: list[Path]) -> dict[str, float]:
    import torch
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg

    torch.set_num_threads(1)
    raws = [f.read_bytes() for f in files]

    def pil(raw, draft=None):
        with Image.open(io.BytesIO(raw)) as image:
            if draft:
                image.draft("RGB", (draft, draft))
            return image.convert("RGB").load()

    cases = {
        "torchvision decode_jpeg": lambda raw: decode_jpeg(torch.frombuffer(bytearray(raw), dtype=torch.uint8),
                                                           mode=ImageReadMode.RGB),
        "PIL (draft asks >= 501 px for 224 px crops: full size)": lambda raw: pil(raw, 501),
        "PIL draft at 1/2 scale (asks >= 187 px: 64 px crops)": lambda raw: pil(raw, 187),
    }
    out = {}
    for name, decode in cases.items():
        decode(raws[0])
        start = time.perf_counter()
        for raw in raws:
            decode(raw)
        out[name] = (time.perf_counter() - start) / len(raws) * 1e3
    return out


def measure(loader, count_of) -> float:
    iterator = iter(loader)
    for _ in range(WARMUP):
        next(iterator)
    start, images = time.perf_counter(), 0
    for batch in iterator:
        images += count_of(batch)
    return images / (time.perf_counter() - start)


def seedrun_rate(root: Path) -> float:
    from seedrun.data.loader import open_split
    from seedrun.sweeps.compose import compose_config

    data = compose_config(["data=imagenet", f"data.root={root}", f"data.image_size={SIZE}", "data.loader=stream",
                           f"data.workers={WORKERS}"])["data"]
    train = open_split(data, "train", log=lambda _: None)
    batches = train.batches(0, BATCH, {0: None})
    return measure(batches.epoch(0), lambda batch: len(batch.view(0)))


def baseline_rate(root: Path) -> float:
    import torch
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    from seedrun.sweeps.compose import compose_config

    from seedrun.data.presets import resolve

    aug = resolve(compose_config(["data=imagenet"])["data"]["augment"], "mocov2")  # the recipe names a preset
    sigma = [s * SIZE / 224 for s in aug["blur_sigma"]]
    transform = v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop(SIZE, scale=tuple(aug["crop_scale"]), antialias=True),
        v2.RandomApply([v2.ColorJitter(*aug["jitter"])], p=aug["jitter_p"]),
        v2.RandomGrayscale(p=aug["grayscale_p"]),
        v2.RandomApply([v2.GaussianBlur(2 * int(3 * sigma[1] + 0.999) + 1, sigma=tuple(sigma))], p=aug["blur_p"]),
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    dataset = ImageFolder(str(root / "train"), transform=transform)
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, drop_last=True, num_workers=WORKERS,
                        pin_memory=torch.cuda.is_available(), persistent_workers=True, prefetch_factor=2,
                        worker_init_fn=lambda _: torch.set_num_threads(1))
    return measure(loader, lambda batch: len(batch[0]))


def main() -> None:
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "imagenet"
        os.environ["SEEDRUN_CACHE"] = str(Path(tmp) / "cache")
        started = time.perf_counter()
        write_tree(root, IMAGES)
        files = sorted((root / "train").glob("*/*.JPEG"))
        size_kb = sum(f.stat().st_size for f in files) / len(files) / 1024
        print(f"{IMAGES} JPEGs of 500x375 ({size_kb:.0f} KB on average) written in {time.perf_counter() - started:.0f} s; "
              f"{WORKERS} worker(s), batch {BATCH}, {SIZE} px, {os.cpu_count()} CPUs")
        print("decode, ms per image (one thread):")
        for name, ms in time_decoders(files[:200]).items():
            print(f"  {name:52s} {ms:6.2f}")
        base = ours = 0.0
        for _ in range(ROUNDS):  # interleaved, best of each: the machine may be shared
            base = max(base, baseline_rate(root))
            ours = max(ours, seedrun_rate(root))
        print(f"baseline (ImageFolder + PIL + transforms.v2): {base:7.1f} images/s  ({base / WORKERS:.1f} per worker)")
        print(f"seedrun stream loader:                       {ours:7.1f} images/s  ({ours / WORKERS:.1f} per worker)")
        print(f"ratio: {ours / base:.2f}x the baseline")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
