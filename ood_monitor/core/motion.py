"""The motion term of the flow detector's score: how far a frame's camera motion is from the training drives'.

Why: the flow VAE's latent reconstructs the flow field's layout, and on small real recordings it missed
gross changes of the camera's own motion that a handful of global statistics show plainly. On a
dash-cam clip (udacity solidWhiteRight, a tuning recording) the VAE's posterior deviation scored a frozen
camera 0.89, dropped frames 0.78 and shuffled frames 0.86 AUROC, while the mean flow magnitude alone
scored the frozen camera 0.93 and the mean vertical flow shuffled frames 0.90 and reversing 0.97.

What: per flow frame (px/frame at model size), the mean flow, its magnitude's mean and 90th percentile,
the expansion (divergence about the image centre: forward motion expands, reversing contracts) and the
rotation about it, and the mean flow of each quadrant; their Mahalanobis distance to the training frames'
statistics, with a Ledoit-Wolf shrunk covariance (a few hundred frames of one drive). Two-sided by
construction: a frozen camera (all statistics near zero) is as far as a jolt. With the flow's warp
residual channel (MotionResidualStats, what flow models fit by default) two more: the log of the
residual's mean and 90th percentile. Row and column sums of the flow the node already has; no model.

The contraction part (cards fitted since it, `expansion_sd`): the Mahalanobis distance is two-sided and
spreads its weight over 14-16 correlated statistics, so a camera that drives backwards (the expansion
turns into contraction) scored little more than an ordinary slow-down. The part adds (how far the
expansion falls below the training frames' mean, in training SDs)², 0 above it: a forward-driving
camera keeps its expansion; played backwards it contracts; a camera that stands or turns in place sits
near 0 either way, and the part adds little there (the standing indoor tuning cameras moved by at most
0.07 AUROC, docs/real_footage.md#contraction-part). Its weight was chosen by a rule fixed before
its runs on five tuning builds (scripts/flow_residual_probe.py --contraction; docs/real_footage.md#contraction-part).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from ood_monitor.core.feature_gaussian import FeatureGaussian

FEATURES = ("mean_u", "mean_v", "mean_speed", "p90_speed", "expansion", "rotation",
            "q00_u", "q00_v", "q01_u", "q01_v", "q10_u", "q10_v", "q11_u", "q11_v")


RESIDUAL_FEATURES = ("log_resid_mean", "log_resid_p90")
RESIDUAL_FLOOR = 0.05
"""Grey levels added before the log: far under a real camera's noise (a still camera's residual is 1-2 grey
levels), so a repeated frame (residual exactly 0) lands far below every live frame, not next to the
slowest ones."""
LINEAR_RESIDUAL_FEATURES = ("resid_mean", "resid_p90")  # an earlier release's; refused with a hint
EXPANSION = FEATURES.index("expansion")
CONTRACTION_WEIGHT = 1.0  # the rule's choice among 0, 1, 2, 4, 8 (module docstring)


def motion_features(flows: np.ndarray) -> np.ndarray:
    """(N, H, W, 2) float32 flow fields (px/frame; a third channel, the warp residual, is ignored) ->
    (N, len(FEATURES)) float64.

    Expansion and rotation are linear in the field, so they come from its row and column means (the
    radius weights depend on x or y alone), and the quadrant means from the same sums: one pass over the
    pixels for the means, one for the speed (docs/benchmarks.md#detectors: the cost per frame)."""
    flows = np.asarray(flows)
    if flows.ndim != 4 or flows.shape[-1] not in (2, 3):
        raise ValueError(f"motion features need (N, H, W, 2) flow fields, got {flows.shape}")
    u = np.ascontiguousarray(flows[..., 0], dtype=np.float32)  # (N, H, W) planes: fast reductions
    v = np.ascontiguousarray(flows[..., 1], dtype=np.float32)
    n, h, w = u.shape
    h2, w2 = h // 2, w // 2
    sizes = np.array([[h2 * w2, h2 * (w - w2)], [(h - h2) * w2, (h - h2) * (w - w2)]], np.float64)
    rx = (np.arange(w) - (w - 1) / 2.0) / (w / 2.0)  # radius in half-widths
    ry = (np.arange(h) - (h - 1) / 2.0) / (h / 2.0)
    out = []
    for c in (u, v):
        halves = [c[:, :h2].sum(axis=1, dtype=np.float64), c[:, h2:].sum(axis=1, dtype=np.float64)]  # (N, W)
        cells = np.array([[half[:, :w2].sum(axis=1), half[:, w2:].sum(axis=1)] for half in halves])  # (2, 2, N)
        out.append(((halves[0] + halves[1]) / h, c.sum(axis=2, dtype=np.float64) / w,
                    cells / sizes[..., None]))  # mean over y (N, W), mean over x (N, H), quadrant means
    (col_u, row_u, q_u), (col_v, row_v, q_v) = out
    quads = np.stack([q_u, q_v], axis=-1).transpose(2, 0, 1, 3).reshape(n, 8)  # q00_u, q00_v, q01_u, ...
    expansion = (col_u @ rx) / w + (row_v @ ry) / h
    rotation = (col_v @ rx) / w - (row_u @ ry) / h
    speed = np.sqrt(u * u + v * v).reshape(n, -1)
    return np.column_stack([col_u.mean(axis=1), col_v.mean(axis=1), speed.mean(axis=1, dtype=np.float64),
                            percentile_90(speed), expansion, rotation, quads])


def percentile_90(values: np.ndarray) -> np.ndarray:
    """np.percentile(values, 90, axis=1) (linear interpolation) from a partial sort around the two ranks."""
    pos = 0.9 * (values.shape[1] - 1)
    lo = int(np.floor(pos))
    hi = min(lo + 1, values.shape[1] - 1)
    part = np.partition(values, (lo, hi), axis=1)
    a, b = part[:, lo].astype(np.float64), part[:, hi].astype(np.float64)
    return a + (b - a) * (pos - lo)


def residual_features(flows: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) flow fields whose third channel is the warp residual (core/flow.warp_residual) ->
    (N, 2): the log of its mean and 90th percentile (grey levels, plus RESIDUAL_FLOOR).

    Why the log: the residual's spread grows with its size (a dropped frame doubles it on a fast camera,
    adds a grey level on a slow one), and its bottom matters most: a live camera never explains its next
    frame perfectly, a frozen one always does. On the two moving tuning recordings the log lifted the
    frozen camera's AUROC from 0.41 to 0.87 (RC lab track) and 0.89 to 0.93 (road) with the other motion
    kinds equal or better (docs/real_footage.md#the-residual-on-a-log-scale-the-flow-default)."""
    flows = np.asarray(flows)
    if flows.ndim != 4 or flows.shape[-1] != 3:
        raise ValueError(f"the warp residual needs (N, H, W, 3) flow fields (u, v, residual), got {flows.shape}: "
                         "this model's motion term was fitted with it; preprocess_node's flow_residual must be "
                         "true (ood/flow 32FC3), and flow recorded without it cannot be scored by this model")
    resid = np.ascontiguousarray(flows[..., 2]).reshape(len(flows), -1)
    return np.log(np.column_stack([resid.mean(axis=1, dtype=np.float64), percentile_90(resid)]) + RESIDUAL_FLOOR)


def motion_residual_features(flows: np.ndarray) -> np.ndarray:
    """`motion_features` and `residual_features` side by side: (N, H, W, 3) -> (N, 16)."""
    return np.concatenate([motion_features(flows), residual_features(flows)], axis=1)


def min_frames() -> int:
    """Fewest training frames the statistics are fitted on (a covariance of the features needs them)."""
    return MotionStats.min_frames()


def contraction(expansion: np.ndarray, mean: float, sd: float) -> np.ndarray:
    """(how far `expansion` falls below `mean`, in units of `sd`)², 0 at or above the mean."""
    return np.maximum(0.0, (mean - np.asarray(expansion, np.float64)) / sd) ** 2


@dataclass(frozen=True)
class MotionStats(FeatureGaussian):
    """Training mean and (shrunk) precision of the motion features, and the expansion's training SD;
    score = squared Mahalanobis distance + CONTRACTION_WEIGHT x the contraction part. `expansion_sd` None:
    a card fitted before the part, scored as it was calibrated (without it)."""

    FEATURES: ClassVar[tuple[str, ...]] = FEATURES
    NAME: ClassVar[str] = "motion"
    EXTRACT = staticmethod(motion_features)

    expansion_sd: float | None = None

    @classmethod
    def fit(cls, features: np.ndarray, jitter: float = 1e-6) -> MotionStats:
        """The Gaussian, and the expansion's SD (with the covariance's `jitter`, so a camera whose expansion
        never varied still gets a finite part)."""
        stats = super().fit(features, jitter)
        return replace(stats, expansion_sd=float(np.sqrt(np.asarray(features, np.float64)[:, EXPANSION].var() + jitter)))

    def distance(self, features: np.ndarray) -> np.ndarray:
        dist = super().distance(features)
        if self.expansion_sd is None:
            return dist
        expansion = np.atleast_2d(np.asarray(features, np.float64))[:, EXPANSION]
        return dist + CONTRACTION_WEIGHT * contraction(expansion, float(self.mean[EXPANSION]), self.expansion_sd)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "expansion_sd": self.expansion_sd}

    @classmethod
    def from_dict(cls, d: dict) -> MotionStats:
        stats = super().from_dict(d)
        sd = d.get("expansion_sd")
        if sd is None:
            return stats
        if not isinstance(sd, (int, float)) or not (np.isfinite(sd) and sd > 0.0):
            raise ValueError(f"motion statistics have expansion_sd {sd!r}: it must be a positive number")
        return replace(stats, expansion_sd=float(sd))

    @classmethod
    def fit_flows(cls, flows: np.ndarray) -> MotionStats:
        """`fit` on (N, H, W, 2) flow fields, read block by block (they may be a memory map on disk)."""
        return cls.fit_frames(flows)


@dataclass(frozen=True)
class MotionResidualStats(MotionStats):
    """The motion statistics with the warp residual's two (how well each flow field explains its next
    frame): what a flow model trained on flow with the residual channel fits. Chosen on the road tuning
    clip, where the two together separated all four motion anomalies (docs/real_footage.md)."""

    FEATURES: ClassVar[tuple[str, ...]] = FEATURES + RESIDUAL_FEATURES
    NAME: ClassVar[str] = "motion and warp residual"
    EXTRACT = staticmethod(motion_residual_features)


def fit_motion(flows: np.ndarray) -> MotionStats:
    """The motion term a flow set supports: with the warp residual when its fields carry it."""
    return (MotionResidualStats if flows.shape[-1] == 3 else MotionStats).fit_flows(flows)


def motion_from_dict(d: dict) -> MotionStats:
    """A card's motion statistics, of the class its feature list names."""
    if set(LINEAR_RESIDUAL_FEATURES) <= set(d.get("features", [])):
        raise ValueError("this flow model's motion term was fitted on the linear warp residual of an earlier "
                         "release, which this release scores as its log: re-fit it with `ood-monitor train motion "
                         "--model MODEL --data TRAIN_FOLDER_OR_BAG --score posterior_motion`")
    cls = MotionResidualStats if list(d.get("features", [])) == list(MotionResidualStats.FEATURES) else MotionStats
    return cls.from_dict(d)
