"""Selected-layer weight quantization (efficient anomalies-by-synthesis report §3.3,
docs/methods.md#selected-layer-quantization) of a denoiser, and all-layer for comparison.

"selected": only the layers that carry the compute — attention QKV and output projections, MLP linears
(`fc1`, `fc2`) and the U-Net's main residual convolutions (`conv1`, `conv2`). Left in fp32: norms,
biases, timestep/patch/position embeddings, adaLN modulation, skip and up/down-sampling convolutions
and the first and last layers, which that report found (and the literature agrees) are the sensitive ones.
"all": every Linear and Conv2d.

Weight-only: int8 keeps symmetric per-output-channel int8 weights + fp32 scales and dequantizes in the
forward pass; fp16 keeps half weights and computes in half on CUDA (on CPU it upcasts). Why not
torch's dynamic int8 Linear: its kernels have no backward, and Algorithm 1 backpropagates through the
denoiser. So on CPU int8 saves memory and model size, not time; the bench measures both. The
dequantized weight is a temporary: the backward pass (gradient guidance needs it with respect to the
input only; weights are frozen) dequantizes again instead of autograd keeping every layer's full-precision
copy alive until backward, which would give back the memory the quantization saved.

The synthesizer quantizes the DC-AE with the same rule (its attention `to_q/to_k/to_v/to_out` and the
EfficientViT / ResNet block convolutions `conv_inverted`, `conv_point`, `conv1`, `conv2`), leaving its
down/up-sampling, depthwise, input and output convolutions and norms.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

PRECISIONS = ("fp32", "fp16", "fp16-selected", "fp16-all", "int8-selected", "int8-all")
SELECTED = frozenset({"qkv", "proj", "fc1", "fc2", "conv1", "conv2",  # DiT, U-Net
                      "to_q", "to_k", "to_v", "to_out", "conv_inverted", "conv_point"})  # DC-AE


class QuantizedWeight(nn.Module):
    """A Linear or Conv2d whose weight is stored as int8 (+ per-channel scale) or fp16."""

    def __init__(self, layer: nn.Linear | nn.Conv2d, dtype: torch.dtype) -> None:
        super().__init__()
        self.kind = "conv" if isinstance(layer, nn.Conv2d) else "linear"
        self.conv_args = ({"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation,
                           "groups": layer.groups} if self.kind == "conv" else {})
        w = layer.weight.detach().float()
        if dtype == torch.int8:
            scale = w.flatten(1).abs().amax(dim=1).clamp_min(1e-12) / 127.0
            shape = (-1,) + (1,) * (w.dim() - 1)
            self.register_buffer("qweight", torch.round(w / scale.view(shape)).clamp(-127, 127).to(torch.int8))
            self.register_buffer("scale", scale.view(shape))
        else:
            self.register_buffer("qweight", w.to(dtype))
            self.scale = None
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().float(), requires_grad=False)

    def weight(self, dtype: torch.dtype) -> torch.Tensor:
        if self.scale is not None:
            return self.qweight.to(dtype) * self.scale.to(dtype)
        return self.qweight.to(dtype)

    def apply_weight(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if self.kind == "conv":
            return F.conv2d(x, weight, bias, **self.conv_args)
        return F.linear(x, weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.scale is None and x.is_cuda  # fp16 compute only where it is fast
        dtype = torch.float16 if half else x.dtype
        bias = None if self.bias is None else self.bias.to(dtype)
        return _DequantizedOp.apply(x.to(dtype), self, bias).to(x.dtype)


class _DequantizedOp(torch.autograd.Function):
    """y = layer(x) with the weight dequantized in forward and again in backward: only the stored
    (int8 / fp16) weight stays alive between the two. Gradient with respect to x only."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: QuantizedWeight, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.layer, ctx.x_shape = layer, x.shape
        return layer.apply_weight(x, layer.weight(x.dtype), bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        layer = ctx.layer
        weight = layer.weight(grad.dtype)
        if layer.kind == "conv":
            return torch.nn.grad.conv2d_input(ctx.x_shape, weight, grad, **layer.conv_args), None, None
        return grad @ weight, None, None


def layer_names(model: nn.Module, scope: str) -> list[str]:
    """Names of the Linear/Conv2d layers a scope ("selected" or "all") quantizes."""
    if scope not in ("selected", "all"):
        raise ValueError(f"scope must be selected or all, got {scope!r}")
    names = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)) and (scope == "all" or name.rsplit(".", 1)[-1] in SELECTED):
            names.append(name)
    return names


def quantize(model: nn.Module, precision: str) -> nn.Module:
    """A quantized copy of `model` ("fp32" returns the model itself)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return model
    kind, _, scope = precision.partition("-")
    dtype = torch.int8 if kind == "int8" else torch.float16
    out = copy.deepcopy(model)
    for name in layer_names(out, scope or "selected"):
        parent_name, _, leaf = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        setattr(parent, leaf, QuantizedWeight(getattr(parent, leaf), dtype))
    return out.eval().requires_grad_(False)


def model_size_mb(model: nn.Module) -> float:
    """Bytes of every parameter and buffer, in MB (10^6): what the weights occupy in memory and on disk."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors) / 1e6
