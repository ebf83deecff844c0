"""Prepared GPU checks.

Issue 13: images/s of a ResNet-50 -> ResNet-18 SEED distillation step at 224 px, bf16 autocast with the
logits and softmax in fp32, channels_last, the teacher under inference_mode, the student in
DistributedDataParallel over one NCCL rank with the gathered-queue update, against the bare loop over
the same models and batch (teacher forward + student forward/backward + SGD step).

Issue 22 (--augment): the GPU augmentation path against the CPU one on the same generated JPEGs
(500x375, MoCo-v2's views at 224 px, each image's parameters drawn as the stream loader draws them):
images/s a CPU core makes whole views (Pillow); images/s a core makes the GPU path's crops (decode,
crop, resize); images/s of the batched jitter, grayscale, blur, flip and normalisation on the device
(seedrun.data.batched_ops); images/s of batched nvJPEG decoding plus crops on the device
(seedrun.data.device_decode); and how far the device's views are from the CPU path's, in grey levels.

    python benchmarks/gpu_check.py                 # on a GPU machine: prints the GPU and images/s
    python benchmarks/gpu_check.py --cpu-smoke     # anywhere: tiny sizes, gloo, 2 steps (it runs at all)
    python benchmarks/gpu_check.py --augment [--cpu-smoke]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

from seedrun.losses import seed_loss  # noqa: E402
from seedrun.models.registry import create_network  # noqa: E402
from seedrun.training import distributed, kernels  # noqa: E402
from seedrun.training.queue import EmbeddingQueue  # noqa: E402


def networks(args, device):
    small = args.size < 64
    tb, th, _ = create_network(args.teacher, args.width, small, 3, 128)
    sb, sh, _ = create_network(args.student, args.width, small, 3, 128)
    # as seedrun.training.distill prepares them (kernels: channels_last on CUDA)
    teacher = kernels.prepare(nn.Sequential(tb, th), device).eval().requires_grad_(False)
    student = kernels.prepare(nn.Sequential(sb, sh), device)
    return teacher, student


def run(args, device, ddp: bool) -> float:
    torch.manual_seed(0)
    teacher, student = networks(args, device)
    model = DistributedDataParallel(student, broadcast_buffers=False,
                                    device_ids=[device.index] if device.type == "cuda" else None) if ddp else student
    optimizer = torch.optim.SGD(student.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
    queue = EmbeddingQueue(args.queue, 128, torch.Generator().manual_seed(0)).to(device)
    images = kernels.as_input(torch.randn(args.batch, 3, args.size, args.size, device=device), device)
    ranks = distributed.current()
    bf16 = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step():
        with bf16:
            z_t = F.normalize(kernels.teacher_forward(teacher, images).float(), dim=1)  # inference_mode
            z_s = F.normalize(model(images).float(), dim=1)
        loss = seed_loss(z_s, z_t, queue.embeddings, 0.2, 1e-3)  # fp32 logits and softmax
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ddp:  # what seedrun's step adds: the loss over ranks, the gathered keys, the stop check
            ranks.mean(loss)
            queue.push(distributed.concat_all_gather(z_t))
            ranks.agree(False, False)
        else:
            loss.item()
            queue.push(z_t)

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return args.steps * args.batch / (time.perf_counter() - started)


def _jpegs(count: int, width: int, height: int) -> list[bytes]:
    """Smooth colour fields plus noise, as benchmarks/loader.py writes, as JPEG bytes."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        small = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
        noise = rng.integers(-12, 13, (height, width, 3))
        buffer = io.BytesIO()
        Image.fromarray(np.clip(np.asarray(small, dtype=np.int16) + noise, 0, 255).astype(np.uint8)).save(
            buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def _rate(count: int, fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return count / (time.perf_counter() - started)


def augment_check(smoke: bool) -> None:
    """Issue 22's GPU path against the CPU path (see the module's docstring)."""
    import numpy as np

    from seedrun.data import pillow_ops as ops
    from seedrun.data.augment import normalize
    from seedrun.data.batched_ops import augment_batch
    from seedrun.data.device_decode import decode_crops
    from seedrun.data.draws import Drawer, seeded
    from seedrun.data.presets import resolve

    torch.set_num_threads(1)
    device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    count, batch, size, (width, height) = (16, 8, 32, (120, 90)) if smoke else (512, 256, 224, (500, 375))
    raws = _jpegs(count, width, height)
    drawer = Drawer(resolve({}, "mocov2"), size)
    params = []
    for i in range(count):
        with seeded(i):
            params.append(drawer.draw(width, height))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def view(i, augment):
        image = ops.open_image(raws[i])
        decoded = ops.decode(image, "RGB", ops.reduction(image, [(params[i], size)]))
        crop = ops.crop(decoded, params[i].box, size, (width, height))
        return ops.to_array(ops.augment(crop, params[i], False) if augment else crop)

    cpu_views, crops = [], []
    cpu_rate = _rate(count, lambda: cpu_views.extend(view(i, True) for i in range(count)), torch.device("cpu"))
    crop_rate = _rate(count, lambda: crops.extend(view(i, False) for i in range(count)), torch.device("cpu"))
    crops_t = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2)
    rows = torch.tensor([p.row() for p in params], dtype=torch.float64)
    pinned = crops_t.pin_memory() if device.type == "cuda" else crops_t
    out = []

    def on_device():
        out.clear()
        for start in range(0, count, batch):
            images = pinned[start:start + batch].to(device, non_blocking=True)
            out.append(normalize(augment_batch(images, rows[start:start + batch]), mean, std))

    on_device()  # warm-up: kernels, allocator
    device_rate = _rate(count, on_device, device)
    boxes = [p.box for p in params]

    def decode_on_device():
        for start in range(0, count, batch):
            augment_batch(decode_crops(raws[start:start + batch], boxes[start:start + batch], size, device),
                          rows[start:start + batch])

    decode_on_device()
    decode_rate = _rate(count, decode_on_device, device)
    device_views = (torch.cat([augment_batch(pinned[s:s + batch].to(device), rows[s:s + batch])
                               for s in range(0, count, batch)]) * 255).permute(0, 2, 3, 1).cpu().numpy()
    reference = np.stack([np.repeat(v, 3, axis=2) if v.shape[2] == 1 else v for v in cpu_views]).astype(float)
    difference = np.abs(device_views - reference)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; {count} JPEGs of {width}x{height}, MoCo-v2 views at {size} px, batch {batch}")
    print(f"CPU path, whole views on Pillow:              {cpu_rate:8.1f} images/s per core")
    print(f"GPU path, the workers' share (decode + crop): {crop_rate:8.1f} images/s per core")
    print(f"GPU path, batched augmentation + normalise:   {device_rate:8.1f} images/s on the device")
    print(f"GPU path with nvJPEG decode + crop on device: {decode_rate:8.1f} images/s on the device")
    print(f"device views against the CPU path's: {difference.mean():.3f} grey levels on average, "
          f"{(difference > 1.01).mean():.2%} of values more than one level off")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cpu-smoke", action="store_true")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--augment", action="store_true", help="the GPU augmentation path (issue 22)")
    args = parser.parse_args()
    if args.augment:
        augment_check(args.cpu_smoke)
        return
    args.teacher, args.student, args.width, args.queue = "resnet50", "resnet18", 64, 65536
    if args.cpu_smoke:
        args.batch, args.size, args.steps, args.warmup, args.width, args.queue = 4, 16, 2, 1, 8, 64
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu_smoke else "cpu")
    # distill.deterministic: false (cudnn.benchmark: speed, not bitwise resume), as a speed run would set it
    kernels.configure({"deterministic": False}, device)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    try:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        bare = run(args, device, ddp=False)
        seedrun = run(args, device, ddp=True)
        print(f"device: {name}; batch {args.batch} at {args.size} px, {args.teacher} -> {args.student}, bf16: "
              f"{device.type == 'cuda'}")
        print(f"bare loop: {bare:.1f} images/s")
        print(f"seedrun step (DDP, 1 rank, gathered queue, stop check): {seedrun:.1f} images/s "
              f"({bare / seedrun:.3f}x the bare loop's time)")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
