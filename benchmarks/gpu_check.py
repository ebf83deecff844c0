"""One prepared GPU check (issue 13): images/s of a ResNet-50 -> ResNet-18 SEED distillation step at
224 px, bf16 autocast with the logits and softmax in fp32, channels_last, the teacher under
inference_mode, the student in DistributedDataParallel over one NCCL rank with the gathered-queue
update, against the bare loop over the same models and batch (teacher forward + student
forward/backward + SGD step).

    python benchmarks/gpu_check.py                 # on a GPU machine: prints the GPU and images/s
    python benchmarks/gpu_check.py --cpu-smoke     # anywhere: tiny sizes, gloo, 2 steps (it runs at all)
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cpu-smoke", action="store_true")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
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
