"""ONNX export of a VAE encoder: the whole encoder, and its trunk and tail as separate graphs so cached
MC dropout (core/uncertainty.py) runs the trunk once and the tail on a batch of N samples in any backend.

ONNX backends have no usable random dropout (TensorRT drops it, ONNX Runtime's needs a training-mode
flag), so the exported tail takes its dropout masks as inputs (`mask0`, `mask1`, ...: keep/(1-p) per
unit, ones for the deterministic score). The caller draws the masks with numpy: same distribution as
torch's dropout, portable to every backend. Every graph has a dynamic batch axis and is checked against
torch at batch 1 and 30 (the max abs difference is returned and printed by the CLI).
"""
from __future__ import annotations

import copy
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ood_monitor.core.uncertainty import DROPOUT_TYPES

OPSET = 17
CHECK_BATCHES = (1, 30)
FILES = {"encoder": "encoder.onnx", "trunk": "trunk.onnx", "tail": "tail.onnx"}


@dataclass(frozen=True)
class DropoutSpec:
    """One dropout layer of a tail: its rate and the width of the activation it masks."""

    p: float
    width: int


class MaskedDropout(nn.Module):
    """Dropout whose mask is an input: x * mask (the mask already holds keep / (1 - p))."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.mask: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.mask is None else x * self.mask


class MaskedTail(nn.Module):
    """tail(features, mask0, mask1, ...) -> (mu, logvar): a copy of `tail` with its dropouts masked;
    without masks it is the deterministic (eval-mode) tail."""

    def __init__(self, tail: nn.Module) -> None:
        super().__init__()
        self.tail = copy.deepcopy(tail).eval()
        self.drops: list[MaskedDropout] = []
        for name, module in list(self.tail.named_modules()):
            if isinstance(module, DROPOUT_TYPES):
                parent_name, _, attr = name.rpartition(".")
                drop = MaskedDropout(float(module.p))
                setattr(self.tail.get_submodule(parent_name) if parent_name else self.tail, attr, drop)
                self.drops.append(drop)

    def forward(self, h: torch.Tensor, *masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if masks and len(masks) != len(self.drops):
            raise ValueError(f"tail has {len(self.drops)} dropout layers, got {len(masks)} masks")
        for drop, mask in zip(self.drops, masks, strict=False):
            drop.mask = mask
        try:
            return self.tail(h)
        finally:
            for drop in self.drops:
                drop.mask = None


def dropout_specs(tail: nn.Module, features: int) -> list[DropoutSpec]:
    """Rate and width of each dropout in `tail`, in call order (probed with one forward pass)."""
    masked = MaskedTail(tail)
    widths: list[int] = []
    hooks = [d.register_forward_hook(lambda _m, args, _o: widths.append(args[0].shape[-1])) for d in masked.drops]
    with torch.no_grad():
        masked(torch.zeros(1, features))
    for hook in hooks:
        hook.remove()
    return [DropoutSpec(d.p, int(w)) for d, w in zip(masked.drops, widths, strict=True)]


def draw_masks(specs: list[DropoutSpec], batch: int, rng: np.random.Generator | None = None,
               dtype: np.dtype = np.float32) -> list[np.ndarray]:
    """Dropout masks for `batch` rows: Bernoulli(1 - p) / (1 - p); all ones when rng is None."""
    if rng is None:
        return [np.ones((batch, s.width), dtype) for s in specs]
    return [(rng.random((batch, s.width)) >= s.p).astype(dtype) / dtype(1.0 - s.p) for s in specs]


def export_onnx(module: nn.Module, inputs: tuple[torch.Tensor, ...], input_names: list[str],
                output_names: list[str], path: str | Path | None = None) -> bytes:
    """TorchScript-based export (needs no onnxscript) with batch dynamic on every input and output."""
    axes = {n: {0: "batch"} for n in (*input_names, *output_names)}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), inputs, buf, dynamo=False, input_names=input_names,
                          output_names=output_names, dynamic_axes=axes, opset_version=OPSET)
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def onnx_outputs(model: bytes | str | Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run an ONNX graph once with ONNX Runtime on CPU (the export check)."""
    import onnxruntime as ort

    src = model if isinstance(model, bytes) else str(model)
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def max_abs_diff(model: bytes | str | Path, module: nn.Module, inputs: tuple[torch.Tensor, ...],
                 names: list[str]) -> float:
    """Largest |onnx - torch| over all outputs for these inputs."""
    with torch.no_grad():
        ref = module(*inputs)
    ref = ref if isinstance(ref, (tuple, list)) else (ref,)
    got = onnx_outputs(model, {n: t.numpy() for n, t in zip(names, inputs, strict=True)})
    return max(float(np.max(np.abs(g.astype(np.float64) - r.double().numpy()))) for g, r in zip(got, ref, strict=True))


@dataclass
class EncoderExport:
    """The three graphs (bytes), the tail's dropout specs and the checked max abs differences."""

    encoder: bytes
    trunk: bytes
    tail: bytes
    dropout: list[DropoutSpec]
    max_abs_diff: dict[str, float] = field(default_factory=dict)

    def write(self, out_dir: str | Path) -> dict[str, str]:
        """Write the graphs as encoder.onnx / trunk.onnx / tail.onnx; returns {graph: file name}."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for key, name in FILES.items():
            (out / name).write_bytes(getattr(self, key))
        return dict(FILES)


def export_encoder(encoder: nn.Module, input_shape: tuple[int, int, int], check: bool = True,
                   half: bool = False) -> EncoderExport:
    """Export `encoder` (with .trunk and .tail) for (C, H, W) input; `half` writes fp16 graphs (GPU).
    With `check`, each graph runs at batch 1 and 30 through ONNX Runtime and is compared with torch."""
    dtype = torch.float16 if half else torch.float32
    enc = copy.deepcopy(encoder).eval().to(dtype)
    x = torch.rand(2, *input_shape, dtype=dtype)
    with torch.no_grad():
        features = enc.trunk(x)
    tail = MaskedTail(enc.tail)
    specs = dropout_specs(encoder.tail, features.shape[1])
    masks = tuple(torch.ones(2, s.width, dtype=dtype) for s in specs)
    mask_names = [f"mask{i}" for i in range(len(specs))]
    out = EncoderExport(
        encoder=export_onnx(enc, (x,), ["x"], ["mu", "logvar"]),
        trunk=export_onnx(enc.trunk, (x,), ["x"], ["features"]),
        tail=export_onnx(tail, (features, *masks), ["features", *mask_names], ["mu", "logvar"]),
        dropout=specs)
    if check and not half:
        out.max_abs_diff = check_export(out, enc, tail, input_shape)
    return out


def check_export(out: EncoderExport, enc: nn.Module, tail: MaskedTail, input_shape: tuple[int, int, int]
                 ) -> dict[str, float]:
    """Max abs difference ONNX vs torch per graph over batches 1 and 30 (the tail with random masks)."""
    rng = np.random.default_rng(0)
    diffs = {"encoder": 0.0, "trunk": 0.0, "tail": 0.0}
    for n in CHECK_BATCHES:
        x = torch.rand(n, *input_shape)
        with torch.no_grad():
            feats = enc.trunk(x)
        masks = tuple(torch.from_numpy(m) for m in draw_masks(out.dropout, n, rng))
        names = ["features", *(f"mask{i}" for i in range(len(masks)))]
        diffs["encoder"] = max(diffs["encoder"], max_abs_diff(out.encoder, enc, (x,), ["x"]))
        diffs["trunk"] = max(diffs["trunk"], max_abs_diff(out.trunk, enc.trunk, (x,), ["x"]))
        diffs["tail"] = max(diffs["tail"], max_abs_diff(out.tail, tail, (feats, *masks), names))
    return diffs
