"""ROS-free preprocessing: crop geometry, intrinsics, DIS flow state machine, stage statistics."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data as skdata

from ood_monitor.core.flow import FlowConfig, FlowEstimator
from ood_monitor.core.model_input import (
    FrameConfig,
    crop_window,
    image_tensor,
    image_transform,
    prepare_frame,
)
from ood_monitor.core.preprocess import PreprocessConfig, Preprocessor
from ood_monitor.core.stage_stats import StageStats


def texture(h: int = 240, w: int = 320) -> np.ndarray:
    return cv2.cvtColor(cv2.resize(skdata.grass(), (w, h)), cv2.COLOR_GRAY2RGB)


@pytest.mark.parametrize("src,cfg,expected", [
    ((320, 240), FrameConfig(128, 128), (40, 0, 240, 240)),
    ((240, 320), FrameConfig(128, 128), (0, 40, 240, 240)),
    ((640, 480), FrameConfig(256, 128), (0, 80, 640, 320)),
    ((640, 480), FrameConfig(128, 128, crop="stretch"), (0, 0, 640, 480)),
])
def test_crop_window(src, cfg, expected):
    w = crop_window(*src, cfg)
    assert (w.x0, w.y0, w.width, w.height) == expected


def test_prepare_frame_size_and_content():
    img = texture()
    out = prepare_frame(img, FrameConfig(128, 128))
    assert out.shape == (128, 128, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    ref = cv2.resize(img[:, 40:280], (128, 128), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(out, ref)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        prepare_frame(img[:, :, 0], FrameConfig())
    with pytest.raises(ValueError, match="crop"):
        FrameConfig(crop="zoom")


def test_image_transform_maps_pixels_like_the_resize():
    cfg = FrameConfig(128, 128)
    t = image_transform(320, 240, cfg)
    # the source pixel centre (40, 0) -> top-left area of the output, (279.5, 239.5)-ish -> bottom-right
    x, y, _ = t @ np.array([40 - 0.5, -0.5, 1.0])
    assert (x, y) == pytest.approx((-0.5, -0.5))
    x, y, _ = t @ np.array([280 - 0.5, 240 - 0.5, 1.0])
    assert (x, y) == pytest.approx((127.5, 127.5))


def test_image_tensor_layout():
    x = image_tensor(np.full((4, 5, 3), 255, np.uint8))
    assert x.shape == (3, 4, 5) and x.dtype == np.float32 and x.max() == 1.0
    assert image_tensor(np.zeros((2, 4, 5, 3), np.uint8)).shape == (2, 3, 4, 5)


def test_flow_recovers_a_known_shift():
    gray = cv2.GaussianBlur(cv2.resize(skdata.gravel(), (128, 128)), (3, 3), 0)
    est = FlowEstimator()
    assert est.update(gray, 0).reset == "first"
    shifted = np.roll(gray, (1, 3), axis=(0, 1))  # content moves right 3, down 1
    flow = est.update(shifted, 10**8).flow
    assert flow.shape == (128, 128, 3) and flow.dtype == np.float32  # u, v and the warp residual
    inner = flow[16:-16, 16:-16, :2].reshape(-1, 2)
    np.testing.assert_allclose(np.median(inner, axis=0), [3.0, 1.0], atol=0.25)


def test_flow_sequence_resets():
    g = np.zeros((32, 32), np.uint8)
    est = FlowEstimator(FlowConfig(max_gap_s=0.5))
    assert est.update(g, 100).reset == "first"
    assert est.update(g, 100).duplicate
    assert est.update(g, 200).flow is not None
    assert est.update(g, 50).reset == "stamp_back"
    assert est.update(g, 50 + 10**9).reset == "gap"
    assert est.update(np.zeros((16, 16), np.uint8), 2 * 10**9).reset == "resolution"
    with pytest.raises(ValueError, match="preset"):
        FlowConfig(preset="slow")


def test_preprocessor_resets_flow_when_the_camera_resolution_changes():
    pre = Preprocessor(PreprocessConfig())
    assert pre.process(texture(), 0).reset == "first"
    assert pre.process(texture(), 10**8).flow is not None
    r = pre.process(texture(480, 640), 2 * 10**8)
    assert r.flow is None and r.reset == "resolution" and r.image.shape == (128, 128, 3)
    assert pre.process(texture(), 2 * 10**8 + 1).reset == "resolution"
    assert pre.process(texture(), 2 * 10**8 + 1).duplicate


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_stage_stats_rates_drops_levels():
    clock = FakeClock()
    s = StageStats(stale_timeout_s=1.0, clock=clock)
    assert s.level()[0] == "STALE"
    period = 100_000_000
    stamps = [i * period for i in range(10)] + [12 * period, 13 * period]  # frames 10 and 11 lost
    for st in stamps:
        clock.t += 0.1
        s.on_input(st)
        s.on_output(5.0)
    assert s.dropped == 2
    assert s.rate_hz() == pytest.approx(10.0)
    assert s.latency_percentiles()["p95"] == pytest.approx(5.0)
    assert s.level()[0] == "OK"
    s.on_reject("bad encoding")
    assert s.level() == ("WARN", "rejected input: bad encoding")
    for _ in range(5):
        s.on_reject("bad encoding")
    assert s.level()[0] == "ERROR"
    clock.t += 5.0
    assert s.level()[0] == "STALE"
