"""Post-training quantization: int8 for CPU, fp16 for GPU (the recipe of arXiv 2409.00880,
docs/methods.md#compression).

int8 is ONNX Runtime static QDQ (per-tensor U8S8 by default). Why this path rather than torch.ao's FX
int8: ONNX Runtime's int8 convolutions fuse bias and LeakyReLU and keep activations quantized between
layers, while torch.ao's graph dequantizes around every LeakyReLU (no quantized kernel for it) and pays
per-op dispatch at batch 1; and ONNX is what the ONNX Runtime / TensorRT backends deploy, so the
measured artefact is the shipped one. `measure_int8_paths` and `ood-monitor bench compress` compare the
paths on the machine at hand (figures: docs/benchmarks.md#compression).

The first convolution block (conv + activation) stays fp32, as the selected-layer recipe
(docs/methods.md#selected-layer-quantization) leaves first and last layers: with 3 input channels an int8
convolution cannot use the VNNI/AMX dot products, and the raw pixels would need an extra QuantizeLinear.

Only the trunk (convolutions + first dense layer: all the compute) is quantized. The tail stays fp32:
it is a few thousand multiply-adds, carries MC dropout's mask inputs, and its logvar head feeds the KL
score directly, where int8 rounding would move scores most (arXiv 2602.01459: check, never assume).
"""
from __future__ import annotations

import copy
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn


class ArrayReader:
    """onnxruntime.quantization CalibrationDataReader over an (N, ...) array, one row per feed."""

    def __init__(self, input_name: str, data: np.ndarray, batch: int = 1) -> None:
        self.name, self.data, self.batch = input_name, np.ascontiguousarray(data, np.float32), batch
        self.rows: Iterator[int] = iter(range(0, len(data), batch))

    def get_next(self) -> dict[str, np.ndarray] | None:
        start = next(self.rows, None)
        return None if start is None else {self.name: self.data[start:start + self.batch]}

    def rewind(self) -> None:
        self.rows = iter(range(0, len(self.data), self.batch))


ACTIVATIONS = ("Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip")


def first_block(graph_path: str | Path) -> list[str]:
    """Names of the graph's first Conv and the elementwise activation right after it (if any)."""
    import onnx

    nodes = list(onnx.load(str(graph_path)).graph.node)
    for i, node in enumerate(nodes):
        if node.op_type == "Conv":
            names = [node.name]
            nxt = nodes[i + 1] if i + 1 < len(nodes) else None
            if nxt is not None and nxt.op_type in ACTIVATIONS and node.output[0] in nxt.input:
                names.append(nxt.name)
            return names
    return []



def quantize_onnx_int8(onnx: bytes, calibration: np.ndarray, input_name: str = "x", per_channel: bool = False,
                       keep_first: bool = True) -> bytes:
    """Static int8 (QDQ, uint8 activations / int8 weights) of an ONNX graph, activation ranges from
    `calibration` frames (in-distribution training frames). `keep_first` leaves the first conv block in
    fp32 (selected-layer quantization, see the module docstring)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) == 0:
        raise ValueError("int8 quantization needs calibration frames")
    with tempfile.TemporaryDirectory() as tmp:
        src, pre, out = (Path(tmp) / n for n in ("model.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(onnx)
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), ArrayReader(input_name, calibration), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=per_channel,
                        calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=first_block(pre) if keep_first else [])
        return out.read_bytes()


def quantize_torch_fx(module: nn.Module, calibration: np.ndarray, engine: str = "fbgemm") -> nn.Module:
    """torch.ao FX static int8 of a module (the measured alternative to ONNX Runtime, CPU only)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = engine
    example = torch.from_numpy(np.ascontiguousarray(calibration[:1], np.float32))
    prepared = prepare_fx(copy.deepcopy(module).eval(), get_default_qconfig_mapping(engine), (example,))
    with torch.no_grad():
        for start in range(0, len(calibration), 32):
            prepared(torch.from_numpy(np.ascontiguousarray(calibration[start:start + 32], np.float32)))
    return convert_fx(prepared).eval()


def measure_int8_paths(encoder: nn.Module, frames: np.ndarray, threads: int = 2, repeats: int = 100
                       ) -> dict[str, float]:
    """Median ms/frame at batch 1 of torch fp32, torch.ao FX int8, ONNX Runtime fp32 and ONNX Runtime
    QDQ int8 on the encoder's trunk, interleaved so shared-CPU noise hits every path alike."""
    from ood_monitor.core.benchmark import time_ms
    from ood_monitor.core.runtime.onnx_export import export_onnx
    from ood_monitor.core.runtime.onnxruntime_backend import OnnxRuntimeBackend

    torch.set_num_threads(threads)
    trunk = copy.deepcopy(encoder.trunk).eval()
    x_np = np.ascontiguousarray(frames[:1], np.float32)
    x = torch.from_numpy(x_np)
    onnx = export_onnx(trunk, (x,), ["x"], ["features"])
    fx = quantize_torch_fx(trunk, frames)
    ort32 = OnnxRuntimeBackend(onnx, threads=threads)
    ort8 = OnnxRuntimeBackend(quantize_onnx_int8(onnx, frames), threads=threads)
    paths = {"torch-fp32": lambda: trunk(x), "torchao-fx-int8": lambda: fx(x),
             "onnxruntime-fp32": lambda: ort32.run(x_np), "onnxruntime-qdq-int8": lambda: ort8.run(x_np)}
    samples: dict[str, list[np.ndarray]] = {k: [] for k in paths}
    with torch.inference_mode():
        for _ in range(max(1, repeats // 10)):
            for name, fn in paths.items():
                samples[name].append(time_ms(lambda _i, f=fn: f(), 10, warmup=2))
    return {k: float(np.median(np.concatenate(v))) for k, v in samples.items()}
