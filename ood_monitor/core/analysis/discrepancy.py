"""Per-pixel discrepancy between a camera frame and its in-distribution re-synthesis
(docs/methods.md#segment-pooling).

The learned term is the one of anomalies by synthesis: 1 - cosine similarity of dense features, upsampled to
the image. Without downloadable foundation models the features come from any torch encoder we have (DC-AE, the
β-VAE, or a fixed random conv net), behind one pluggable interface: a callable NCHW float [0, 1] -> feature
maps. Colour (CIE Lab distance) and structure (1 - local SSIM) terms catch what a small encoder misses. Every
term is in [0, 1] and the map is their weighted mean, so a threshold keeps its meaning across weights.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FeatureExtractor = Callable[[torch.Tensor], list[torch.Tensor]]
"""NCHW float tensor in [0, 1] -> list of (N, C_i, H_i, W_i) feature maps (any scales)."""

LAB_SCALE = 20.0  # ΔE76 of 20 (a clearly different colour) maps to discrepancy 1


@dataclass(frozen=True)
class FrameFeatures:
    """A frame's feature maps computed elsewhere, and which encoder computed them.

    Why: the synthesizer runs the DC-AE encoder's first blocks on the frame on its way to the latent; handed
    over with the synthesis they spare the analysis running them again (half its feature term). They are
    used only when `source` names the analysis' own encoder and their shapes are the ones it would make."""

    maps: tuple[np.ndarray, ...]  # (C, H, W) float32 each, shallowest first
    source: str  # e.g. "dcae:<weights sha256 prefix>:fp32" (core/diffusion/synthesizer.feature_source)


@dataclass(frozen=True)
class DiscrepancyConfig:
    """Weights of the three terms (a zero weight skips its computation) and their smoothing. Defaults are
    the shipped ones (scripts/tune_analysis.py on a tuning split: structure-heavy weights and a 2 px pre-blur
    separate objects from the synthesizer's small re-rendering errors best)."""

    weight_feature: float = 0.5
    weight_colour: float = 0.5
    weight_structure: float = 1.0
    blur_sigma: float = 2.0  # pre-blur (px) so sensor noise and resampling do not read as change
    ssim_sigma: float = 2.0  # Gaussian window of the local SSIM (px)
    feature_size: int = 128  # images are resized so their longer side is this before the encoder
    feature_gain: float = 3.0  # feature distances are small (a changed object ~0.2): scaled, then clipped

    def __post_init__(self) -> None:
        weights = (self.weight_feature, self.weight_colour, self.weight_structure)
        if min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"discrepancy weights must be >= 0 with a positive sum, got {weights}")
        if self.blur_sigma < 0 or self.ssim_sigma <= 0 or self.feature_size < 8 or self.feature_gain <= 0:
            raise ValueError("blur_sigma >= 0, ssim_sigma > 0, feature_size >= 8 and feature_gain > 0 required")


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape or a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"input and synthesis must be HxWx3 uint8 of one size, got {a.shape} {a.dtype} "
                         f"and {b.shape} {b.dtype}")
    if min(a.shape[:2]) < 8:
        raise ValueError(f"image {a.shape[1]}x{a.shape[0]} is too small (min 8 px)")


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(img, (0, 0), sigma) if sigma > 0 else img


def colour_term(a: np.ndarray, b: np.ndarray, blur_sigma: float = 1.0) -> np.ndarray:
    """CIE Lab ΔE76 / LAB_SCALE clipped to [0, 1]: perceptual colour change, insensitive to noise."""
    la = cv2.cvtColor(_blur(a, blur_sigma).astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    lb = cv2.cvtColor(_blur(b, blur_sigma).astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    return np.clip(np.linalg.norm(la - lb, axis=2) / LAB_SCALE, 0.0, 1.0)


def structure_term(a: np.ndarray, b: np.ndarray, sigma: float = 2.0, blur_sigma: float = 1.0) -> np.ndarray:
    """1 - local SSIM of the grey images, clipped to [0, 1]: texture and edge changes at equal colour."""
    ga = _blur(cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), blur_sigma).astype(np.float64)
    gb = _blur(cv2.cvtColor(b, cv2.COLOR_RGB2GRAY), blur_sigma).astype(np.float64)
    return np.clip(1.0 - local_ssim(ga, gb, sigma), 0.0, 1.0).astype(np.float32)


def local_ssim(a: np.ndarray, b: np.ndarray, sigma: float, data_range: float = 255.0) -> np.ndarray:
    """Per-pixel SSIM with Gaussian weights (Wang et al. 2004: K1 0.01, K2 0.03, population covariances),
    what scikit-image's structural_similarity(gaussian_weights=True, use_sample_covariance=False,
    full=True) returns, with its 3.5-sigma kernel and mirrored border, but through OpenCV's separable
    blur: 5x faster than scipy.ndimage's on a 128 px frame (1.2 -> 0.2 ms, one thread)."""
    k = 2 * int(3.5 * sigma + 0.5) + 1

    def mean(x: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(x, (k, k), sigma, borderType=cv2.BORDER_REFLECT)

    ua, ub = mean(a), mean(b)
    va, vb, vab = mean(a * a) - ua * ua, mean(b * b) - ub * ub, mean(a * b) - ua * ub
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return (2 * ua * ub + c1) * (2 * vab + c2) / ((ua * ua + ub * ub + c1) * (va + vb + c2))


def to_tensor(images: Sequence[np.ndarray], size: tuple[int, int] | None = None) -> torch.Tensor:
    """HxWx3 uint8 images -> (N, 3, H, W) float [0, 1], resized (area) to `size` = (height, width)."""
    if size is not None:
        images = [cv2.resize(im, (size[1], size[0]), interpolation=cv2.INTER_AREA) for im in images]
    arr = np.stack(images).astype(np.float32) / 255.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def feature_input_size(image_hw: tuple[int, int], feature_size: int) -> tuple[int, int]:
    """(height, width) an image is resized to before the encoder: its longer side `feature_size`."""
    h, w = image_hw
    scale = feature_size / max(h, w)
    return max(8, round(h * scale)), max(8, round(w * scale))


def feature_term(a: np.ndarray, b: np.ndarray, extractor: FeatureExtractor, feature_size: int = 128,
                 gain: float = 1.0, a_maps: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """Mean over scales of the cosine distance of the features, bilinearly upsampled to the image, times
    `gain`, clipped to [0, 1]. `a_maps`: `a`'s maps already computed by this encoder ((C, H, W) each;
    `handed_maps` checks that), so only `b` runs through it."""
    h, w = a.shape[:2]
    size = feature_input_size((h, w), feature_size)
    with torch.inference_mode():
        if a_maps is None:
            feats = extractor(to_tensor([a, b], size))
        else:
            feats = [torch.cat([torch.from_numpy(fa)[None], fb]) for fa, fb in
                     zip(a_maps, extractor(to_tensor([b], size)), strict=True)]
        if not feats:
            raise ValueError("feature extractor returned no feature maps")
        maps = [_cosine_distance(f) for f in feats]
        maps = [F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False) for m in maps]
        dist = torch.cat(maps, dim=1).mean(dim=1)[0]
    return np.clip(dist.numpy().astype(np.float32) * gain, 0.0, 1.0)


def _cosine_distance(f: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(1 - cosine similarity) / 2 between the two images' features (f: (2, C, H, W)) at each position,
    after removing each channel's mean over both: ReLU features are all positive, so raw cosines sit near 1
    and barely separate change from noise. Written as flat (C, H*W) products rather than
    F.cosine_similarity over dim 1 of a 4-D tensor: the same values, 7x faster on one CPU thread (the
    strided reductions were 2.6 of the feature term's 10.7 ms per mask)."""
    _, c, h, w = f.shape
    g = f.float().reshape(2, c, h * w)
    g = g - g.mean(dim=(0, 2), keepdim=True)
    a, b = g[0], g[1]
    norms = (a * a).sum(0).sqrt().clamp_min(eps) * (b * b).sum(0).sqrt().clamp_min(eps)
    return ((1.0 - (a * b).sum(0) / norms) / 2.0).reshape(1, 1, h, w)


class Discrepancy:
    """Weighted mean of the feature, colour and structure terms; `extractor` may be None (no learned term)."""

    def __init__(self, cfg: DiscrepancyConfig | None = None, extractor: FeatureExtractor | None = None) -> None:
        self.cfg = cfg or DiscrepancyConfig()
        self.extractor = extractor
        self.last_ms: dict[str, float] = {}  # ms per term of the last call (the per-stage profile)
        self.last_handed = ""  # why the last call's handed features were not used ("" when used or none given)

    def handed_maps(self, image: np.ndarray, features: FrameFeatures | None) -> tuple[np.ndarray, ...] | None:
        """`features`' maps when they are what this extractor would compute for `image`, else None (and the
        reason in `last_handed`)."""
        self.last_handed = ""
        if features is None or self.extractor is None:
            return None
        own = getattr(self.extractor, "source", "")
        if not own or features.source != own:
            self.last_handed = f"from {features.source or 'an unnamed encoder'}, not this analysis' {own or 'extractor'}"
            return None
        expected = getattr(self.extractor, "map_shapes", lambda *_: None)(image.shape[:2], self.cfg.feature_size)
        got = [tuple(m.shape) for m in features.maps]
        if expected is None or got != expected:
            self.last_handed = f"shapes {got}, this analysis makes {expected}"
            return None
        return features.maps

    def terms(self, image: np.ndarray, synthesized: np.ndarray,
              image_features: FrameFeatures | None = None) -> dict[str, np.ndarray]:
        """The individual terms with a positive weight (the feature term only with an extractor).
        `image_features`: the image's feature maps from elsewhere, used when `handed_maps` accepts them."""
        _check_pair(image, synthesized)
        c, out, ms = self.cfg, {}, {}
        t0 = time.perf_counter()
        if c.weight_feature > 0 and self.extractor is not None:
            out["feature"] = feature_term(image, synthesized, self.extractor, c.feature_size, c.feature_gain,
                                          self.handed_maps(image, image_features))
            ms["features"], t0 = (time.perf_counter() - t0) * 1e3, time.perf_counter()
        if c.weight_colour > 0:
            out["colour"] = colour_term(image, synthesized, c.blur_sigma)
            ms["colour"], t0 = (time.perf_counter() - t0) * 1e3, time.perf_counter()
        if c.weight_structure > 0:
            out["structure"] = structure_term(image, synthesized, c.ssim_sigma, c.blur_sigma)
            ms["structure"] = (time.perf_counter() - t0) * 1e3
        self.last_ms = ms
        if not out:
            raise ValueError("no discrepancy term enabled: set weight_colour/structure > 0 or give a feature model")
        return out

    def __call__(self, image: np.ndarray, synthesized: np.ndarray,
                 image_features: FrameFeatures | None = None) -> np.ndarray:
        """HxW float32 discrepancy in [0, 1]; identical images give 0 everywhere."""
        weights = {"feature": self.cfg.weight_feature, "colour": self.cfg.weight_colour,
                   "structure": self.cfg.weight_structure}
        terms = self.terms(image, synthesized, image_features)
        total = sum(weights[k] for k in terms)
        acc = sum(weights[k] * v for k, v in terms.items())
        return (acc / total).astype(np.float32)


# ------------------------------------------------------------------------------- feature extractors


class SequentialFeatures(nn.Module):
    """Runs `stages` one after another and returns every stage's output: multi-scale features of any
    plain conv encoder (the β-VAE trunk, a random conv net)."""

    def __init__(self, stages: Sequence[nn.Module]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


class HookFeatures:
    """Multi-scale features of any encoder through forward hooks on named submodules (e.g. DC-AE's
    `down_blocks.N`); `forward` is what is called, its result is ignored."""

    def __init__(self, module: nn.Module, layers: Sequence[str], forward: Callable[[torch.Tensor], object]) -> None:
        named = dict(module.named_modules())
        missing = [name for name in layers if name not in named]
        if missing:
            raise ValueError(f"no submodules {missing} in {type(module).__name__}")
        self.layers = list(layers)
        self._forward = forward
        self._outs: dict[str, torch.Tensor] = {}
        for name in self.layers:
            named[name].register_forward_hook(self._hook(name))

    def _hook(self, name: str):
        def store(_module, _inputs, output) -> None:
            self._outs[name] = output[0] if isinstance(output, tuple) else output
        return store

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        self._outs.clear()
        self._forward(x)
        return [self._outs[name] for name in self.layers]


def random_conv_features(widths: Sequence[int] = (16, 32, 64), seed: int = 0) -> SequentialFeatures:
    """A fixed, randomly initialised conv net (3x3, stride 2, ReLU): random features already separate
    textures and colours, which makes a model-free learned term and a test double for real encoders."""
    gen = torch.Generator().manual_seed(seed)
    stages, cin = [], 3
    for cout in widths:
        conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * (2.0 / (9 * cin)) ** 0.5)
            conv.bias.zero_()
        stages.append(nn.Sequential(conv, nn.ReLU()))
        cin = cout
    return SequentialFeatures(stages).eval()


def vae_features(model_dir: str | Path) -> SequentialFeatures:
    """The conv stages of a trained β-VAE encoder (models/vae_image): features learnt on normal terrain."""
    from ood_monitor.core.vae.io import load_encoder

    encoder, card = load_encoder(model_dir)
    convs = [m for m in encoder.trunk if not isinstance(m, (nn.Flatten, nn.Linear, nn.LeakyReLU))]
    return SequentialFeatures(convs[:-1] if len(convs) > 3 else convs).eval()


def load_dcae(model_dir: str | Path, device: str = "cpu", card: dict | None = None) -> nn.Module:
    """The synthesizer's DC-AE (ood_monitor.diffusion model directory, see core/diffusion), or a
    diffusers AutoencoderDC saved with save_pretrained. `card`: its config.json, when already read."""
    card = card if card is not None else json.loads((Path(model_dir) / "config.json").read_text())
    if card.get("type") == "dcae":
        from ood_monitor.core.diffusion.synthesizer import load_model

        return load_model(model_dir, "dcae")[0].to(device).eval()
    try:
        from diffusers import AutoencoderDC
    except ImportError as exc:
        raise RuntimeError("feature_extractor dcae needs the diffusers package (pip install diffusers)") from exc
    return AutoencoderDC.from_pretrained(str(model_dir), use_safetensors=True).to(device).eval()


class DcaeFeatures:
    """DC-AE encoder features: the outputs of its first `stages` down blocks (input mapped to [-1, 1]).

    The encoder runs only up to the last block used: the deeper block and the latent head, whose outputs
    were computed and thrown away when these features were read through forward hooks on a whole
    `encode`, cost 45 % of the feature term (the same features; test_analysis checks they are equal).
    `source` names the weights, so features the synthesizer computed with the same ones can stand in."""

    def __init__(self, model_dir: str | Path, device: str = "cpu", stages: int | None = None) -> None:
        """`stages`: None reads the blocks the synthesizer hands over (dcae.FEATURE_STAGES)."""
        from ood_monitor.core.diffusion.dcae import FEATURE_STAGES
        from ood_monitor.core.diffusion.synthesizer import feature_source

        stages = FEATURE_STAGES if stages is None else stages

        card = json.loads((Path(model_dir) / "config.json").read_text())
        model = load_dcae(model_dir, device, card)
        self.source = feature_source(card, "fp32") if card.get("type") == "dcae" else ""
        self.device = device
        self.encoder = model.encoder
        self.blocks = list(self.encoder.down_blocks)[:max(1, min(stages, len(self.encoder.down_blocks)))]
        self.multiple = 2 ** len(self.encoder.down_blocks)
        self._shapes: dict[tuple[int, int], list[tuple[int, ...]]] = {}

    def _size(self, h: int, w: int) -> tuple[int, int]:
        """The encoder needs sides divisible by its compression."""
        m = self.multiple
        return max(m, h // m * m), max(m, w // m * m)

    def map_shapes(self, image_hw: tuple[int, int], feature_size: int) -> list[tuple[int, int, int]]:
        """(C, H, W) of each map for an image of `image_hw` at `feature_size` (as feature_term resizes it)."""
        size = self._size(*feature_input_size(image_hw, feature_size))
        if size not in self._shapes:  # once per input size: a blank frame through the blocks
            with torch.inference_mode():
                self._shapes[size] = [tuple(f.shape[1:]) for f in self(torch.zeros(1, 3, *size))]
        return self._shapes[size]

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        size = self._size(*x.shape[-2:])
        if size != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        out, hidden = [], self.encoder.conv_in(x.to(self.device) * 2.0 - 1.0)
        for block in self.blocks:
            hidden = block(hidden)
            out.append(hidden.float().cpu())
        return out


def dcae_features(model_dir: str | Path, device: str = "cpu", stages: int | None = None) -> DcaeFeatures:
    """The DC-AE feature extractor of `model_dir` (see DcaeFeatures)."""
    return DcaeFeatures(model_dir, device, stages)


FEATURE_KINDS = ("auto", "none", "random", "vae", "dcae")


def make_feature_extractor(kind: str, models_dir: str | Path = "models",
                           device: str = "cpu") -> tuple[FeatureExtractor | None, str]:
    """(extractor, description). `auto` uses models/dcae when it exists, else the random conv net (on the
    demo data it separates anomalies better than the β-VAE's encoder, see bench analysis --compare);
    explicit kinds raise when their model is missing, so a configuration error is never silent."""
    if kind not in FEATURE_KINDS:
        raise ValueError(f"feature_extractor must be one of {FEATURE_KINDS}, got {kind!r}")
    root = Path(models_dir)
    if kind == "auto":
        if (root / "dcae" / "config.json").is_file():
            try:
                return dcae_features(root / "dcae", device), f"dcae ({root / 'dcae'})"
            except Exception as exc:  # a broken optional model falls back, and says so
                fallback, _ = make_feature_extractor("random")
                return fallback, f"random conv (dcae failed: {exc})"
        kind = "random"
    if kind == "none":
        return None, "none"
    if kind == "random":
        return random_conv_features(), "random conv (16-32-64, RNG seeded with 0)"
    if kind == "vae":
        return vae_features(root / "vae_image"), f"vae ({root / 'vae_image'})"
    return dcae_features(root / "dcae", device), f"dcae ({root / 'dcae'})"
