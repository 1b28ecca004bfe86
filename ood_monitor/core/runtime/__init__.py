"""Inference backends behind one interface (torch, ONNX Runtime, TensorRT) and the detector loader the
VAE node uses: `load_detector_backend` turns a model folder (a shipped fp32 model or a compressed
variant from `ood-monitor compress`) into the trunk / tail callables of core/uncertainty.py, refusing a
variant the OOD guard flagged unless forced."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
from torch import nn

from ood_monitor.core.vae.io import ModelCard, ModelFileError, load_encoder, read_card

from .base import (
    KINDS,
    PRECISIONS,
    BackendUnavailable,
    InferenceBackend,
    check_choice,
    device_kind,
    make_backend,
)
from .onnx_export import DropoutSpec, MaskedTail, draw_masks, dropout_specs, export_encoder

RUNTIME_KEY = "runtime"
COMPRESSION_KEY = "compression"


class FlaggedVariant(RuntimeError):
    """A compressed variant lost more OOD performance than its guard tolerance allows."""


class BackendTrunk:
    """trunk(x) -> features (N, F) as numpy, on any backend."""

    def __init__(self, backend: InferenceBackend) -> None:
        self.backend = backend

    def __call__(self, x: object) -> np.ndarray:
        return self.backend.run(np.asarray(x, dtype=np.float32))[0]


class BackendTail:
    """tail(features) -> (mu, logvar), deterministic (all-ones dropout masks); `sample(features)` draws
    fresh masks per row: the stochastic tail MC dropout repeats N times."""

    def __init__(self, backend: InferenceBackend, specs: list[DropoutSpec], seed: int | None = None) -> None:
        self.backend, self.specs = backend, specs
        self.rng = np.random.default_rng(seed)

    def __call__(self, features: object) -> tuple[np.ndarray, np.ndarray]:
        f = np.asarray(features, dtype=np.float32)
        mu, logvar = self.backend.run(f, *draw_masks(self.specs, len(f)))
        return mu, logvar

    def sample(self, features: object) -> tuple[np.ndarray, np.ndarray]:
        f = np.asarray(features, dtype=np.float32)
        mu, logvar = self.backend.run(f, *draw_masks(self.specs, len(f), self.rng))
        return mu, logvar


class DetectorBackend(NamedTuple):
    trunk: BackendTrunk
    tail: BackendTail
    card: ModelCard


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def torch_callables(encoder: nn.Module, device: str, precision: str, threads: int = 0
                    ) -> tuple[BackendTrunk, BackendTail]:
    specs = dropout_specs(encoder.tail, encoder.cfg.hidden)
    trunk = make_backend("torch", encoder.trunk, device=device, precision=precision, threads=threads)
    tail = make_backend("torch", MaskedTail(encoder.tail), device=device, precision=precision, threads=threads)
    return BackendTrunk(trunk), BackendTail(tail, specs)


def onnx_callables(kind: str, trunk_onnx: bytes, tail_onnx: bytes, specs: list[DropoutSpec], device: str,
                   precision: str, threads: int = 0, cache_dir: str | Path | None = None
                   ) -> tuple[BackendTrunk, BackendTail]:
    opts = {"device": device, "precision": precision}
    extra = {"threads": threads} if kind == "onnxruntime" else {"cache_dir": cache_dir}
    trunk = make_backend(kind, trunk_onnx, **opts, **extra)
    tail = make_backend(kind, tail_onnx, **opts, **extra)
    return BackendTrunk(trunk), BackendTail(tail, specs)


def stored_graphs(model_dir: Path, section: dict) -> tuple[bytes, bytes, list[DropoutSpec]] | None:
    """The ONNX graphs a variant folder ships (checked against their recorded sha256), else None."""
    files = section.get("files") or {}
    if "trunk" not in files or "tail" not in files:
        return None
    blobs = []
    for key in ("trunk", "tail"):
        path = model_dir / files[key]
        if not path.is_file() or sha256_file(path) != section.get("sha256", {}).get(key):
            raise ModelFileError(f"{path} is missing or does not match {model_dir / 'config.json'}: "
                                 f"re-run `ood-monitor compress` for this model")
        blobs.append(path.read_bytes())
    specs = [DropoutSpec(float(d["p"]), int(d["width"])) for d in section.get("dropout", [])]
    return blobs[0], blobs[1], specs


def check_guard(model_dir: Path, raw: dict, force: bool) -> None:
    from ood_monitor.core.compress.guard import GUARD_KEY, GuardVerdict

    if not raw.get(GUARD_KEY):
        return
    verdict = GuardVerdict.from_dict(raw[GUARD_KEY])
    if verdict.flagged and not force:
        raise FlaggedVariant(f"{model_dir} was flagged by the OOD guard ({verdict.summary()}): point model_dir "
                             f"at its parent {raw.get(COMPRESSION_KEY, {}).get('parent', '')!s} or set "
                             f"parameter force_compressed to true")


def load_detector_backend(model_dir: str | Path, backend: str = "torch", device: str = "cpu",
                          precision: str = "", cache_dir: str | Path | None = None, force: bool = False,
                          threads: int = 0) -> DetectorBackend:
    """(trunk, tail, card) for a model folder. `precision` '' means the model's own (fp32, or the
    variant's fp16 / int8). A flagged variant raises FlaggedVariant unless `force`; a backend, device or
    precision this machine cannot run raises BackendUnavailable naming the parameter to change."""
    import json

    path = Path(model_dir)
    card = read_card(path)
    raw = json.loads((path / "config.json").read_text())
    check_guard(path, raw, force)
    check_choice("backend", backend, KINDS)
    device_kind(device)
    own = raw.get(COMPRESSION_KEY, {}).get("precision", "fp32")
    precision = check_choice("precision", precision or own, PRECISIONS)
    graphs = stored_graphs(path, raw.get(RUNTIME_KEY) or {})
    if own == "int8":
        if backend != "onnxruntime" or graphs is None:
            raise BackendUnavailable(f"{path} is an ONNX Runtime int8 variant: set parameter backend to "
                                     "onnxruntime (TensorRT int8: use the fp32 parent with precision int8)")
        return DetectorBackend(*onnx_callables(backend, *graphs, device, "int8", threads), card)
    if precision == "int8":
        raise BackendUnavailable(f"{path} is not an int8 model: set parameter precision to fp32 or fp16, or "
                                 "model_dir to its -int8 variant")
    if backend == "torch":
        encoder, _ = load_encoder(path)
        return DetectorBackend(*torch_callables(encoder, device, precision, threads), card)
    if graphs is None or precision == "fp16" and backend == "onnxruntime":
        encoder, _ = load_encoder(path)
        cfg = encoder.cfg
        export = export_encoder(encoder, (cfg.channels, cfg.height, cfg.width), check=False,
                                half=precision == "fp16" and backend == "onnxruntime")
        graphs = (export.trunk, export.tail, export.dropout)
    return DetectorBackend(*onnx_callables(backend, *graphs, device, precision, threads, cache_dir), card)


__all__ = ["KINDS", "PRECISIONS", "BackendTail", "BackendTrunk", "BackendUnavailable", "DetectorBackend",
           "FlaggedVariant", "InferenceBackend", "load_detector_backend", "make_backend", "onnx_callables",
           "torch_callables"]
