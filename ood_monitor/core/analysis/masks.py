"""Pooled anomaly confidence -> binary mask, connected regions and a frame score.

Regions are what the navigation side and the message carry: 8-connected components of the thresholded
map, each with its mean confidence, bounding box and area; components smaller than `min_region_px` are
dropped from the mask too, so the mask and the region list always agree.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Region:
    """One connected anomalous region: mean confidence, ROI (x, y, width, height) and pixel count."""

    score: float
    x: int
    y: int
    width: int
    height: int
    area_px: int


@dataclass
class MaskResult:
    mask: np.ndarray  # HxW uint8, 255 = anomalous
    regions: list[Region]  # highest score first
    frame_score: float  # highest region score, 0 when there is none


def threshold_mask(confidence: np.ndarray, threshold: float) -> np.ndarray:
    """HxW uint8 mask, 255 where confidence >= threshold."""
    return np.where(confidence >= threshold, 255, 0).astype(np.uint8)


def extract_regions(confidence: np.ndarray, threshold: float = 0.5, min_region_px: int = 0) -> MaskResult:
    """Threshold, 8-connected components with their statistics, small ones removed."""
    if confidence.ndim != 2:
        raise ValueError(f"confidence must be HxW, got shape {confidence.shape}")
    if not np.isfinite(confidence).all():
        raise ValueError("confidence map has NaN/Inf values")
    mask = threshold_mask(confidence, threshold)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return MaskResult(mask, [], 0.0)
    sums = np.bincount(labels.ravel(), weights=confidence.ravel().astype(np.float64), minlength=count)
    regions, small = [], []
    for i in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[i])
        if area < min_region_px:
            small.append(i)
            continue
        regions.append(Region(float(sums[i] / area), x, y, w, h, area))
    if small:
        mask[np.isin(labels, small)] = 0
    regions.sort(key=lambda r: -r.score)
    return MaskResult(mask, regions, regions[0].score if regions else 0.0)
