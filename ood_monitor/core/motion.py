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
construction: a frozen camera (all statistics near zero) is as far as a jolt. A few dozen flops per
frame on the flow the node already has; no model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ood_monitor.core.feature_gaussian import FeatureGaussian

FEATURES = ("mean_u", "mean_v", "mean_speed", "p90_speed", "expansion", "rotation",
            "q00_u", "q00_v", "q01_u", "q01_v", "q10_u", "q10_v", "q11_u", "q11_v")


def motion_features(flows: np.ndarray) -> np.ndarray:
    """(N, H, W, 2) float32 flow fields (px/frame) -> (N, len(FEATURES)) float64."""
    flows = np.asarray(flows, np.float64)
    if flows.ndim != 4 or flows.shape[-1] != 2:
        raise ValueError(f"motion features need (N, H, W, 2) flow fields, got {flows.shape}")
    n, h, w, _ = flows.shape
    u, v = flows[..., 0], flows[..., 1]
    speed = np.hypot(u, v).reshape(n, -1)
    y, x = np.mgrid[:h, :w]
    rx, ry = (x - (w - 1) / 2.0) / (w / 2.0), (y - (h - 1) / 2.0) / (h / 2.0)  # radius in half-widths
    expansion = (u * rx + v * ry).mean(axis=(1, 2))
    rotation = (v * rx - u * ry).mean(axis=(1, 2))
    quads = [flows[:, i * h // 2:(i + 1) * h // 2, j * w // 2:(j + 1) * w // 2].mean(axis=(1, 2))
             for i in range(2) for j in range(2)]
    return np.column_stack([u.mean(axis=(1, 2)), v.mean(axis=(1, 2)), speed.mean(axis=1),
                            np.percentile(speed, 90, axis=1), expansion, rotation, *[q for q in quads]])


def min_frames() -> int:
    """Fewest training frames the statistics are fitted on (a covariance of the features needs them)."""
    return MotionStats.min_frames()


@dataclass(frozen=True)
class MotionStats(FeatureGaussian):
    """Training mean and (shrunk) precision of the motion features; score = squared Mahalanobis distance."""

    FEATURES: ClassVar[tuple[str, ...]] = FEATURES
    NAME: ClassVar[str] = "motion"
    EXTRACT = staticmethod(motion_features)

    @classmethod
    def fit_flows(cls, flows: np.ndarray) -> MotionStats:
        """`fit` on (N, H, W, 2) flow fields, read block by block (they may be a memory map on disk)."""
        return cls.fit_frames(flows)
