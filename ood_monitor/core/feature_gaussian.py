"""A Gaussian over a few named per-frame statistics, scored by squared Mahalanobis distance.

Why one class: the flow detector's motion term (core/motion.py) and the image detector's photometric
part (core/photometric.py) are the same estimator over different statistics: the training frames' mean
and a Ledoit-Wolf shrunk covariance (a few hundred frames of one drive leave the sample covariance
near-singular, and a new scene then scored ~1e12 through its near-zero directions).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np


def rgb_frame_rows(frames: np.ndarray, statistics: Callable[[np.ndarray], np.ndarray], width: int,
                   name: str) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB frames -> (N, width) rows of `statistics(frame)`; anything else is refused
    with what it was (the image detector's parts read the model input, never floats or grey frames)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{name} statistics need (N, H, W, 3) uint8 RGB frames, got {frames.shape} {frames.dtype}")
    return np.stack([statistics(f) for f in frames]) if len(frames) else np.zeros((0, width))


def shrunk_gaussian(features: np.ndarray, jitter: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Mean and precision of (N, F) feature rows, the covariance shrunk by Ledoit-Wolf (a few hundred frames
    of one drive) plus `jitter` on the diagonal."""
    from sklearn.covariance import LedoitWolf

    features = np.asarray(features, np.float64)
    cov = LedoitWolf().fit(features).covariance_ + jitter * np.eye(features.shape[1])
    return features.mean(axis=0), np.linalg.inv(cov)


def squared_mahalanobis(features: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """(N,) squared Mahalanobis distances of (N, F) feature rows (or one row) to a `shrunk_gaussian`."""
    d = np.atleast_2d(np.asarray(features, np.float64)) - mean
    return np.einsum("ij,jk,ik->i", d, precision, d)


@dataclass(frozen=True)
class FeatureGaussian:
    """Training mean and shrunk precision of the statistics `FEATURES` that a subclass's `EXTRACT` computes
    from (N, ...) raw frames."""

    FEATURES: ClassVar[tuple[str, ...]]
    NAME: ClassVar[str]
    EXTRACT: ClassVar[Callable[[np.ndarray], np.ndarray]]

    mean: np.ndarray
    precision: np.ndarray

    @classmethod
    def min_frames(cls) -> int:
        """Fewest training frames the statistics are fitted on (a covariance of the features needs them)."""
        return 2 * len(cls.FEATURES) + 1

    def features(self, frames: np.ndarray) -> np.ndarray:
        return self.EXTRACT(frames)

    @classmethod
    def fit(cls, features: np.ndarray, jitter: float = 1e-6) -> FeatureGaussian:
        features = np.asarray(features, np.float64)
        if features.ndim != 2 or features.shape[1] != len(cls.FEATURES) or len(features) < cls.min_frames():
            raise ValueError(f"{cls.NAME} statistics need at least {cls.min_frames()} frames of "
                             f"{len(cls.FEATURES)} features, got {features.shape}")
        return cls(*shrunk_gaussian(features, jitter))

    @classmethod
    def fit_frames(cls, frames: np.ndarray) -> FeatureGaussian:
        """`fit` on raw frames, read block by block (they may be a memory map on disk)."""
        from ood_monitor.data.spool import chunks

        return cls.fit(np.concatenate([cls.EXTRACT(block) for block in chunks(frames)]))

    def distance(self, features: np.ndarray) -> np.ndarray:
        """(N,) squared Mahalanobis distances of (N, F) feature rows to the training frames."""
        return squared_mahalanobis(features, self.mean, self.precision)

    def __call__(self, mu: np.ndarray, logvar: np.ndarray, features: np.ndarray) -> np.ndarray:
        """(N,) distances as a score term; one features row is broadcast over N posteriors (MC-dropout
        samples of one frame), which the term does not depend on."""
        dist = self.distance(features)
        return np.broadcast_to(dist, (len(mu),)) if dist.size == 1 else dist

    def to_dict(self) -> dict:
        return {"features": list(self.FEATURES), "mean": self.mean.tolist(), "precision": self.precision.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> FeatureGaussian:
        if list(d.get("features", [])) != list(cls.FEATURES):
            raise ValueError(f"{cls.NAME} statistics of features {d.get('features')}, expected {list(cls.FEATURES)}")
        mean, precision = np.asarray(d["mean"], np.float64), np.asarray(d["precision"], np.float64)
        if mean.shape != (len(cls.FEATURES),) or precision.shape != (len(cls.FEATURES),) * 2:
            raise ValueError(f"{cls.NAME} statistics have mean {mean.shape} and precision {precision.shape}")
        return cls(mean, precision)
