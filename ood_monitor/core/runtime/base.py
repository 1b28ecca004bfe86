"""One inference interface for every backend (torch, ONNX Runtime, TensorRT) and the factory that builds
them. A backend a machine cannot run raises `BackendUnavailable` with one line naming the parameter to
change, so a node logs an actionable sentence instead of an import traceback."""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

KINDS = ("torch", "onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
DEVICES = ("cpu", "cuda")


class BackendUnavailable(RuntimeError):
    """This backend / device / precision cannot run here; the message names the parameter to change."""


class InferenceBackend(ABC):
    """A compiled model: numpy arrays in (batch first), a tuple of float32 numpy arrays out."""

    name: str = ""
    precision: str = "fp32"
    device: str = "cpu"

    @abstractmethod
    def run(self, x: np.ndarray, *extra: np.ndarray) -> tuple[np.ndarray, ...]:
        """Outputs for inputs `x` (and further graph inputs, e.g. dropout masks), in graph order."""

    def __call__(self, x: np.ndarray, *extra: np.ndarray) -> tuple[np.ndarray, ...]:
        return self.run(x, *extra)

    def describe(self) -> str:
        return f"{self.name} {self.precision} on {self.device}"


def check_choice(parameter: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise BackendUnavailable(f"{parameter} {value!r} is unknown: set parameter {parameter} to one of "
                                 f"{', '.join(allowed)}")
    return value


def device_kind(device: str) -> str:
    """'cuda:1' -> 'cuda' (only the kind decides what a backend supports)."""
    return check_choice("device", device.split(":", 1)[0], DEVICES)


def make_backend(kind: str, model: Any, *, device: str = "cpu", precision: str = "fp32", threads: int = 0,
                 cache_dir: str | Path | None = None, calibration: np.ndarray | None = None,
                 max_batch: int = 64) -> InferenceBackend:
    """Build a backend. `model` is an nn.Module for torch and an ONNX file (path or bytes) for
    onnxruntime / tensorrt. `threads` (0: library default) sets CPU threads; `cache_dir` is TensorRT's
    engine cache; `calibration` (N, ...) feeds TensorRT's int8 calibrator; `max_batch` bounds its
    dynamic batch profile (MC dropout runs the tail on a batch of mc_samples rows)."""
    check_choice("backend", kind, KINDS)
    check_choice("precision", precision, PRECISIONS)
    device_kind(device)
    if kind == "torch":
        from .torch_backend import TorchBackend

        return TorchBackend(model, device=device, precision=precision, threads=threads)
    if kind == "onnxruntime":
        from .onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model, device=device, precision=precision, threads=threads)
    from .tensorrt_backend import TensorRTBackend

    return TensorRTBackend(model, device=device, precision=precision, cache_dir=cache_dir,
                           calibration=calibration, max_batch=max_batch)
