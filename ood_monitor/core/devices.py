"""Where a training run's model lives: `--device` of `train vae|dcae|dit|ddpm`.

Why one function: every trainer refuses a device this machine cannot train on before it reads a frame,
with the same sentence, and batches and noise stay drawn on the CPU (the same data per step on either
device), so a GPU run differs from a CPU run by floating-point order only.
"""
from __future__ import annotations

import torch


def training_device(name: str, engine: str = "local") -> torch.device:
    """The torch device of `--device`, refused with the reason when this machine cannot train there, or
    when `engine` (`--engine`: anything but local is data-parallel CPU workers) cannot use it."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {name!r}")
    if engine != "local" and device.type != "cpu":
        raise ValueError(f"--engine {engine} trains on CPU workers: leave --device at cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} but torch finds no CUDA GPU here: train with --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {name} but torch sees {torch.cuda.device_count()} CUDA GPU(s)")
    return device
