"""Pixel- and object-level anomaly metrics of anomalies by synthesis (docs/methods.md#mask-metrics) (one
definition for evaluate, bench and tests).

- Pixel AUC-PR: average precision of per-pixel scores against the ground-truth mask, pooled over the
  frames that contain anomalies.
- F*: objects are the 8-connected components of every ground-truth class region of the semantic label
  image (anomalous classes positive, the others negative), at least 500 px at 688x550 scaled by image
  area; an object's score is the mean anomaly score over it; F1 over objects for τ ∈ {0.2, ..., 0.9};
  F* is the best.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import cv2
import numpy as np
from sklearn.metrics import average_precision_score

REFERENCE_AREA = 688 * 550
REFERENCE_MIN_OBJECT_PX = 500
TAUS = tuple(round(0.2 + 0.1 * i, 1) for i in range(8))


def min_object_px(height: int, width: int) -> int:
    """The 500 px bound at 688x550 scaled to this image's area (at least 1)."""
    return max(1, int(round(REFERENCE_MIN_OBJECT_PX * height * width / REFERENCE_AREA)))


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """scikit-learn's average precision (step-wise, ties grouped) over all pixels; NaN without positives."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    if not labels.any():
        return float("nan")
    return float(average_precision_score(labels, scores))


@dataclass
class PixelAucPr:
    """Accumulates pixel scores of anomaly frames (frames with at least `min_anomalous_px` positives)."""

    min_anomalous_px: int = 1
    _scores: list[np.ndarray] = field(default_factory=list, repr=False)
    _labels: list[np.ndarray] = field(default_factory=list, repr=False)

    def add(self, score_map: np.ndarray, gt_mask: np.ndarray) -> bool:
        """Add one frame (gt_mask: nonzero = anomalous); returns False when it is not an anomaly frame."""
        if score_map.shape != gt_mask.shape:
            raise ValueError(f"score map {score_map.shape} and mask {gt_mask.shape} differ in shape")
        positive = gt_mask > 0
        if int(positive.sum()) < self.min_anomalous_px:
            return False
        self._scores.append(np.asarray(score_map, np.float32).ravel())
        self._labels.append(positive.ravel())
        return True

    @property
    def frames(self) -> int:
        return len(self._scores)

    def value(self) -> float:
        if not self._scores:
            return float("nan")
        return average_precision(np.concatenate(self._scores), np.concatenate(self._labels))


def pixel_auc_pr(score_maps: Iterable[np.ndarray], gt_masks: Iterable[np.ndarray]) -> float:
    acc = PixelAucPr()
    for s, m in zip(score_maps, gt_masks, strict=True):
        acc.add(s, m)
    return acc.value()


def object_scores(score_map: np.ndarray, semantic: np.ndarray, anomaly_ids: Iterable[int],
                  ignore_ids: Iterable[int] = (), min_px: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, is_anomaly) of the ground-truth objects of one frame."""
    if score_map.shape != semantic.shape:
        raise ValueError(f"score map {score_map.shape} and semantic {semantic.shape} differ in shape")
    min_px = min_object_px(*semantic.shape) if min_px is None else min_px
    anomaly_ids, ignore = set(int(i) for i in anomaly_ids), set(int(i) for i in ignore_ids)
    scores, positive = [], []
    flat_scores = score_map.astype(np.float64).ravel()
    for cls in np.unique(semantic):
        if int(cls) in ignore:
            continue
        count, labels, stats, _ = cv2.connectedComponentsWithStats((semantic == cls).astype(np.uint8), connectivity=8)
        big = [i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] >= min_px]
        if not big:
            continue
        sums = np.bincount(labels.ravel(), weights=flat_scores, minlength=count)
        for i in big:
            scores.append(sums[i] / stats[i, cv2.CC_STAT_AREA])
            positive.append(int(cls) in anomaly_ids)
    return np.asarray(scores, np.float64), np.asarray(positive, bool)


@dataclass
class FStar:
    """Accumulates ground-truth objects over frames; F* = best F1 over the thresholds `taus`."""

    anomaly_ids: tuple[int, ...]
    ignore_ids: tuple[int, ...] = ()
    taus: tuple[float, ...] = TAUS
    _scores: list[np.ndarray] = field(default_factory=list, repr=False)
    _positive: list[np.ndarray] = field(default_factory=list, repr=False)

    def add(self, score_map: np.ndarray, semantic: np.ndarray) -> None:
        s, p = object_scores(score_map, semantic, self.anomaly_ids, self.ignore_ids)
        self._scores.append(s)
        self._positive.append(p)

    def f1_per_tau(self) -> dict[float, float]:
        scores = np.concatenate(self._scores) if self._scores else np.zeros(0)
        positive = np.concatenate(self._positive) if self._positive else np.zeros(0, bool)
        out = {}
        for tau in self.taus:
            predicted = scores >= tau
            tp = int(np.sum(predicted & positive))
            fp = int(np.sum(predicted & ~positive))
            fn = int(np.sum(~predicted & positive))
            out[tau] = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        return out

    def value(self) -> tuple[float, float]:
        """(F*, the τ achieving it)."""
        per_tau = self.f1_per_tau()
        tau = max(per_tau, key=lambda t: (per_tau[t], -t))
        return per_tau[tau], tau
