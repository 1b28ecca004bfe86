"""Segment pooling (anomalies by synthesis, docs/methods.md#segment-pooling): the discrepancy map averaged
inside image segments.

A synthesizer changes an anomaly unevenly (edges more than the middle); averaging over the segment that
holds it fills the whole object, and averages noise away elsewhere. Segments are sorted by area, largest
first, and painted in that order, so each pixel belongs to the smallest segment covering it: an object
mask nested in a ground mask keeps its own mean. Pixels in no segment keep their own value.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def disjoint_labels(masks: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Int32 label image: -1 outside every mask, else the index (in area order, largest first) of the
    smallest mask covering the pixel."""
    labels = np.full(shape, -1, dtype=np.int32)
    order = sorted(range(len(masks)), key=lambda i: -int(np.count_nonzero(masks[i])))
    for rank, i in enumerate(order):
        m = np.asarray(masks[i], dtype=bool)
        if m.shape != shape:
            raise ValueError(f"segment {i} has shape {m.shape}, expected {shape}")
        labels[m] = rank
    return labels


def pool_labels(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each labelled region (label >= 0) filled with the mean of `values` over it; -1 keeps its value."""
    if values.shape != labels.shape:
        raise ValueError(f"values {values.shape} and labels {labels.shape} differ in shape")
    inside = labels >= 0
    if not inside.any():
        return values.astype(np.float32, copy=True)
    lab = labels[inside]
    counts = np.bincount(lab)
    sums = np.bincount(lab, weights=values[inside].astype(np.float64))
    means = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    out = values.astype(np.float32, copy=True)
    out[inside] = means[lab]
    return out


def pool_segments(values: np.ndarray, masks: Sequence[np.ndarray]) -> np.ndarray:
    """The paper's pooling of `values` (HxW) over boolean segment masks."""
    return pool_labels(values, disjoint_labels(masks, values.shape))
