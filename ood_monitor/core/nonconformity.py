"""Nonconformity scores of the VAE detectors (docs/methods.md#vae-detectors): higher = stranger.

The run-time score is the KL divergence between the encoder's posterior N(mu, sigma^2) and the prior
N(0, I), summed over the k latent dimensions with the highest mean KL on training data (the dimensions
the model actually uses; collapsed ones only add noise). It needs the encoder alone.

The KL is one-sided: a frame whose posterior is *closer* to the prior than usual (a frozen camera's
all-zero flow, rain or sensor noise that the encoder answers with wide, uninformative posteriors) scores
low and passes. Two two-sided options measure how far a frame's posterior is from the posteriors of the
training frames instead, in both directions, from per-dimension statistics stored in config.json:

* `kl_deviation`        sum over dims of ((KL_d - mean_d) / std_d)^2   (training KL per dimension)
* `posterior_deviation` sum over dims of ((mu_d - mean_d) / std_d)^2 + ((logvar_d - mean_d) / std_d)^2

Both are as cheap as the KL (a few dozen flops per frame) and need the encoder alone.

* `kl_texture`          `kl_deviation` plus the texture term of core/texture.py (image models): how far
                        the frame's fine texture is from what its posterior predicts. The latent alone
                        misses shifts of fine texture (sensor noise, rain, blur, lens dirt); this term
                        sees them, from the encoder's outputs and one cheap filter of the frame.
* `posterior_motion`    `posterior_deviation` plus the motion term of core/motion.py (flow models): how far
                        the frame's global camera motion (mean flow, speed, expansion, rotation, quadrant
                        means) is from the training drives', with the warp residual (how well the flow
                        explains the next frame) when the flow carries it. Small real recordings left the
                        latent blind to dropped, shuffled and reversed frames that these statistics show.
* `photometric`         the photometric statistics of core/photometric.py alone (global light, colour,
                        sharpness; image models): what `calibrate` reads as the second part below.
* `kl_texture_photometric`  the larger of `kl_texture` and `photometric`, each divided by its own scale:
                        its tolerance times its largest calibration score, both measured by `calibrate`
                        (docs/methods.md#photometric-part). The texture term drifts with ordinary footage
                        and needs a wide tolerance; the photometric statistics drift less, and on their
                        own scale they pass fog, brightness and blur that the wide tolerance hid.
* `structure`           the local-structure statistics of core/structure.py alone (edge coherence,
                        Laplacian / gradient ratio; image models): the third part below.
* `kl_texture_photometric_structure`  the largest of `kl_texture`, `photometric` and `structure`, each on
                        its own scale as above: the structure part sees an elastic warp, pixelation and
                        JPEG blocks that leave texture, light and colour alone.
* `change`              a frame's photometric and structure statistics against the frames just before it
                        (core/change.py; image models): the fourth part below. Stateful: frames must come in
                        stream order, and `restart` starts a new sequence.
* `kl_texture_photometric_structure_change`  the four parts, each on its own scale: the change part sees a
                        corruption arrive from one frame to the next on a moving camera whose calibration
                        spans views as strange as the corruption. While the change part is over its scale,
                        the frame stays out of its reference (docs/methods.md#change-part).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ood_monitor.core.change import ChangeStats, ChangeTracker
from ood_monitor.core.motion import MotionStats
from ood_monitor.core.photometric import PhotometricStats, photometric_features
from ood_monitor.core.structure import StructureStats, structure_features
from ood_monitor.core.texture import TextureHead, texture_features


def latent_kl(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """Per-dimension KL(N(mu, e^logvar) || N(0, 1)): (N, D) -> (N, D), float64."""
    mu = np.asarray(mu, dtype=np.float64)
    logvar = np.asarray(logvar, dtype=np.float64)
    return 0.5 * (mu * mu + np.exp(logvar) - logvar - 1.0)


def select_dims(mean_kl: np.ndarray, k: int, usable: np.ndarray | None = None) -> list[int]:
    """Indices of the k dims with the highest mean training KL, most informative first; dims not
    `usable` (see `stuck_dims`) come last, whatever their KL."""
    mean_kl = np.asarray(mean_kl, dtype=np.float64)
    if not 1 <= k <= mean_kl.size:
        raise ValueError(f"select k in [1, {mean_kl.size}], got {k}")
    usable = np.ones(mean_kl.size, bool) if usable is None else np.asarray(usable, bool)
    order = np.lexsort((-mean_kl, ~usable))  # usable first, then by KL descending
    return [int(i) for i in order[:k]]


def stuck_dims(stats: dict[str, list[float]], logvar_range: tuple[float, float], margin: float = 0.5) -> np.ndarray:
    """Dims whose posterior log-variance sits at the encoder's clamp on training data: their KL is large
    (a clamped variance is far from the prior) but carries no information about the frame, and its
    near-zero spread made any change look enormous. Boolean (D,)."""
    lv = np.asarray(stats["logvar_mean"], np.float64)
    lv_std = np.asarray(stats["logvar_std"], np.float64)
    lo, hi = logvar_range
    return ((lv <= lo + margin) | (lv >= hi - margin)) & (lv_std < margin)


def kl_score(mu: np.ndarray, logvar: np.ndarray, dims: list[int] | np.ndarray) -> np.ndarray:
    """KL summed over the selected dims: (N, D) x2 -> (N,)."""
    return latent_kl(mu, logvar)[:, np.asarray(dims, dtype=np.int64)].sum(axis=1)


SCORES = ("kl", "kl_deviation", "posterior_deviation", "kl_texture", "posterior_motion", "photometric",
          "kl_texture_photometric", "structure", "kl_texture_photometric_structure", "change",
          "kl_texture_photometric_structure_change")
FRAME_TERMS = {"kl_texture": "texture", "posterior_motion": "motion"}  # score -> the frame term it adds
FUSED = {"kl_texture_photometric": ("kl_texture", "photometric"),  # fused score -> its parts
         "kl_texture_photometric_structure": ("kl_texture", "photometric", "structure"),
         "kl_texture_photometric_structure_change": ("kl_texture", "photometric", "structure", "change")}
STATISTICS_ONLY = ("photometric", "structure", "change")  # scores of frame statistics alone, no latent
ScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def score_features(mu: np.ndarray, logvar: np.ndarray, dims: Sequence[int], method: str) -> np.ndarray:
    """What a two-sided score compares with training statistics: (N, D) x2 -> (N, F)."""
    idx = np.asarray(dims, dtype=np.int64)
    if method in ("kl_deviation", "kl_texture", *FUSED):
        return latent_kl(mu, logvar)[:, idx]
    if method in ("posterior_deviation", "posterior_motion"):
        return np.concatenate([np.asarray(mu, np.float64)[:, idx], np.asarray(logvar, np.float64)[:, idx]], 1)
    raise ValueError(f"no feature statistics for score {method!r}")


def latent_stats(mu: np.ndarray, logvar: np.ndarray) -> dict[str, list[float]]:
    """Per-dimension mean and std of mu, logvar and KL over a set of posteriors (the training data)."""
    kl = latent_kl(mu, logvar)
    arrays = {"mu": np.asarray(mu, np.float64), "logvar": np.asarray(logvar, np.float64), "kl": kl}
    stats = {}
    for name, a in arrays.items():
        stats[f"{name}_mean"] = [float(v) for v in a.mean(axis=0)]
        stats[f"{name}_std"] = [float(v) for v in a.std(axis=0)]
    return stats


@dataclass(frozen=True)
class Nonconformity:
    """The run-time score of a model: `method` over latent `dims`; two-sided methods standardise their
    features with `center` / `scale` (from training data, see `from_stats`); `kl_texture` adds its
    fitted `texture` head's term and needs each frame's texture cells (`frame_features`); `photometric`
    scores the frames' `photometric` statistics; `kl_texture_photometric` is the larger of those two
    parts, each divided by its entry of `part_scales`. With `change` statistics the instance holds one
    stream's reference (`tracker`): `frame_features` must see the frames in stream order."""

    method: str
    dims: tuple[int, ...]
    center: tuple[float, ...] = ()
    scale: tuple[float, ...] = ()
    texture: TextureHead | None = None
    motion: MotionStats | None = None
    photometric: PhotometricStats | None = None
    part_scales: tuple[float, ...] = ()
    structure: StructureStats | None = None
    change: ChangeStats | None = None
    tracker: ChangeTracker | None = field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.method not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {self.method!r}")
        if not self.dims:
            raise ValueError("a score needs at least one latent dim")
        if self.method not in ("kl", *STATISTICS_ONLY):
            width = len(self.dims) * (2 if self.method in ("posterior_deviation", "posterior_motion") else 1)
            if len(self.center) != width or len(self.scale) != width or min(self.scale) <= 0:
                raise ValueError(f"{self.method} needs {width} centers and positive scales")
        if self.method in ("kl_texture", *FUSED) and self.texture is None:
            raise ValueError(f"{self.method} needs the texture head fitted at training (`ood-monitor train vae` "
                             f"writes it for image models)")
        if self.method == "posterior_motion" and self.motion is None:
            raise ValueError("posterior_motion needs the motion statistics fitted at training (`ood-monitor train "
                             "vae` writes them for flow models)")
        if self.method in ("photometric", *FUSED) and self.photometric is None:
            raise ValueError(f"{self.method} needs the photometric statistics fitted at training (`ood-monitor "
                             f"train vae` writes them for image models)")
        if "structure" in (self.method, *FUSED.get(self.method, ())) and self.structure is None:
            raise ValueError(f"{self.method} needs the structure statistics fitted at training (`ood-monitor "
                             f"train photometric` adds them to an image model)")
        if "change" in (self.method, *FUSED.get(self.method, ())) and self.change is None:
            raise ValueError(f"{self.method} needs the change statistics fitted at training (`ood-monitor train "
                             f"photometric` adds them to an image model)")
        parts = len(FUSED.get(self.method, ()))
        if parts and (len(self.part_scales) != parts or not min(self.part_scales) > 0):
            raise ValueError(f"{self.method} needs {parts} positive part scales (`ood-monitor calibrate` measures them)")
        if self.change is not None:  # a frame over the change part's scale stays out of the reference
            bound = self.part_scales[-1] if parts else np.inf
            object.__setattr__(self, "tracker", ChangeTracker(self.change, bound))

    def restart(self) -> None:
        """A new sequence (a stamp gap, another recording): the change part forgets the frames before."""
        if self.tracker is not None:
            self.tracker.reset()

    @classmethod
    def from_stats(cls, method: str, dims: Sequence[int], stats: dict[str, list[float]] | None,
                   min_std: float = 1e-3, texture: TextureHead | None = None,
                   motion: MotionStats | None = None, photometric: PhotometricStats | None = None,
                   part_scales: Sequence[float] = (), structure: StructureStats | None = None,
                   change: ChangeStats | None = None) -> Nonconformity:
        """Build from per-dimension training statistics (`latent_stats`); plain KL and the frame statistics
        alone need none."""
        dims = tuple(int(d) for d in dims)
        if method == "kl":
            return cls(method, dims)
        if method == "photometric":
            return cls(method, dims, photometric=photometric)
        if method == "structure":
            return cls(method, dims, structure=structure)
        if method == "change":
            return cls(method, dims, change=change)
        if not stats:
            raise ValueError(f"score {method!r} needs latent statistics of the training data")
        names = ("mu", "logvar") if method in ("posterior_deviation", "posterior_motion") else ("kl",)
        center = [stats[f"{n}_mean"][d] for n in names for d in dims]
        raw = np.array([stats[f"{n}_std"][d] for n in names for d in dims], np.float64)
        # a dimension that barely varies on training data would turn any change into a huge z: its
        # scale is floored at a fraction of the typical selected dimension's
        scale = [float(v) for v in np.maximum(raw, max(min_std, 0.05 * float(np.median(raw))))]
        textured = method in ("kl_texture", *FUSED)
        return cls(method, dims, tuple(center), tuple(scale),
                   texture if textured and isinstance(texture, TextureHead) else None,
                   motion if method == "posterior_motion" and isinstance(motion, MotionStats) else None,
                   photometric if method in FUSED else None,
                   tuple(float(v) for v in part_scales) if method in FUSED else (),
                   structure if "structure" in FUSED.get(method, ()) else None,
                   change if "change" in FUSED.get(method, ()) else None)

    def frame_features(self, frames: np.ndarray) -> np.ndarray | None:
        """What the score's frame terms read of the raw frames: texture cells of (N, H, W, 3) uint8 images
        (`kl_texture`), then their photometric statistics (`photometric`, `kl_texture_photometric`), motion
        statistics of (N, H, W, 2) flow fields (`posterior_motion`), and last the change part's scores of
        the frames, which advance its reference (`change`: call once per frame, in stream order); else None."""
        parts = []
        if self.texture is not None:
            parts.append(texture_features(frames, self.texture.cfg))
        photometric = None if self.photometric is None and self.change is None else photometric_features(frames)
        structure = None if self.structure is None and self.change is None else structure_features(frames)
        if self.photometric is not None:
            parts.append(photometric)
        if self.structure is not None:
            parts.append(structure)
        if self.motion is not None:
            parts.append(self.motion.features(frames))
        if self.tracker is not None:  # last: __call__ reads it as the final column
            rows = np.concatenate([photometric, structure], axis=1)
            parts.append(np.array([self.tracker.update(row) for row in rows], np.float64).reshape(-1, 1))
        return np.concatenate(parts, axis=1) if parts else None

    def stream(self, mu: np.ndarray, logvar: np.ndarray, frames: np.ndarray, restarts: np.ndarray) -> np.ndarray:
        """Scores of N frames in stream order, their posteriors (mu, logvar); `restarts` (N bools): a new
        sequence starts at that frame (the change part restarts). One `frame_features` pass per run of frames
        between restarts, so a stateful score costs no more than a stateless one."""
        restarts = np.asarray(restarts, bool)
        if not len(frames):
            return np.zeros(0)
        cuts = (np.flatnonzero(restarts[1:]) + 1).tolist()
        out = []
        for start, stop in zip([0, *cuts], [*cuts, len(frames)], strict=True):
            if restarts[start]:
                self.restart()
            rows = slice(start, stop)
            out.append(self(mu[rows], logvar[rows], self.frame_features(np.asarray(frames[rows]))))
        return np.concatenate(out)

    def __call__(self, mu: np.ndarray, logvar: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
        """Scores of N posteriors: (N, D) x2 -> (N,), higher = stranger. `features`: the frames'
        `frame_features` (one row is broadcast over N posteriors of one frame)."""
        if self.method == "kl":
            return kl_score(mu, logvar, self.dims)
        needs_frames = any(t is not None for t in (self.texture, self.motion, self.photometric, self.structure,
                                                   self.change))
        if needs_frames and features is None:
            raise ValueError(f"{self.method} scores need the frames' features (Nonconformity.frame_features)")
        if self.method == "change":
            return np.broadcast_to(np.atleast_2d(features)[:, -1], (len(mu),)).astype(np.float64)
        if self.method == "photometric":
            return np.asarray(self.photometric(mu, logvar, features), np.float64)
        if self.method == "structure":
            return np.asarray(self.structure(mu, logvar, features), np.float64)
        z = (score_features(mu, logvar, self.dims, self.method) - np.asarray(self.center)) / np.asarray(self.scale)
        score = (z * z).sum(axis=1)
        features = None if features is None else np.atleast_2d(features)
        if self.texture is not None:
            cells = self.texture.cfg.grid ** 2
            score = score + self.texture(mu, logvar, features[:, :cells])
            features = features[:, cells:]
        if self.motion is not None:
            score = score + self.motion(mu, logvar, features)
        if self.photometric is not None:  # a fused score: every part on its own scale, the largest counts
            n_photo = len(self.photometric.FEATURES)
            parts = [score, self.photometric(mu, logvar, features[:, :n_photo])]
            if self.structure is not None:
                parts.append(self.structure(mu, logvar, features[:, n_photo:n_photo + len(self.structure.FEATURES)]))
            if self.change is not None:
                parts.append(np.broadcast_to(features[:, -1], (len(mu),)))
            score = np.max([p / s for p, s in zip(parts, self.part_scales, strict=True)], axis=0)
        return score


def as_score(score: ScoreFn | Sequence[int]) -> ScoreFn:
    """A score callable; a plain list of dims means the KL over those dims (arXiv 2409.00880)."""
    return score if callable(score) else Nonconformity("kl", tuple(int(d) for d in score))


@torch.no_grad()
def encode(encoder: nn.Module, batches: Callable[[slice], np.ndarray], n: int, batch: int = 256
           ) -> tuple[np.ndarray, np.ndarray]:
    """Posterior (mu, logvar) of n inputs fetched as `batches(slice)` -> (N, C, H, W) float32."""
    encoder.eval()
    mus, logvars = [], []
    for start in range(0, n, batch):
        mu, logvar = encoder(torch.from_numpy(batches(slice(start, min(n, start + batch)))))
        mus.append(mu.numpy())
        logvars.append(logvar.numpy())
    return np.concatenate(mus), np.concatenate(logvars)
