"""Model directories and the ROS-free synthesizer the node, the bench and the evaluator share.

A model directory holds `model.safetensors` (EMA weights) + `config.json` (type, architecture, noise
schedule, default sampling, training record, weights hash). Three types: "dcae", "latent_dit" (its
config names the DC-AE directory, relative to itself) and "pixel_ddpm". Nothing is unpickled; every way a
directory can be unusable raises `ModelFileError` naming the file and the command that rebuilds it.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from .dcae import DcaeConfig, build_dcae, decode, encode_with_features
from .dit import Dit, DitConfig
from .guided_ddim import GUIDANCE_KINDS, GuidanceConfig, guided_sample
from .schedules import ScheduleConfig, make_scheduler
from .unet import UNet, UNetConfig
from .weight_quantization import PRECISIONS, model_size_mb, quantize

FORMAT = "ood_monitor.diffusion/1"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
MODEL_TYPES = ("dcae", "latent_dit", "pixel_ddpm")
TRAIN_COMMAND = {"dcae": "dcae", "latent_dit": "dit --dcae models/dcae", "pixel_ddpm": "ddpm"}
BACKENDS = ("torch", "onnxruntime")
NODE_BACKENDS = ("auto",) + BACKENDS
# Sampling presets (synthesizer_node's `sampling` parameter; `ood-monitor evaluate` / `calibrate-analysis`
# read the same from --params). "realtime": chosen for anomaly masks at camera rate on a 2-core CPU (
# docs/benchmarks-masks.md: scripts/tune_speed.py on tuning seeds, checked on the demo test split);
# "model": the sampling stored in the model directory's config.json (the shipped latent_dit: Jiang et al.'s
# Algorithm 1, gradient guidance, 10 DDIM steps). Explicit steps / guidance / strength / guidance_kind win.
SAMPLING_PRESETS = ("realtime", "model")
REALTIME_SAMPLING = {"steps": 2, "scale": 4.0, "strength": 0.3, "kind": "gradfree"}
UNSET_STEPS, UNSET_GUIDANCE, UNSET_STRENGTH, UNSET_KIND = 0, -1.0, 0.0, ""  # node parameter values: "from preset"
# synthesizer_node's max_wait_ms (and bench masks'): a frame that waited longer for the busy synthesizer is
# dropped for the next one; chosen live on 2 cores at a 30 Hz camera (docs/benchmarks-masks.md).
MAX_WAIT_MS = 5.0


def waited_too_long(arrived_s: float, free_at_s: float, max_wait_ms: float) -> bool:
    """Whether a frame that arrived at `arrived_s` had waited over `max_wait_ms` when the synthesizer came
    free at `free_at_s` (monotonic seconds); never with max_wait_ms 0, never for a frame arriving after."""
    return max_wait_ms > 0 and (free_at_s - arrived_s) * 1e3 > max_wait_ms


def feature_source(ae_card: dict, precision: str) -> str:
    """Names an encoder's features: its weights' sha256 prefix and the precision it ran at. Features are
    handed from the synthesizer to the analysis only between equal names (core/analysis/discrepancy)."""
    sha = str(ae_card.get("weights_sha256", ""))[:16]
    return f"dcae:{sha}:{precision}" if sha else ""


class ModelFileError(RuntimeError):
    """A model directory is missing, corrupt or inconsistent."""


def train_hint(model_type: str, model_dir: str | Path) -> str:
    cmd = TRAIN_COMMAND.get(model_type, "dcae|dit|ddpm")
    return f"run `ood-monitor train {cmd} --data DIR/bags/train --out {model_dir}`"


def build_module(model_type: str, arch: dict) -> nn.Module:
    if model_type == "dcae":
        return build_dcae(DcaeConfig(**arch))
    if model_type == "latent_dit":
        return Dit(DitConfig(**arch))
    if model_type == "pixel_ddpm":
        return UNet(UNetConfig(**arch))
    raise ValueError(f"unknown model type {model_type!r} (expected one of {MODEL_TYPES})")


def host_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies: what safetensors writes, whatever device the weights are on."""
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def save_model(model_dir: str | Path, module: nn.Module, card: dict) -> Path:
    """Write weights + config.json (card gets format, weights_sha256); returns the directory."""
    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    blob = save_safetensors(host_tensors(module.state_dict()))
    (out / WEIGHTS).write_bytes(blob)
    card = {**card, "format": FORMAT, "weights_sha256": hashlib.sha256(blob).hexdigest()}
    (out / CONFIG).write_text(json.dumps(card, indent=2))
    return out


def read_card(model_dir: str | Path, expected: str | None = None) -> dict:
    """config.json of a model directory, validated."""
    path = Path(model_dir) / CONFIG
    hint = train_hint(expected or "", model_dir)
    if not path.is_file():
        raise ModelFileError(f"{path} not found: {hint}")
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path} is not valid JSON ({exc}): {hint}") from None
    if not isinstance(card, dict) or card.get("format") != FORMAT or card.get("type") not in MODEL_TYPES:
        raise ModelFileError(f"{path} is not an {FORMAT} model config: {hint}")
    if expected and card["type"] != expected:
        raise ModelFileError(f"{path} describes a {card['type']} model, expected {expected}: {hint}")
    return card


def load_model(model_dir: str | Path, expected: str | None = None) -> tuple[nn.Module, dict]:
    """(module in eval mode, card). Checks the weights hash and that every tensor matches the config."""
    card = read_card(model_dir, expected)
    path = Path(model_dir) / WEIGHTS
    hint = train_hint(card["type"], model_dir)
    if not path.is_file():
        raise ModelFileError(f"{path} not found: {hint}")
    blob = path.read_bytes()
    if card.get("weights_sha256") and hashlib.sha256(blob).hexdigest() != card["weights_sha256"]:
        raise ModelFileError(f"{path} does not match the hash in {CONFIG} (corrupt or replaced): {hint}")
    try:
        state = load_safetensors(blob)
        module = build_module(card["type"], card["arch"])
        module.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, TypeError, ValueError, KeyError) as exc:
        raise ModelFileError(f"{path} cannot be loaded ({type(exc).__name__}: {exc}): {hint}") from None
    return module.eval().requires_grad_(False), card


def sampling_overrides(preset: str, steps: int = UNSET_STEPS, guidance: float = UNSET_GUIDANCE,
                       strength: float = UNSET_STRENGTH, kind: str = UNSET_KIND) -> dict:
    """from_model_dir's steps / guidance / strength / guidance_kind for a preset and the explicitly set
    values (the UNSET_* ones fall back to the preset; None: the model directory's own default)."""
    if preset not in SAMPLING_PRESETS:
        raise ValueError(f"parameter sampling must be one of {SAMPLING_PRESETS}, got {preset!r}")
    base = REALTIME_SAMPLING if preset == "realtime" else {"steps": None, "scale": None, "strength": None,
                                                            "kind": None}
    return {"steps": steps if steps != UNSET_STEPS else base["steps"],
            "guidance": guidance if guidance != UNSET_GUIDANCE else base["scale"],
            "strength": strength if strength != UNSET_STRENGTH else base["strength"],
            "guidance_kind": kind if kind != UNSET_KIND else base["kind"]}


def resolve_backend(backend: str, precision: str, device: str = "cpu") -> str:
    """auto: onnxruntime for fp32 when it is installed and runs on `device` (on cuda: onnxruntime-gpu's
    CUDA execution provider; the CPU-only package would make the node refuse to start), else torch."""
    if backend not in NODE_BACKENDS:
        raise ValueError(f"parameter backend must be one of {NODE_BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    if precision != "fp32":
        return "torch"
    try:
        import onnxruntime as ort
    except ImportError:
        return "torch"
    if device.startswith("cuda") and "CUDAExecutionProvider" not in ort.get_available_providers():
        return "torch"
    return "onnxruntime"


def synthesizer_from_params(model_dir: str | Path, p: dict) -> Synthesizer:
    """The synthesizer synthesizer_node builds from its parameters `p` (a parameter file's synthesizer_node
    section; absent names take the node's defaults), so the offline tools run what the node runs."""
    precision = p.get("precision", "fp32")
    precision = "fp16-selected" if precision == "fp16" else precision
    sampling = sampling_overrides(p.get("sampling", "realtime"), p.get("steps", UNSET_STEPS),
                                  p.get("guidance", UNSET_GUIDANCE), p.get("strength", UNSET_STRENGTH),
                                  p.get("guidance_kind", UNSET_KIND))
    device = p.get("device", "cpu")
    return Synthesizer.from_model_dir(model_dir, **sampling, device=device, precision=precision,
                                      seed=int(p.get("seed", 0)),
                                      backend=resolve_backend(p.get("backend", "auto"), precision, device),
                                      threads=int(p.get("threads", 0)))


def resolve_device(device: str) -> torch.device:
    if device not in ("cpu", "cuda"):
        raise ValueError(f"parameter device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but torch finds no CUDA GPU here: set the parameter device to cpu")
    return torch.device(device)




@dataclass
class SynthesisTiming:
    """Where one synthesis spent its time. denoise = dit (the denoiser's forward passes) + guidance (the
    rest of the sampling loop: Algorithm 1's backward pass through the denoiser, the guidance arithmetic
    and the DDIM updates); decode includes the conversion back to uint8."""

    encode_ms: float = 0.0
    denoise_ms: float = 0.0
    decode_ms: float = 0.0
    dit_ms: float = 0.0
    steps: int = 0

    @property
    def guidance_ms(self) -> float:
        return max(0.0, self.denoise_ms - self.dit_ms)

    @property
    def total_ms(self) -> float:
        return self.encode_ms + self.denoise_ms + self.decode_ms

    def stages(self) -> dict[str, float]:
        """Per-stage ms, the breakdown the benches and docs report."""
        return {"encode": self.encode_ms, "dit": self.dit_ms, "guidance": self.guidance_ms,
                "decode": self.decode_ms}


def _clock(device: torch.device) -> float:
    """perf_counter after the device's queued work: CUDA kernels run asynchronously, so without the
    synchronisation every stage's time would land in whichever stage first copies back to the host."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class _TimedModel:
    """Wraps the denoiser to add up the time of its forward passes."""

    def __init__(self, model, device: torch.device) -> None:
        self.model, self.device, self.ms, self.calls = model, device, 0.0, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t0 = _clock(self.device)
        out = self.model(x, t)
        self.ms += (_clock(self.device) - t0) * 1e3
        self.calls += 1
        return out


@dataclass
class Synthesizer:
    """Re-synthesizes a frame as in-distribution content: rgb uint8 in, rgb uint8 out, same size."""

    denoiser: nn.Module
    schedule: ScheduleConfig
    guidance: GuidanceConfig
    image_size: int
    sampler: str = "ddim"
    autoencoder: nn.Module | None = None
    scaling_factor: float = 1.0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"
    name: str = ""
    model_hash: str = ""
    seed: int = 0
    runtime: str = "torch"
    ort_denoiser: object | None = None
    ort_autoencoder: object | None = None
    feature_source: str = ""  # which encoder `last_features` came from: weights sha256 prefix and precision
    last_timing: SynthesisTiming = field(default_factory=SynthesisTiming)
    # the input's encoder block outputs ((C, H, W) each) from the last synthesize, for the analysis
    last_features: tuple[np.ndarray, ...] = ()

    def __post_init__(self) -> None:
        self.scheduler = make_scheduler(self.schedule, self.sampler)

    @classmethod
    def from_model_dir(cls, path: str | Path, steps: int | None = None, guidance: float | None = None,
                       strength: float | None = None, guidance_kind: str | None = None,
                       device: str = "cpu", precision: str = "fp32", sampler: str = "ddim",
                       seed: int = 0, backend: str = "torch", threads: int = 0) -> Synthesizer:
        """Load a latent_dit or pixel_ddpm directory; None keeps the sampling defaults in its config.

        backend onnxruntime runs the three networks through ONNX Runtime (ort_backend.py; fp32 only). It
        has no backward pass, so gradient guidance (Algorithm 1) runs the denoiser in torch and only the
        DC-AE in ONNX Runtime. `threads` is its intra-op thread count (0: torch's current count)."""
        if precision not in PRECISIONS:
            raise ValueError(f"parameter precision must be one of {PRECISIONS}, got {precision!r}")
        if guidance_kind is not None and guidance_kind not in GUIDANCE_KINDS:
            raise ValueError(f"parameter guidance_kind must be one of {GUIDANCE_KINDS}, got {guidance_kind!r}")
        if backend not in BACKENDS:
            raise ValueError(f"parameter backend must be one of {BACKENDS}, got {backend!r}")
        dev = resolve_device(device)
        card = read_card(path)
        if card["type"] == "dcae":
            raise ModelFileError(f"{Path(path) / CONFIG} is an autoencoder; point model_dir at a latent_dit "
                                 f"or pixel_ddpm directory ({train_hint('latent_dit', 'models/latent_dit')})")
        denoiser, card = load_model(path, card["type"])
        defaults = card.get("sampling", {})
        gcfg = GuidanceConfig(
            steps=int(steps if steps is not None else defaults.get("steps", 10)),
            scale=float(guidance if guidance is not None else defaults.get("scale", 1.0)),
            strength=float(strength if strength is not None else defaults.get("strength", 0.6)),
            kind=guidance_kind or defaults.get("kind", "gradient"))
        if backend == "onnxruntime" and precision != "fp32":
            raise ValueError(f"backend onnxruntime runs fp32 graphs; precision {precision} needs backend torch")
        autoencoder, scaling, source = None, 1.0, ""
        if card["type"] == "latent_dit":
            ae_dir = (Path(path) / card["dcae"]).resolve()
            autoencoder, ae_card = load_model(ae_dir, "dcae")
            scaling = float(ae_card["arch"]["scaling_factor"])
            source = feature_source(ae_card, precision)
        size = int(card["image_size"])
        ort_denoiser = ort_autoencoder = None
        if backend == "onnxruntime":  # exported from the CPU modules, before they move to the device
            from .ort_backend import OrtAutoencoder, OrtDenoiser

            n = threads if threads > 0 else torch.get_num_threads()
            shape = _model_input_shape(card, autoencoder, size)
            ort_denoiser = OrtDenoiser(denoiser, shape, n, dev)
            if autoencoder is not None:
                ort_autoencoder = OrtAutoencoder(autoencoder, size, shape, n, dev)
        if autoencoder is not None:
            autoencoder = quantize(autoencoder, precision).to(dev)
        denoiser = quantize(denoiser, precision).to(dev)
        return cls(denoiser=denoiser, schedule=ScheduleConfig(**card["schedule"]), guidance=gcfg,
                   image_size=size, sampler=sampler, autoencoder=autoencoder,
                   scaling_factor=scaling, device=dev, precision=precision, name=Path(path).name,
                   model_hash=card.get("weights_sha256", "")[:12], seed=seed, runtime=backend,
                   ort_denoiser=ort_denoiser, ort_autoencoder=ort_autoencoder, feature_source=source)

    @staticmethod
    def card_sampling(path: str | Path) -> GuidanceConfig:
        """The sampling defaults a model directory's config.json stores (what from_model_dir uses for None)."""
        d = read_card(path).get("sampling", {})
        return GuidanceConfig(steps=int(d.get("steps", 10)), scale=float(d.get("scale", 1.0)),
                              strength=float(d.get("strength", 0.6)), kind=d.get("kind", "gradient"))

    def before_each_call(self, check: Callable[[], None]) -> None:
        """Run `check` before every network call, torch or ONNX Runtime: raising there abandons the
        synthesis at the next step (a node stopping must not wait for a long CPU synthesis)."""
        for module in (self.denoiser, self.autoencoder):
            if module is not None:
                module.register_forward_pre_hook(lambda _module, _inputs: check())
        for graph in (getattr(self.ort_denoiser, "graph", None), getattr(self.ort_autoencoder, "encoder", None),
                      getattr(self.ort_autoencoder, "decoder", None)):
            if graph is not None:
                graph.before.append(check)

    @property
    def backend(self) -> str:
        return f"{'ort' if self.runtime == 'onnxruntime' else 'torch'}-{self.device.type}-{self.precision}"

    def model_size_mb(self) -> float:
        """Denoiser (+ autoencoder) parameter and buffer bytes as loaded, in MB."""
        size = model_size_mb(self.denoiser)
        return size + (model_size_mb(self.autoencoder) if self.autoencoder is not None else 0.0)

    def validate(self, rgb: np.ndarray) -> None:
        s = self.image_size
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.shape != (s, s, 3):
            got = f"{getattr(rgb, 'shape', None)} {getattr(rgb, 'dtype', type(rgb).__name__)}"
            raise ValueError(f"synthesizer expects a {s}x{s}x3 uint8 RGB frame (the preprocess node's "
                             f"ood/image), got {got}")

    def synthesize(self, rgb: np.ndarray) -> np.ndarray:
        """One frame; timing of the parts in `last_timing`."""
        self.validate(rgb)
        # the noise is drawn on the CPU whatever the device: CUDA's generator gives another stream for the
        # same seed, and a synthesis (and the nominal statistics fitted to its errors) must not depend on it
        gen = torch.Generator().manual_seed(self.seed)
        x = torch.from_numpy(rgb).to(self.device).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        gradient = self.guidance.kind == "gradient" and self.guidance.scale > 0  # needs torch's backward
        model = _TimedModel(self.denoiser if gradient or self.ort_denoiser is None else self.ort_denoiser, self.device)
        with torch.no_grad():
            t0 = _clock(self.device)
            y = self._encode(x)
            t1 = _clock(self.device)
            out = guided_sample(model, y, self.scheduler, self.guidance, gen)
            t2 = _clock(self.device)
            out = self._decode(out)
            img = ((out[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
            t3 = time.perf_counter()
        self.last_timing = SynthesisTiming((t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3, model.ms, model.calls)
        return np.ascontiguousarray(img)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled latents; keeps the encoder's first block outputs in `last_features` (no extra work)."""
        self.last_features = ()
        if self.autoencoder is None:
            return x
        if self.ort_autoencoder is not None:
            latent, *maps = self.ort_autoencoder.encoder.run(x)
        else:
            latent, maps = encode_with_features(self.autoencoder, x)
        self.last_features = tuple(np.ascontiguousarray(m[0].float().cpu().numpy()) for m in maps)
        return latent * self.scaling_factor

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.autoencoder is None:
            return z
        if self.ort_autoencoder is not None:
            return self.ort_autoencoder.decoder(z / self.scaling_factor).clamp(-1.0, 1.0)
        return decode(self.autoencoder, z, self.scaling_factor)


def _model_input_shape(card: dict, autoencoder: nn.Module | None, size: int) -> tuple[int, ...]:
    """(1, C, S, S) of what the denoiser sees: the DC-AE latent or the frame."""
    if autoencoder is None:
        return (1, 3, size, size)
    arch = card["arch"]
    return (1, int(arch["latent_channels"]), int(arch["latent_size"]), int(arch["latent_size"]))
