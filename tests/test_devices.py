"""The device and backend of a rank (issue 25 item 6): the CUDA device is local_rank % the GPUs the process
sees (Slurm may bind one GPU per task: then every task's is cuda:0), and NCCL is chosen only for a run whose
device is CUDA, never because the machine has GPUs."""

from __future__ import annotations

import torch

from seedrun.training import distributed


def test_the_cuda_device_is_the_local_rank_modulo_the_visible_gpus(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # Slurm bound one GPU to the task
    assert distributed.device_for(distributed.Ranks(5, 5, 8), torch.device("cuda")) == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)  # the task sees the node's 4
    assert distributed.device_for(distributed.Ranks(6, 2, 8), torch.device("cuda")) == torch.device("cuda", 2)
    assert distributed.device_for(distributed.Ranks(7, 7, 8), torch.device("cuda")) == torch.device("cuda", 3)
    assert chosen == [torch.device("cuda", 0), torch.device("cuda", 2), torch.device("cuda", 3)]
    # one process, or a CPU run: the device as asked
    assert distributed.device_for(distributed.SINGLE, torch.device("cuda")) == torch.device("cuda")
    assert distributed.device_for(distributed.Ranks(1, 1, 2), torch.device("cpu")) == torch.device("cpu")


def test_nccl_only_for_a_run_on_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU node
    assert distributed.backend_for(distributed.resolve_device("cpu")) == "gloo"
    assert distributed.backend_for(distributed.resolve_device("cuda")) == "nccl"
    assert distributed.backend_for(distributed.resolve_device("auto")) == "nccl"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.backend_for(distributed.resolve_device("auto")) == "gloo"
