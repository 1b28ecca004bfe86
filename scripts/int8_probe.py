"""How much int8 would buy the synthesizer's DC-AE on ONNX Runtime, and what it costs in fidelity.

    python scripts/int8_probe.py [--model models/latent_dit] [--data demo_data/images]

Exports the DC-AE encoder and decoder as the synthesizer does (ort_backend.py), quantizes each with ONNX
Runtime's static QDQ quantization (int8 weights per channel, uint8 activations calibrated on 48 frames of
DATA/calibration), and times fp32 against int8 on one thread on 24 frames of DATA/test, printing the
speed-up, the relative error of the latents and the decoder's error in grey levels.
"""
from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch


def frames(folder: Path, step: int, count: int, size: int) -> list[np.ndarray]:
    out = []
    for path in sorted((folder / "frames").glob("*.png"))[::step][:count]:
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
        out.append((rgb.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None])
    return out


def export(module: torch.nn.Module, example: torch.Tensor, name: str) -> bytes:
    from ood_monitor.core.diffusion import ort_backend

    buf = io.BytesIO()
    with torch.no_grad(), ort_backend._positive_movedim(), ort_backend._quiet():
        torch.onnx.export(module.eval(), (example,), buf, input_names=[name], output_names=["out"],
                          opset_version=ort_backend.OPSET, dynamo=False)
    return buf.getvalue()


def quantize(path: Path, name: str, calibration: list[np.ndarray]) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{name: x} for x in calibration])

        def get_next(self) -> dict | None:
            return next(self.feeds, None)

    pre, out = path.with_suffix(".pre.onnx"), path.with_suffix(".int8.onnx")
    quant_pre_process(str(path), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def timed(path: Path, name: str, inputs: list[np.ndarray], reps: int = 3) -> tuple[float, list[np.ndarray]]:
    import onnxruntime as ort

    from ood_monitor.core.diffusion.ort_backend import session_options

    session = ort.InferenceSession(str(path), session_options(1))
    outputs = [session.run(None, {name: x})[0] for x in inputs]
    start = time.perf_counter()
    for _ in range(reps):
        for x in inputs:
            session.run(None, {name: x})
    return (time.perf_counter() - start) / max(1, reps * len(inputs)) * 1e3, outputs


def main() -> None:
    from ood_monitor.core.diffusion import ort_backend
    from ood_monitor.core.diffusion.synthesizer import Synthesizer

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models/latent_dit")
    p.add_argument("--data", type=Path, default=Path("demo_data/images"))
    args = p.parse_args()
    torch.set_num_threads(1)
    syn = Synthesizer.from_model_dir(args.model)
    size = syn.image_size
    calibration, test = frames(args.data / "calibration", 7, 48, size), frames(args.data / "test", 23, 24, size)
    with tempfile.TemporaryDirectory() as tmp:
        enc = Path(tmp) / "encoder.onnx"
        enc.write_bytes(export(ort_backend._Encoder(syn.autoencoder), torch.zeros(1, 3, size, size), "x"))
        _, z_cal = timed(enc, "x", calibration, reps=0)
        _, z_test = timed(enc, "x", test, reps=0)
        dec = Path(tmp) / "decoder.onnx"
        dec.write_bytes(export(ort_backend._Decoder(syn.autoencoder), torch.zeros(z_cal[0].shape), "z"))
        for label, graph, name, cal, inputs in (("encoder", enc, "x", calibration, test),
                                                ("decoder", dec, "z", z_cal, z_test)):
            fp32_ms, ref = timed(graph, name, inputs)
            int8_ms, got = timed(quantize(graph, name, cal), name, inputs)
            rel = np.mean([np.abs(a - b).mean() / (np.abs(a).mean() + 1e-9) for a, b in zip(ref, got, strict=True)])
            grey = np.mean([np.abs(a - b).mean() * 127.5 for a, b in zip(ref, got, strict=True)])
            print(f"{label}: fp32 {fp32_ms:.1f} ms, int8 {int8_ms:.1f} ms ({fp32_ms / int8_ms:.2f}x), "
                  f"relative error {rel:.3f}" + (f", {grey:.2f} grey levels" if label == "decoder" else ""),
                  flush=True)


if __name__ == "__main__":
    main()
