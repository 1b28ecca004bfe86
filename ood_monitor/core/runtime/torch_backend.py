"""torch backend: the reference every other backend is checked against; CPU or CUDA, fp32 or fp16
(fp16 only on CUDA: CPU half kernels are slow emulations, not a deployment target)."""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from .base import BackendUnavailable, InferenceBackend, device_kind


def to_outputs(out: object) -> tuple[np.ndarray, ...]:
    """A module's tensor or tuple of tensors -> tuple of float32 numpy arrays."""
    items = out if isinstance(out, (tuple, list)) else (out,)
    return tuple(t.detach().float().cpu().numpy() for t in items)


class TorchBackend(InferenceBackend):
    name = "torch"

    def __init__(self, module: nn.Module, device: str = "cpu", precision: str = "fp32", threads: int = 0) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"torch backend needs an nn.Module, got {type(module).__name__}")
        if precision == "int8":
            raise BackendUnavailable("backend 'torch' runs no int8 models (ONNX Runtime does): set parameter "
                                     "backend to onnxruntime or precision to fp32")
        kind = device_kind(device)
        if kind == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable(f"device {device!r} requested but torch sees no CUDA GPU: "
                                     "set parameter device to cpu")
        if precision == "fp16" and kind != "cuda":
            raise BackendUnavailable("precision 'fp16' is a GPU precision: set parameter device to cuda or "
                                     "precision to fp32")
        if threads > 0:
            torch.set_num_threads(threads)
        self.precision, self.device = precision, device
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self.module = copy.deepcopy(module).to(device=device, dtype=self.dtype).eval()

    @torch.inference_mode()
    def run(self, x: np.ndarray, *extra: np.ndarray) -> tuple[np.ndarray, ...]:
        args = [torch.as_tensor(np.asarray(a)).to(self.device, self.dtype) for a in (x, *extra)]
        return to_outputs(self.module(*args))
