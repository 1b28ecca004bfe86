"""Encoder feature maps in a SynthesisResult (input_features, feature_shapes, feature_source) and back.

The synthesizer hands the analysis the DC-AE block outputs it computed for the input frame
(core/analysis/discrepancy.FrameFeatures). array.array in and out: rclpy copies it as one buffer (0.3 ms for
the 0.9 MB of a 128 px frame), where a numpy array would be converted number by number (40 ms)."""
from __future__ import annotations

import array
from collections.abc import Sequence

import numpy as np

from ood_monitor.core.analysis.discrepancy import FrameFeatures

MAX_MAPS = 16


def features_to_fields(maps: Sequence[np.ndarray]) -> tuple[array.array, array.array]:
    """(input_features, feature_shapes) for (C, H, W) float maps."""
    if not maps:
        return array.array("f"), array.array("I")
    values = np.concatenate([np.ascontiguousarray(m, dtype=np.float32).ravel() for m in maps])
    shapes = [int(d) for m in maps for d in m.shape]
    return array.array("f", values.tobytes()), array.array("I", shapes)


def features_from_fields(values: Sequence[float], shapes: Sequence[int], source: str) -> FrameFeatures | None:
    """The FrameFeatures a message carries; None when it carries none. ValueError when the fields do not
    fit together (then the analysis computes the features itself)."""
    if not source and len(values) == 0:
        return None
    dims = [int(d) for d in shapes]
    if len(dims) % 3 or not 0 < len(dims) // 3 <= MAX_MAPS or min(dims) <= 0:
        raise ValueError(f"feature_shapes must be (C, H, W) per map, 1..{MAX_MAPS} maps of positive sizes, got {dims}")
    flat = np.frombuffer(values, dtype=np.float32) if isinstance(values, array.array) \
        else np.asarray(values, dtype=np.float32)
    sizes = [dims[i] * dims[i + 1] * dims[i + 2] for i in range(0, len(dims), 3)]
    if sum(sizes) != flat.size:
        raise ValueError(f"feature_shapes {dims} describe {sum(sizes)} values, input_features has {flat.size}")
    if not np.isfinite(flat).all():
        raise ValueError("input_features holds NaN or infinite values")
    maps, start = [], 0
    for i, n in zip(range(0, len(dims), 3), sizes, strict=True):
        maps.append(flat[start:start + n].reshape(dims[i:i + 3]))
        start += n
    return FrameFeatures(tuple(maps), source)
