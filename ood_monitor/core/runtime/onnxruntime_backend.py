"""ONNX Runtime backend: CPU execution provider everywhere, CUDA EP when the installed onnxruntime has
it. Threads are fixed per session (intra-op = `threads`, inter-op = 1) and do not spin-wait between
calls (ONNX Runtime's default busy-waits, which starves the other nodes and torch on a small CPU), so
a node shares the CPU predictably with the others on the robot."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import BackendUnavailable, InferenceBackend, device_kind

ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailable("backend 'onnxruntime' needs the onnxruntime package (not importable here): "
                                 "set parameter backend to torch") from exc
    return onnxruntime


def providers_for(device: str, available: list[str]) -> list[str]:
    """Execution providers for a device, or BackendUnavailable naming the parameter to change."""
    if device_kind(device) == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in available:
        raise BackendUnavailable("backend 'onnxruntime' has no CUDA execution provider here (install "
                                 "onnxruntime-gpu): set parameter backend to torch or device to cpu")
    index = device.split(":", 1)[1] if ":" in device else "0"
    return [("CUDAExecutionProvider", {"device_id": int(index)}), "CPUExecutionProvider"]


class OnnxRuntimeBackend(InferenceBackend):
    name = "onnxruntime"

    def __init__(self, model: bytes | str | Path, device: str = "cpu", precision: str = "fp32",
                 threads: int = 0) -> None:
        ort = import_onnxruntime()
        if not isinstance(model, (bytes, str, Path)):
            raise TypeError(f"onnxruntime backend needs an ONNX file or its bytes, got {type(model).__name__}")
        if precision == "fp16" and device_kind(device) != "cuda":
            raise BackendUnavailable("precision 'fp16' is a GPU precision: set parameter device to cuda or "
                                     "precision to fp32")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(0, threads)
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        src = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(src, opts, providers=providers_for(device, ort.get_available_providers()))
        self.inputs = [(i.name, ORT_DTYPES.get(i.type, np.float32)) for i in self.session.get_inputs()]
        self.precision, self.device = precision, device

    def run(self, x: np.ndarray, *extra: np.ndarray) -> tuple[np.ndarray, ...]:
        arrays = (x, *extra)
        if len(arrays) != len(self.inputs):
            raise ValueError(f"graph takes {len(self.inputs)} inputs ({', '.join(n for n, _ in self.inputs)}), "
                             f"got {len(arrays)}")
        feeds = {n: np.ascontiguousarray(a, dtype=t) for (n, t), a in zip(self.inputs, arrays, strict=True)}
        return tuple(np.asarray(o, dtype=np.float32) for o in self.session.run(None, feeds))
