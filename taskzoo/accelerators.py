"""Devices and accelerator set-up shared by the training loop, evaluation and sharded prediction."""

from __future__ import annotations

import os

import torch

from taskzoo.errors import LaunchError


def new_accelerator(**kwargs):
    """An Accelerator with these settings, even if an earlier call in this process used others.

    Accelerate keeps its settings in a process-wide singleton that refuses to change; a library is
    called many times per process, so the mixed-precision part is reset (the process group is kept).
    Refuses to run when several processes were launched but Accelerate does not see them (see below).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    accelerator = Accelerator(**kwargs)
    check_launch(accelerator)
    return accelerator


def check_launch(accelerator) -> None:
    """Several launched processes (WORLD_SIZE > 1) that Accelerate runs as one each would train N separate
    models into one output folder: refuse, saying how to launch on this machine."""
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world_size > 1 and accelerator.num_processes == 1:
        raise LaunchError(
            f"{world_size} processes were launched (WORLD_SIZE={world_size}), but Accelerate runs this one on its own "
            f"(distributed type {accelerator.distributed_type}), so each would work alone and they would all write "
            "the same output folder. On CPUs set ACCELERATE_USE_CPU=1 (ACCELERATE_USE_CPU=1 torchrun "
            "--nproc_per_node N ...), or launch with `accelerate launch --num_processes N ...` "
            "(add --cpu on a machine without GPUs).")


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def check_device(device: str | torch.device | None) -> None:
    """Refuse, in one line and before anything loads, a device torch cannot use here."""
    if device is None:
        return
    try:
        found = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={str(device)!r} is not a device torch knows: use 'cpu', 'cuda', 'cuda:1', "
                         "'mps', ...") from None
    if found.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r}, but torch {torch.__version__} sees no CUDA GPU here "
                         "(torch.cuda.is_available() is False): install a CUDA build of torch, or use 'cpu'.")
    if found.type == "cuda" and found.index is not None and found.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ValueError(f"device={str(device)!r}, but this machine has {count} GPU(s): cuda:0 to cuda:{count - 1}.")
    if found.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={str(device)!r}, but torch sees no Apple GPU (MPS) here; use 'cpu'.")
