"""Every field of a published ood_msgs message against its comment in ood_msgs/msg/*.msg: sizes,
encodings, ranges. Each checker names the fields it checks and fails when the message has one it does
not know, so a new field cannot go unchecked. Shared by test_msg_contracts.py (nodes in-process) and
test_launch.py (the launched graph on the demo bag)."""
from __future__ import annotations

import math

import numpy as np

from ood_monitor.ros.image import image_to_array

SEGMENTERS = {"sam", "sam_onnx", "slic", "felzenszwalb"}


def _covers(msg, checked: set[str]) -> None:
    fields = set(msg.get_fields_and_field_types())
    assert fields == checked, f"{type(msg).__name__}: fields {sorted(fields - checked)} unchecked"


def check_ood_score(m, detector: str, mc_dropout: bool = False) -> None:
    """OODScore.msg."""
    _covers(m, {"header", "detector", "score", "p_value", "log_martingale", "cusum", "is_ood", "uncertainty",
                "latency_ms"})
    assert m.detector == detector
    assert math.isfinite(m.score)  # not bounded, finite
    assert 0.0 < m.p_value <= 1.0
    assert math.isfinite(m.log_martingale)
    assert math.isfinite(m.cusum) and m.cusum >= 0.0
    assert isinstance(m.is_ood, bool)
    assert (m.uncertainty >= 0.0) if mc_dropout else math.isnan(m.uncertainty)
    assert math.isfinite(m.latency_ms) and m.latency_ms >= 0.0


def check_anomaly_region(r, mask: np.ndarray, threshold: float) -> None:
    """AnomalyRegion.msg, inside its AnomalyMask."""
    _covers(r, {"id", "score", "roi", "area_px"})
    assert threshold - 1e-6 <= r.score <= 1.0
    x, y, w, h = r.roi.x_offset, r.roi.y_offset, r.roi.width, r.roi.height
    assert w > 0 and h > 0 and x + w <= mask.shape[1] and y + h <= mask.shape[0], "roi outside the mask"
    assert 0 < r.area_px <= w * h
    assert (mask[y:y + h, x:x + w] == 255).sum() >= r.area_px, "fewer anomalous pixels in the roi than area_px"


def check_anomaly_mask(m, prepared_wh: tuple[int, int], threshold: float = 0.5) -> None:
    """AnomalyMask.msg: confidence and mask at the prepared frame's size (ood/image, ood/camera_info)."""
    _covers(m, {"header", "confidence", "mask", "frame_score", "regions", "segmenter", "latency_ms"})
    assert (m.confidence.width, m.confidence.height) == prepared_wh
    assert m.confidence.encoding in ("32FC1", "mono8")
    conf = image_to_array(m.confidence).astype(np.float64)
    if m.confidence.encoding == "mono8":
        conf /= 255.0
    assert np.isfinite(conf).all() and conf.min() >= 0.0 and conf.max() <= 1.0
    assert (m.mask.encoding, m.mask.width, m.mask.height) == ("mono8", *prepared_wh)
    mask = image_to_array(m.mask)
    assert set(np.unique(mask).tolist()) <= {0, 255}
    assert 0.0 <= m.frame_score <= 1.0
    assert m.frame_score == (max(r.score for r in m.regions) if m.regions else 0.0)
    assert [r.id for r in m.regions] == list(range(len(m.regions)))
    assert all(a.score >= b.score for a, b in zip(m.regions, m.regions[1:], strict=False)), "not highest first"
    for r in m.regions:
        check_anomaly_region(r, mask, threshold)
    assert m.segmenter in SEGMENTERS
    assert math.isfinite(m.latency_ms) and m.latency_ms >= 0.0


def check_synthesis(m, steps: int | None = None) -> None:
    """SynthesisResult.msg."""
    _covers(m, {"header", "input", "synthesized", "steps", "guidance", "backend", "latency_ms", "input_features",
                "feature_shapes", "feature_source"})
    assert m.input.encoding == "rgb8" and m.synthesized.encoding == "rgb8"
    assert (m.input.width, m.input.height) == (m.synthesized.width, m.synthesized.height)
    assert m.input.header == m.header and m.synthesized.header == m.header
    assert m.steps >= 1 and (steps is None or m.steps == steps)
    assert math.isfinite(m.guidance) and m.guidance >= 0.0
    assert m.backend
    assert math.isfinite(m.latency_ms) and m.latency_ms >= 0.0
    shapes = list(m.feature_shapes)
    assert len(shapes) % 3 == 0 and bool(shapes) == bool(m.feature_source) == (len(m.input_features) > 0)
    sizes = [shapes[i] * shapes[i + 1] * shapes[i + 2] for i in range(0, len(shapes), 3)]
    assert sum(sizes) == len(m.input_features)
    assert not m.feature_source or m.feature_source.startswith("dcae:")
    assert np.isfinite(np.frombuffer(m.input_features, dtype=np.float32)).all()


def check_camera_view(image, camera_wh: tuple[int, int]) -> None:
    """ood/anomaly/mask and ood/anomaly/confidence: mono8 at the camera's resolution."""
    assert (image.encoding, image.width, image.height) == ("mono8", *camera_wh)


def msg_fields_documented(text: str) -> list[str]:
    """Fields of a .msg file with no comment line right above them (should be none)."""
    lines, bare = text.splitlines(), []
    for i, line in enumerate(lines):
        if line.strip() and not line.startswith("#") and (i == 0 or not lines[i - 1].startswith("#")):
            bare.append(line.split()[-1])
    return bare
