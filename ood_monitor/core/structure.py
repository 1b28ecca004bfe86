"""The structure part of the image detector's fused score: how far a frame's local edge structure is from
the training frames'.

Why: an elastic warp moves pixels by a pixel or two and leaves light, colour and overall sharpness alone,
so neither the texture term nor the photometric statistics see it (image AUROC 0.05 on the indoor report
recording, 0.22-0.68 on the tuning recordings). Straight edges turn wavy under it, and pixelation or JPEG
blocks change how fine detail relates to edge contrast: two statistics of local structure separated the
warp, pixelation and JPEG on the tuning recordings (docs/real_footage.md, local structure). As columns of
the photometric Gaussian they lowered its measured tolerance on the road clip; as a part of their own
they keep their own tolerance.

What: per 128 px model input, the structure tensor's orientation coherence on the strongest quarter of the
pixels (straight edges near 1) and the ratio of mean absolute Laplacian to mean gradient magnitude; scored
as a squared Mahalanobis distance to the training frames (core/feature_gaussian.py). Two Sobel filters,
three Gaussian blurs and a Laplacian per frame; no model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np

from ood_monitor.core.feature_gaussian import FeatureGaussian, rgb_frame_rows
from ood_monitor.core.texture import LUMA

FEATURES = ("edge_coherence", "laplacian_gradient_ratio")
SIGMA = 1.5  # px at the model size: the structure tensor's window


def frame_structure(rgb: np.ndarray) -> np.ndarray:
    """One HxWx3 uint8 RGB frame -> (edge coherence, Laplacian / gradient magnitude), float64."""
    g = cv2.transform(rgb.astype(np.float32), LUMA[None, :])  # grey levels: the constants below are in them
    gx, gy = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    jxx, jyy, jxy = (cv2.GaussianBlur(a, (0, 0), SIGMA) for a in (gx * gx, gy * gy, gx * gy))
    trace = jxx + jyy
    coherence = cv2.sqrt((jxx - jyy) ** 2 + 4.0 * jxy * jxy) / (trace + 1e-3)
    k = int(0.75 * (trace.size - 1))  # the strongest quarter: above the 75th percentile of the tensor's trace
    strong = trace > np.partition(trace.ravel(), k)[k]
    edge = float(coherence[strong].mean()) if strong.any() else 0.0
    ratio = cv2.mean(np.abs(cv2.Laplacian(g, cv2.CV_32F)))[0] / (cv2.mean(cv2.sqrt(trace))[0] + 1e-3)
    return np.array([edge, ratio], np.float64)


def structure_features(frames: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB frames -> (N, len(FEATURES))."""
    return rgb_frame_rows(frames, frame_structure, len(FEATURES), "structure")


@dataclass(frozen=True)
class StructureStats(FeatureGaussian):
    """Training mean and shrunk precision of the structure statistics."""

    FEATURES: ClassVar[tuple[str, ...]] = FEATURES
    NAME: ClassVar[str] = "structure"
    EXTRACT = staticmethod(structure_features)
