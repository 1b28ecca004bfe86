"""vae_detector_node over real rclpy + Fast DDS, with tiny models built here (32x32)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from ood_monitor.core.alarm_calibration import AlarmTarget, calibrate_alarms
from ood_monitor.core.detector import score_frameset
from ood_monitor.core.vae import VaeConfig, build_model
from ood_monitor.core.vae.dataset import FrameSet
from ood_monitor.core.vae.io import ModelCard, ModelFileError, load_encoder, read_card, save_model, write_card
from ood_monitor.nodes.vae_detector_node import VaeDetectorNode
from ood_monitor.ros.image import array_to_image
from ood_msgs.msg import OODScore

from ros_harness import RosHarness, wait_until

pytestmark = pytest.mark.ros
SIZE = 32


def frames(kind: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "image":
        return rng.integers(60, 120, size=(n, SIZE, SIZE, 3), dtype=np.uint8)
    return rng.normal(0.0, 0.5, size=(n, SIZE, SIZE, 2)).astype(np.float32)


def make_model(tmp_path: Path, kind: str, calibration: list[float] | None = None) -> Path:
    cfg = VaeConfig(kind=kind, height=SIZE, width=SIZE, latent=8, widths=(8, 16), hidden=32, dropout=0.2)
    torch.manual_seed(0)
    path = tmp_path / f"vae_{kind}"
    save_model(path, build_model("beta_vae", cfg).eval(), ModelCard("beta_vae", cfg, selected_dims=[1, 2, 5]))
    encoder, card = load_encoder(path)
    if calibration is None:
        raw = frames(kind, 100, seed=1)
        fs = FrameSet(kind, raw, np.zeros(100, bool), np.array(["in_distribution"] * 100, object),
                      np.array(["none"] * 100, object), np.zeros(100, np.int64), np.arange(100), "h")
        calibration = np.sort(score_frameset(encoder, card, fs)).tolist()
    card.calibration = {"scores": calibration, "selected_dims": card.selected_dims}
    card.alarm = calibrate_alarms(np.asarray(calibration)).to_dict(AlarmTarget())
    write_card(path, card)
    return path


def header(i: int) -> Header:
    h = Header(frame_id="cam")
    t = 1_700_000_000 * 10**9 + i * 66_666_667
    h.stamp.sec, h.stamp.nanosec = t // 10**9, t % 10**9
    return h


@pytest.fixture
def ros():
    with RosHarness() as h:
        yield h


def start(ros: RosHarness, model: Path, detector: str, **params) -> VaeDetectorNode:
    overrides = [Parameter("detector", value=detector), Parameter("model_dir", value=str(model)),
                 Parameter("input_height", value=SIZE), Parameter("input_width", value=SIZE)]
    overrides += [Parameter(k, value=v) for k, v in params.items()]
    return ros.add(VaeDetectorNode(f"vae_{detector}_detector", context=ros.context, parameter_overrides=overrides))


def send(ros: RosHarness, topic: str, msgs: list[Image], handled: Callable[[], int]) -> None:
    """Publish one frame at a time, each once the node has handled the one before.

    The detector's input is best effort, keep last 1 (as deployed): a burst on a loaded machine may
    drop frames, which would make the tests depend on CI load rather than on the node.
    """
    pub = ros.publisher(Image, topic)
    ros.wait_for_subscribers(pub)
    start = handled()
    for i, m in enumerate(msgs):
        pub.publish(m)
        assert wait_until(lambda i=i: handled() >= start + i + 1, 10), f"frame {i} on {topic} not handled"


@pytest.mark.parametrize("kind,topic,encoding", [("image", "ood/image", "rgb8"), ("flow", "ood/flow", "32FC2"),
                                                 ("flow", "ood/flow", "32FC3")])
def test_scores_every_frame_with_the_input_header(ros, tmp_path, kind, topic, encoding):
    start(ros, make_model(tmp_path, kind), kind)
    scores = ros.collect(OODScore, f"ood/score/{kind}")
    sent_frames = frames(kind, 6, seed=2)
    if encoding == "32FC3":  # flow with the warp residual as a third channel: the VAE reads u, v
        sent_frames = np.concatenate([sent_frames, np.full(sent_frames.shape[:3] + (1,), 3.0, np.float32)], axis=3)
    sent = [array_to_image(f, encoding, header=header(i)) for i, f in enumerate(sent_frames)]
    send(ros, topic, sent, lambda: len(scores))
    for s, m in zip(scores, sent, strict=True):
        assert s.header == m.header and s.detector == kind
        assert np.isfinite(s.score) and 0.0 < s.p_value <= 1.0 and s.latency_ms > 0
        assert np.isnan(s.uncertainty) and not s.is_ood  # in-distribution, MC off


def test_alarm_fires_on_a_shift_and_mc_dropout_reports_uncertainty(ros, tmp_path):
    model = make_model(tmp_path, "image", calibration=[-1.0] * 50)  # every frame stranger than calibration
    start(ros, model, "image", alarm_test="cusum", cusum_delta=2.0, cusum_threshold=10.0, mc_samples=16)
    scores = ros.collect(OODScore, "ood/score/image")
    send(ros, "ood/image", [array_to_image(f, "rgb8", header=header(i)) for i, f in enumerate(frames("image", 7, 3))],
         lambda: len(scores))
    assert len(scores) == 7
    assert [s.is_ood for s in scores] == [False] * 5 + [True, True]
    assert all(s.uncertainty > 0 for s in scores)


def test_wrong_frames_are_refused_with_a_diagnostic(ros, tmp_path):
    node = start(ros, make_model(tmp_path, "image"), "image", diagnostics_period_s=0.2)
    scores = ros.collect(OODScore, "ood/score/image")
    diags = ros.collect(DiagnosticArray, "/diagnostics")
    bad = [array_to_image(frames("image", 1, 0)[0], "bgr8", header=header(0)),
           array_to_image(np.zeros((SIZE, SIZE + 4, 3), np.uint8), "rgb8", header=header(1)),
           Image(header=header(2), height=SIZE, width=SIZE, encoding="rgb8", step=SIZE * 3, data=b"\x00" * 10)]
    send(ros, "ood/image", bad, lambda: node.stats.rejected)
    assert node.stats.rejected == 3
    assert scores == []
    assert wait_until(lambda: any(s.level >= DiagnosticStatus.WARN for d in diags for s in d.status), 5)
    values = {kv.key: kv.value for kv in diags[-1].status[0].values}
    assert values["calibration_scores"] == "100" and values["detector"] == "image"
    send(ros, "ood/image", [array_to_image(frames("image", 1, 0)[0], "rgb8", header=header(3))], lambda: len(scores))
    assert len(scores) == 1


def test_refuses_to_start_without_a_usable_model(ros, tmp_path):
    with pytest.raises(ModelFileError, match="not found: run `ood-monitor train vae"):
        start(ros, tmp_path / "missing", "image")
    model = make_model(tmp_path, "flow")
    card = read_card(model)
    card.calibration = None
    write_card(model, card)
    with pytest.raises(ModelFileError, match="no calibration scores: run `ood-monitor calibrate"):
        start(ros, model, "flow")
    with pytest.raises(ModelFileError, match="is a image model but a flow detector"):
        start(ros, make_model(tmp_path, "image"), "flow")
    with pytest.raises(RuntimeError, match="set parameter device to cuda or backend to onnxruntime"):
        start(ros, make_model(tmp_path, "image"), "image", backend="tensorrt")
    with pytest.raises(ValueError, match="set parameter backend"):
        start(ros, make_model(tmp_path, "image"), "image", backend="openvino")


def test_onnxruntime_backend_scores_like_torch_and_keeps_mc_dropout(ros, tmp_path):
    model = make_model(tmp_path, "image")
    start(ros, model, "image")
    ort = VaeDetectorNode("vae_ort", context=ros.context, parameter_overrides=[
        Parameter("detector", value="image"), Parameter("model_dir", value=str(model)),
        Parameter("input_height", value=SIZE), Parameter("input_width", value=SIZE),
        Parameter("backend", value="onnxruntime"), Parameter("mc_samples", value=8),
        Parameter("input_topic", value="ood/image_ort")])
    ros.add(ort)
    scores = ros.collect(OODScore, "ood/score/image")
    raw = frames("image", 4, seed=5)
    send(ros, "ood/image", [array_to_image(f, "rgb8", header=header(i)) for i, f in enumerate(raw)], lambda: len(scores))
    send(ros, "ood/image_ort", [array_to_image(f, "rgb8", header=header(i)) for i, f in enumerate(raw)],
         lambda: len(scores))
    assert len(scores) == 8, len(scores)
    torch_scores = {s.header.stamp.sec * 10**9 + s.header.stamp.nanosec: s for s in scores if np.isnan(s.uncertainty)}
    ort_scores = [s for s in scores if not np.isnan(s.uncertainty)]
    assert len(torch_scores) == 4 and len(ort_scores) == 4
    for s in ort_scores:
        ref = torch_scores[s.header.stamp.sec * 10**9 + s.header.stamp.nanosec]
        assert s.score == pytest.approx(ref.score, rel=1e-4) and s.uncertainty > 0


def test_alarm_settings_come_from_the_model_unless_set(ros, tmp_path):
    """Without parameters the node runs the thresholds `calibrate` stored; an explicit one wins; a model
    calibrated before alarm thresholds were stored makes the node refuse to start."""
    model = make_model(tmp_path, "image")
    stored = read_card(model).alarm
    node = start(ros, model, "image")
    cfg = node.detector.monitor.cfg
    assert (cfg.window, cfg.martingale_threshold, cfg.cusum_threshold) == (
        stored["window"], stored["martingale_threshold"], stored["cusum_threshold"])
    assert f"window {stored['window']}" in node.diagnostic_values()["alarm"]
    assert node.diagnostic_values()["score"] == read_card(model).score == "kl"
    assert cfg.score_tolerance == stored.get("score_tolerance", 1.0)
    other = start(ros, model, "image", window=7, martingale_threshold=12.5, score_tolerance=2.0)
    assert (other.detector.monitor.cfg.window, other.detector.monitor.cfg.martingale_threshold) == (7, 12.5)
    # a frame scoring twice a calibration score gets that score's p-value
    mon = other.detector.monitor
    assert mon.p_value(2.0 * float(mon.cal[len(mon.cal) // 2])) == node.detector.monitor.p_value(float(mon.cal[len(mon.cal) // 2]))
    assert other.detector.monitor.cfg.cusum_threshold == stored["cusum_threshold"]
    card = read_card(model)
    card.alarm = {}
    write_card(model, card)
    with pytest.raises(ModelFileError, match="no calibrated alarm thresholds: run `ood-monitor calibrate"):
        start(ros, model, "image")
    fixed = start(ros, model, "image", martingale="mixture", epsilon=0.5, window=4, martingale_threshold=8.0,
                  cusum_delta=2.0, cusum_threshold=20.0, p_floor=0.005, tail="none",
                  score_tolerance=1.0)  # every setting given: no need for it
    assert fixed.detector.monitor.cfg.window == 4
