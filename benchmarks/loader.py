"""Images/s of the stream loader against the official MoCo-v2 / SEED pipeline and a transforms.v2 one.

Writes a tree of SEEDRUN_BENCH_IMAGES (default 2,000) JPEGs of 500x375 (ImageNet's typical size, smooth
random content plus noise, quality 90) in 10 class folders, then, at 224 px, one MoCo-v2 view an image
(SEED's distillation view):

1. a profile: ms per image of each stage (read, decode, crop + resize, colour jitter, grayscale, blur,
   flip, hand-off), one thread, each pipeline's stages called one by one on the same images with the
   same seed per image (so the official pipeline and the stream loader make the same views);
2. loaders, W worker processes each (SEEDRUN_BENCH_WORKERS, default the CPUs minus one), batch 64, after
   a warm-up of 3 batches, SEEDRUN_BENCH_ROUNDS rounds (default 6) interleaved, best of each kept (the
   transforms.v2 loader, twice as slow and not the one to beat, in the first 2 rounds only):
   - official: torchvision ImageFolder (PIL loader) + the official code's transforms on PIL images
     (RandomResizedCrop(224, scale 0.2-1), RandomApply(ColorJitter(0.4, 0.4, 0.4, 0.1), p 0.8),
     RandomGrayscale(0.2), RandomApply(MoCo's GaussianBlur: PIL's filter, sigma U(0.1, 2)), p 0.5),
     RandomHorizontalFlip, ToTensor, Normalize), a shuffling DataLoader: the pipeline to beat;
   - v2: the same on tensors with torchvision.transforms.v2 (ToImage first, GaussianBlur's sampled
     kernel), the pipeline the stream loader used to be;
   - seedrun: `data.loader=stream` through seedrun.data.loader.open_split (sharded sampler, per-sample
     seeded draws, Pillow kernels, uint8 through the workers, normalised in the training process).
The last line is the stream loader's ratio to the official pipeline, e.g. "... 1.40x the official ...".
Not a timed test. Run: .venv/bin/python benchmarks/loader.py
"""

from __future__ import annotations

import io
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

IMAGES = int(os.environ.get("SEEDRUN_BENCH_IMAGES", 2000))
WORKERS = int(os.environ.get("SEEDRUN_BENCH_WORKERS", max(1, len(os.sched_getaffinity(0)) - 1)))
ROUNDS = int(os.environ.get("SEEDRUN_BENCH_ROUNDS", 6))
PROFILED = int(os.environ.get("SEEDRUN_BENCH_PROFILED", 200))
BATCH, SIZE, WARMUP = 64, 224, 3
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
STAGES = ("read", "decode", "crop+resize", "jitter", "grayscale", "blur", "flip", "hand-off")


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


class MocoBlur:
    """MoCo's GaussianBlur (moco/loader.py), which SEED's mocov2_aug uses: PIL's filter, sigma drawn with
    Python's random.uniform."""

    def __init__(self, sigma=(0.1, 2.0)):
        self.sigma = sigma

    def __call__(self, image):
        from PIL import ImageFilter

        return image.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))


def official_stages() -> dict:
    """The official mocov2_aug, stage by stage (torchvision transforms on PIL images)."""
    from torchvision import transforms as T

    return {"crop+resize": T.RandomResizedCrop(SIZE, scale=(0.2, 1.0)),
            "jitter": T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            "grayscale": T.RandomGrayscale(p=0.2), "blur": T.RandomApply([MocoBlur()], p=0.5),
            "flip": T.RandomHorizontalFlip(), "hand-off": T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])}


def v2_stages() -> dict:
    import torch
    from torchvision.transforms import v2

    return {"decode": v2.ToImage(), "crop+resize": v2.RandomResizedCrop(SIZE, scale=(0.2, 1.0), antialias=True),
            "jitter": v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            "grayscale": v2.RandomGrayscale(p=0.2),
            "blur": v2.RandomApply([v2.GaussianBlur(13, sigma=(0.1, 2.0))], p=0.5), "flip": v2.RandomHorizontalFlip(),
            "hand-off": v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])}


def profile(files: list[Path]) -> dict[str, dict[str, float]]:
    """ms per image of each stage, averaged over every image (a stage drawn for half the images costs
    half its time here), one thread. The hand-off includes copying the view into its batch."""
    import numpy as np
    import torch
    from PIL import Image

    from seedrun.data import pillow_ops as ops
    from seedrun.data.draws import Drawer, seeded
    from seedrun.data.presets import resolve

    torch.set_num_threads(1)
    totals = {name: dict.fromkeys(STAGES, 0.0) for name in ("official", "v2", "seedrun")}
    drawer, official, tensor = Drawer(resolve({}, "mocov2"), SIZE), official_stages(), v2_stages()
    batch = {"official": torch.empty(3, SIZE, SIZE), "v2": torch.empty(3, SIZE, SIZE),
             "seedrun": np.empty((SIZE, SIZE, 3), np.uint8)}
    reduced = 0

    def timed(name, stage, fn, *args):  # CPU time of this (single-threaded) process: a shared machine's
        started = time.process_time()  # other work does not count
        out = fn(*args)
        totals[name][stage] += time.process_time() - started
        return out

    for i, path in enumerate(files):
        for name in ("official", "v2", "seedrun"):
            raw = timed(name, "read", path.read_bytes)
            torch.manual_seed(i)  # the same draws for the three: the same crops, factors and coins
            random.seed(i)
            if name == "seedrun":
                image = timed(name, "decode", ops.open_image, raw)
                with seeded(i):
                    params = timed(name, "decode", drawer.draw, *image.size)
                d = ops.reduction(image, [(params, SIZE)])
                reduced += d > 1
                full = image.size
                image = timed(name, "decode", ops.decode, image, "RGB", d)
                image = timed(name, "crop+resize", ops.crop, image, params.box, SIZE, full)
                image = timed(name, "jitter", ops.jitter, image, params)
                for stage, op in (("grayscale", ops.grayscale), ("blur", ops.blur), ("flip", ops.flip)):
                    image = timed(name, stage, op, image, params)
                timed(name, "hand-off", np.copyto, batch[name], timed(name, "hand-off", ops.to_array, image))
                continue
            image = timed(name, "decode", lambda r: Image.open(io.BytesIO(r)).convert("RGB"), raw)
            stages = official if name == "official" else tensor
            for stage in STAGES[1:]:
                if stage in stages:
                    image = timed(name, stage, stages[stage], image)
            timed(name, "hand-off", batch[name].copy_, image)
    out = {name: {stage: t / len(files) * 1e3 for stage, t in stages.items()} for name, stages in totals.items()}
    out["seedrun"]["reduced"] = reduced / len(files)
    return out


def _cpu_seconds() -> tuple[float, dict[str, float]]:
    """CPU time of this process, and of each of its child processes alive now (the loaders' workers)."""
    tick, me, out = os.sysconf("SC_CLK_TCK"), str(os.getpid()), {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone
            continue
        if fields[1] == me:  # the parent's pid
            out[entry.name] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return time.process_time(), out


def _cpu_since(before: tuple[float, dict[str, float]]) -> float:
    """CPU seconds since `before` of this process and of the children alive at both ends (a loader of an
    earlier round whose workers end meanwhile takes its time with it, and did no work here)."""
    own, children = _cpu_seconds()
    return own - before[0] + sum(cpu - before[1].get(pid, 0.0) for pid, cpu in children.items())


def measure(loader, count_of) -> tuple[float, float]:
    """images/s and CPU ms per image (the workers' and this process's: robust when the machine is shared)."""
    iterator = iter(loader)
    for _ in range(WARMUP):
        next(iterator)
    start, cpu, images = time.perf_counter(), _cpu_seconds(), 0
    for batch in iterator:
        images += count_of(batch)
    return images / (time.perf_counter() - start), _cpu_since(cpu) / images * 1e3


def _set_threads(_worker: int) -> None:
    import torch

    torch.set_num_threads(1)


def folder_rate(root: Path, transform) -> tuple[float, float]:
    import torch
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    loader = DataLoader(ImageFolder(str(root / "train"), transform=transform), batch_size=BATCH, shuffle=True,
                        drop_last=True, num_workers=WORKERS, pin_memory=torch.cuda.is_available(),
                        persistent_workers=True, prefetch_factor=2, worker_init_fn=_set_threads)
    return measure(loader, lambda batch: len(batch[0]))


def official_rate(root: Path) -> tuple[float, float]:
    from torchvision import transforms as T

    return folder_rate(root, T.Compose(list(official_stages().values())))


def v2_rate(root: Path) -> tuple[float, float]:
    from torchvision.transforms import v2

    stages = v2_stages()
    return folder_rate(root, v2.Compose([stages[stage] for stage in STAGES if stage in stages]))


def seedrun_rate(root: Path) -> tuple[float, float]:
    from seedrun.data.loader import open_split
    from seedrun.sweeps.compose import compose_config

    data = compose_config(["data=imagenet", f"data.root={root}", f"data.image_size={SIZE}", "data.loader=stream",
                           f"data.workers={WORKERS}"])["data"]
    train = open_split(data, "train", log=lambda _: None, method="mocov2")
    batches = train.batches(0, BATCH, {0: None})  # held: its workers must outlive the epoch to be counted
    return measure(batches.epoch(0), lambda batch: len(batch.view(0)))


def time_decoders(files: list[Path]) -> dict[str, float]:
    import torch
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg

    raws = [f.read_bytes() for f in files]

    def pil(raw, d=1):
        with Image.open(io.BytesIO(raw)) as image:
            if d > 1:
                image.draft("RGB", (image.size[0] // d, image.size[1] // d))
            return image.convert("RGB").load()

    cases = {"PIL (what the official code and the stream loader decode with)": pil,
             "PIL draft 1/2 (where every crop is >= 448 px)": lambda raw: pil(raw, 2),
             "PIL draft 1/4 (where every crop is >= 896 px)": lambda raw: pil(raw, 4),
             "torchvision.io.decode_jpeg": lambda raw: decode_jpeg(torch.frombuffer(bytearray(raw), dtype=torch.uint8),
                                                                   mode=ImageReadMode.RGB)}
    out = {}
    for name, decode in cases.items():
        decode(raws[0])
        start = time.perf_counter()
        for raw in raws:
            decode(raw)
        out[name] = (time.perf_counter() - start) / len(raws) * 1e3
    return out


def print_profile(stages: dict[str, dict[str, float]]) -> None:
    names = ("official", "v2", "seedrun")
    print(f"per-stage profile, CPU ms per image, one thread, {PROFILED} images (official = ImageFolder + torchvision "
          f"transforms on PIL; v2 = transforms.v2 on tensors; seedrun = the stream loader's worker):")
    print(f"  {'stage':12s}" + "".join(f"{name:>10s}" for name in names))
    for stage in STAGES:
        print(f"  {stage:12s}" + "".join(f"{stages[name][stage]:10.3f}" for name in names))
    totals = {name: sum(stages[name][stage] for stage in STAGES) for name in names}
    print(f"  {'total':12s}" + "".join(f"{totals[name]:10.3f}" for name in names))
    print(f"  {'images/s':12s}" + "".join(f"{1e3 / totals[name]:10.1f}" for name in names))
    print(f"  (the stream loader decoded {stages['seedrun']['reduced']:.0%} of these images at a reduced DCT scale: "
          f"a 224 px crop of a 500x375 image rarely leaves room for 1/2)")
    crops = sum(stages["seedrun"][stage] for stage in ("read", "decode", "crop+resize", "hand-off"))
    print(f"  with data.augment_on=gpu the workers stop after the crop: {crops:.3f} CPU ms an image "
          f"({1e3 / crops:.0f} images/s a core; the device does the rest)")


def main() -> None:
    import torch

    torch.set_num_threads(1)
    if IMAGES < (WARMUP + 2) * BATCH:  # the warm-up batches are not timed
        sys.exit(f"SEEDRUN_BENCH_IMAGES={IMAGES}: expected at least {(WARMUP + 2) * BATCH} (3 warm-up batches "
                 f"of {BATCH} and 2 timed)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "imagenet"
        os.environ["SEEDRUN_CACHE"] = str(Path(tmp) / "cache")
        started = time.perf_counter()
        write_tree(root, IMAGES)
        files = sorted((root / "train").glob("*/*.JPEG"))
        size_kb = sum(f.stat().st_size for f in files) / len(files) / 1024
        print(f"{IMAGES} JPEGs of 500x375 ({size_kb:.0f} KB on average) written in {time.perf_counter() - started:.0f} s; "
              f"{WORKERS} worker(s), batch {BATCH}, {SIZE} px, {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}")
        print("decode, ms per image (one thread):")
        for name, ms in time_decoders(files[:100]).items():
            print(f"  {name:66s} {ms:6.2f}")
        print_profile(profile(files[:PROFILED]))
        rates, cpu = dict.fromkeys(("official", "v2", "seedrun"), 0.0), dict.fromkeys(("official", "v2", "seedrun"), 1e9)
        for round_ in range(ROUNDS):  # interleaved, best of each: the machine may be shared
            for name, rate in (("official", official_rate), ("v2", v2_rate), ("seedrun", seedrun_rate)):
                if name == "v2" and round_ >= 2:
                    continue
                images_s, cpu_ms = rate(root)
                rates[name], cpu[name] = max(rates[name], images_s), min(cpu[name], cpu_ms)
        labels = {"official": "official pipeline (ImageFolder + torchvision transforms on PIL + PIL's blur)",
                  "v2": "transforms.v2 on tensors (ImageFolder + PIL decode)", "seedrun": "seedrun stream loader"}
        print(f"loaders, {WORKERS} worker(s), best of {ROUNDS} interleaved rounds (transforms.v2: "
              f"{min(ROUNDS, 2)}); CPU ms an image counts the "
              f"workers and the training process (which normalises the stream loader's uint8 batches):")
        for name, label in labels.items():
            print(f"  {label:76s} {rates[name]:7.1f} images/s ({rates[name] / WORKERS:.1f} per worker), "
                  f"{cpu[name]:5.2f} CPU ms an image")
        print(f"CPU time an image, official pipeline over stream loader: {cpu['official'] / cpu['seedrun']:.2f}")
        print(f"stream loader against transforms.v2: {rates['seedrun'] / rates['v2']:.2f}x")
        print(f"stream loader against the official MoCo-v2 PIL pipeline: {rates['seedrun'] / rates['official']:.2f}x")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
