"""The synthesizer's three networks (DC-AE encoder, DiT / U-Net denoiser, DC-AE decoder) on ONNX Runtime.

Why: on this project's 2-core CPU, with one thread each, ONNX Runtime's fused kernels run the 64-token DiT
about 1.9x and the DC-AE encoder / decoder about 1.35x / 1.25x faster than eager torch, identical to
≈1e-6 (measured side by side: `ood-monitor bench synth --only latent-dit-gradfree,latent-dit-gradfree-ort`).
It runs inference only, so it serves the gradient-free guidance (and unguided sampling), not Algorithm 1's
backward pass through the denoiser: `Synthesizer.from_model_dir` refuses backend onnxruntime with
guidance_kind gradient.

The graphs are exported from the loaded torch modules in memory at start-up (a few seconds, nothing
written to disk), so they always match the model directory's weights. diffusers' DC-AE moves channels
with `movedim(1, -1)`, which torch's TorchScript-based exporter turns into an invalid negative Transpose
permutation; `_positive_movedim` makes the dims positive for the duration of the export.
"""
from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from .dcae import encode_with_features

OPSET = 17


@contextlib.contextmanager
def _positive_movedim() -> Iterator[None]:
    original = torch.Tensor.movedim

    def movedim(self: torch.Tensor, source, destination):
        n = self.dim()

        def fix(d):
            return d % n if isinstance(d, int) else tuple(i % n for i in d)

        return original(self, fix(source), fix(destination))

    torch.Tensor.movedim = movedim
    try:
        yield
    finally:
        torch.Tensor.movedim = original


class _Encoder(nn.Module):
    """Latent, then the first down blocks' outputs (handed to the analysis: see dcae.encode_with_features)."""

    def __init__(self, autoencoder: nn.Module) -> None:
        super().__init__()
        self.ae = autoencoder

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        latent, maps = encode_with_features(self.ae, x)
        return (latent, *maps)


class _Decoder(nn.Module):
    def __init__(self, autoencoder: nn.Module) -> None:
        super().__init__()
        self.ae = autoencoder

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.ae.decode(z).sample


class _Denoiser(nn.Module):
    """ε(x, t) with t as a float (1,) tensor, the graph's second input."""

    def __init__(self, denoiser: nn.Module) -> None:
        super().__init__()
        self.net = denoiser

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x, t)


def session_options(threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads > 0:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # ONNX Runtime's worker threads spin between runs by default: on a 2-core CPU shared with the camera-rate
    # detectors that burns the core they need, so they sleep instead (costs microseconds per run)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def providers(device: torch.device) -> list[str]:
    import onnxruntime as ort

    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ValueError("backend onnxruntime on cuda needs onnxruntime-gpu (CUDAExecutionProvider); "
                             "set the parameter backend to torch")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OrtGraph:
    """One exported network (its module on the CPU): called with torch tensors, returns a torch tensor on
    `device`."""

    def __init__(self, module: nn.Module, example: tuple[torch.Tensor, ...], names: list[str],
                 threads: int = 1, device: torch.device | None = None) -> None:
        import onnxruntime as ort

        buf = io.BytesIO()
        cpu_example = tuple(a.detach().cpu() for a in example)
        with torch.no_grad(), _positive_movedim(), _quiet():
            torch.onnx.export(module.eval(), cpu_example, buf, input_names=names, opset_version=OPSET, dynamo=False)
        self.names = names
        self.device = device or torch.device("cpu")
        self.before: list[Callable[[], None]] = []  # run before every call (one may raise to cancel)
        self.session = ort.InferenceSession(buf.getvalue(), session_options(threads),
                                            providers=providers(self.device))

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        """The graph's first output."""
        return self.run(*args)[0]

    def run(self, *args: torch.Tensor) -> list[torch.Tensor]:
        """Every output of the graph, in order."""
        for check in self.before:
            check()
        feed = {n: np.ascontiguousarray(a.detach().float().cpu().numpy()) for n, a in zip(self.names, args, strict=True)}
        return [torch.from_numpy(out).to(self.device) for out in self.session.run(None, feed)]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class OrtDenoiser:
    """Drop-in for the torch denoiser in guided_sample (no autograd)."""

    def __init__(self, denoiser: nn.Module, shape: tuple[int, ...], threads: int, device: torch.device) -> None:
        self.graph = OrtGraph(_Denoiser(denoiser), (torch.zeros(shape), torch.zeros(1)), ["x", "t"], threads, device)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.graph(x, t.float().reshape(1))


class OrtAutoencoder:
    """encoder(images) -> unscaled latents (`encoder.run`: latents and the first down blocks' outputs),
    decoder(latents) -> images, as the DC-AE's `.latent` / `.sample`."""

    def __init__(self, autoencoder: nn.Module, image_size: int, latent_shape: tuple[int, ...], threads: int,
                 device: torch.device) -> None:
        self.encoder = OrtGraph(_Encoder(autoencoder), (torch.zeros(1, 3, image_size, image_size),), ["x"],
                                threads, device)
        self.decoder = OrtGraph(_Decoder(autoencoder), (torch.zeros(latent_shape),), ["z"], threads, device)
