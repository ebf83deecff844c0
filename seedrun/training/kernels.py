"""How the distillation step runs on its device: the speed and exactness settings of issue 13 item 6,
kept out of the recipe so that distill.py reads as the algorithm.

Settings (the `distill` section; defaults keep what runs computed before these existed):

    sync_bn: false        true: under several processes the student's BatchNorm normalises with the
                          statistics of the global batch (torch's SyncBatchNorm on GPUs; GlobalBatchNorm
                          below on CPUs, where SyncBatchNorm refuses to run), so N ranks compute what one
                          process computes with the same global batch
    deterministic: true   true: deterministic kernels (torch.use_deterministic_algorithms with warn_only,
                          CUBLAS_WORKSPACE_CONFIG=:4096:8, cudnn.benchmark off): a resumed run is bitwise
                          the uninterrupted one as far as torch has deterministic CUDA kernels (the ops
                          without one warn). false: cudnn.benchmark on for speed; a resumed run is exact
                          in state (same step, data, queue) but not bitwise
    compile: false        true: torch.compile the student (opt-in: the first steps pay the compilation)

On CUDA the student and the teacher run channels_last (NHWC convolutions are the tensor-core path under
bf16), and the teacher's forward runs under torch.inference_mode (no autograd bookkeeping at all); its
outputs are only targets, so teacher_forward() returns them as ordinary tensors (an inference tensor
cannot be saved for the student's backward).
"""

from __future__ import annotations

import os
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


# ---- settings ------------------------------------------------------------------------------------

def configure(settings: dict[str, Any], device: torch.device) -> None:
    """Kernel choice for `distill.deterministic` (after loop.setup_torch, which it overrides on CUDA).

    CPU kernels are already deterministic at a fixed thread count, and use_deterministic_algorithms
    would only refuse a few CPU ops, so the switch is applied on CUDA, where it changes kernels."""
    if device.type != "cuda":
        return
    if settings.get("deterministic", True):
        # cuBLAS reads this when its handle is created: before the first matmul of the process
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # warn_only: a few ops have no deterministic CUDA kernel (ResNet's adaptive_avg_pool2d backward adds
        # atomically) and would otherwise raise in the first step; they warn, every other op is deterministic
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.deterministic = False


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on CUDA (cuDNN's fast NHWC convolutions); the default layout on CPUs, where the
    measured step did not get faster and bit-identical results with earlier runs are kept."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def prepare(module: nn.Module, device: torch.device) -> nn.Module:
    """The module on its device, in the device's memory format (parameters keep their identity)."""
    return module.to(device=device, memory_format=memory_format(device))


def as_input(images: Tensor, device: torch.device) -> Tensor:
    """A batch of images in the layout the networks were prepared for."""
    if images.dim() == 4 and device.type == "cuda":
        return images.contiguous(memory_format=torch.channels_last)
    return images


def teacher_forward(teacher: nn.Module, images: Tensor) -> Tensor:
    """The frozen teacher's output as a target: computed under inference_mode (no version counters, no
    graph), then copied out of inference mode so the loss's backward may save it."""
    with torch.inference_mode():
        out = teacher(images)
    return out.clone()


def maybe_compile(model: nn.Module, settings: dict[str, Any]) -> nn.Module:
    """torch.compile(model) when `compile: true`; the model itself otherwise (the default: compiling costs
    minutes on the first steps and is worth it only for long GPU runs)."""
    if not settings.get("compile", False):
        return model
    return torch.compile(model)


# ---- BatchNorm over the global batch ---------------------------------------------------------------

class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is the sum of every rank's gradient (each rank's output feeds its
    own loss). torch.distributed.nn.functional.all_reduce does the same but is deprecated in torch 2.x."""

    @staticmethod
    def forward(ctx, tensor: Tensor, group: Any) -> Tensor:
        ctx.group = group
        out = tensor.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm whose training-mode statistics are those of the global batch (every rank's samples).

    Why not torch.nn.SyncBatchNorm: its forward raises "SyncBatchNorm expected input tensor to be on GPU"
    for CPU tensors (torch 2.x), so the CPU/gloo path (tests, CPU clusters) needs its own. The statistics
    are combined with differentiable all-reduces (_AllReduceSum), two passes (mean, then the
    centred squares) rather than E[x^2] - mean^2, so the result matches one process's BatchNorm of the
    same global batch to float rounding. Its backward all-reduces the gradients of the statistics, which
    is what makes DDP's averaged gradient the gradient of the global batch's loss. Eval mode and one
    process: plain BatchNorm. State dict keys are BatchNorm's: checkpoints move between world sizes."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group: Any = None, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: Tensor) -> Tensor:
        group = self.process_group or (dist.group.WORLD if dist.is_available() and dist.is_initialized() else None)
        if not self.training or group is None or dist.get_world_size(group) == 1:
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x if x.dtype == torch.float64 else x.float()  # bf16/fp16 in fp32; a float64 run in float64
        count = torch.tensor([float(xf.numel() // xf.size(1))], dtype=torch.float64)
        dist.all_reduce(count, group=group)  # ranks may hold different numbers of samples
        n = count.item()
        mean = _AllReduceSum.apply(xf.sum(dims), group) / n
        centred = xf - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims), group) / n  # biased, as BatchNorm normalises
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked.item()
                self.running_mean.mul_(1 - factor).add_(mean.detach().to(self.running_mean.dtype), alpha=factor)
                unbiased = var.detach() * (n / max(n - 1, 1))  # running_var is unbiased, as in BatchNorm
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        return out.to(x.dtype)


def convert_sync_bn(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of `module` in place made to normalise over the global batch: SyncBatchNorm on
    CUDA, GlobalBatchNorm elsewhere, sharing the original parameters (an optimiser already holding them
    keeps working) and copies of the running buffers. Returns the module (replaced if it is one BN)."""
    group = None
    if device.type != "cuda" and dist.is_available() and dist.is_initialized():
        # a group of its own: the statistics' collectives never interleave with DDP's gradient buckets
        group = dist.new_group(backend="gloo")
    return _convert(module, device, group)


def _convert(module: nn.Module, device: torch.device, group: Any) -> nn.Module:
    if isinstance(module, _BatchNorm) and not isinstance(module, (nn.SyncBatchNorm, GlobalBatchNorm)):
        kind = nn.SyncBatchNorm if device.type == "cuda" else GlobalBatchNorm
        new = kind(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
                   process_group=group)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        return new.train(module.training)
    for name, child in module.named_children():
        module.add_module(name, _convert(child, device, group))
    return module
