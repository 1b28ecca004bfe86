"""The message contracts hold for what the nodes publish (in-process; test_launch.py checks the same on
the launched graph with the demo bag)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from msg_contracts import check_anomaly_mask, check_camera_view, check_ood_score, msg_fields_documented
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header
from test_vae_detector_node import make_model

from ood_monitor.nodes.analysis_node import AnalysisNode
from ood_monitor.nodes.vae_detector_node import VaeDetectorNode
from ood_monitor.ros.image import array_to_image
from ood_msgs.msg import AnomalyMask, OODScore, SynthesisResult

from ros_harness import RosHarness, wait_until

pytestmark = pytest.mark.ros
MSG_DIR = Path(__file__).resolve().parents[1] / "ood_msgs" / "msg"


@pytest.fixture
def ros():
    with RosHarness() as h:
        yield h


def header(i: int) -> Header:
    h = Header(frame_id="camera")
    h.stamp.sec, h.stamp.nanosec = 1_700_000_000 + i, 0
    return h


@pytest.mark.parametrize("path", sorted(MSG_DIR.glob("*.msg")), ids=lambda p: p.name)
def test_every_message_field_is_documented(path):
    assert msg_fields_documented(path.read_text()) == []


def test_anomaly_mask_contract_at_the_prepared_size(ros):
    """AnomalyMask at the prepared frame's size, regions inside it; camera views at camera_info's size."""
    ros.add(AnalysisNode(context=ros.context, parameter_overrides=[
        Parameter("torch_threads", value=0), Parameter("feature_extractor", value="none"),
        Parameter("nominal_stats", value="none")]))
    anomalies, masks = ros.collect(AnomalyMask, "ood/anomaly"), ros.collect(Image, "ood/anomaly/mask")
    confs = ros.collect(Image, "ood/anomaly/confidence")
    info_pub = ros.publisher(CameraInfo, "camera/camera_info")
    pub = ros.publisher(SynthesisResult, "ood/synthesis")
    ros.wait_for_subscribers(pub)
    ros.wait_for_subscribers(info_pub)
    info_pub.publish(CameraInfo(header=header(0), width=320, height=240))
    wait_until(lambda: False, 0.5)
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal(110, 8, (128, 128, 3)), 0, 255).astype(np.uint8)
    edited = image.copy()
    image[40:80, 50:90] = (230, 20, 20)  # a red object the re-synthesis removed
    h = header(1)
    pub.publish(SynthesisResult(header=h, input=array_to_image(image, "rgb8", header=h),
                                synthesized=array_to_image(edited, "rgb8", header=h), steps=1, backend="test"))
    assert wait_until(lambda: anomalies and masks and confs, 20)
    a = anomalies[0]
    assert a.header == h and a.regions, "the object should give a region"
    check_anomaly_mask(a, (128, 128))
    check_camera_view(masks[0], (320, 240))
    check_camera_view(confs[0], (320, 240))


def test_ood_score_contract(ros, tmp_path):
    model = make_model(tmp_path, "image")
    ros.add(VaeDetectorNode("vae_image_detector", context=ros.context, parameter_overrides=[
        Parameter("model_dir", value=str(model)), Parameter("input_height", value=32),
        Parameter("input_width", value=32)]))
    scores = ros.collect(OODScore, "ood/score/image")
    pub = ros.publisher(Image, "ood/image")
    ros.wait_for_subscribers(pub)
    rng = np.random.default_rng(1)
    for i in range(3):
        pub.publish(array_to_image(rng.integers(0, 255, (32, 32, 3), np.uint8), "rgb8", header=header(i)))
        assert wait_until(lambda i=i: len(scores) > i, 10)
    for s in scores:
        check_ood_score(s, "image")


def test_comments_state_the_sizes_and_scores_that_are_published():
    """The comments say what the checks above verify: AnomalyMask/AnomalyRegion at the prepared frame's
    size (not the source image's), and OODScore.score names the scores the shipped models compute."""
    import json

    mask_text, region_text = (MSG_DIR / "AnomalyMask.msg").read_text(), (MSG_DIR / "AnomalyRegion.msg").read_text()
    assert "same size as the source image" not in mask_text and "source image's pixel" not in region_text
    assert "prepared frame" in mask_text and "ood/camera_info" in mask_text and "prepared frame" in region_text
    score_text = (MSG_DIR / "OODScore.msg").read_text()
    models = Path(__file__).resolve().parents[1] / "models"
    for kind in ("image", "flow"):
        shipped = json.loads((models / f"vae_{kind}" / "config.json").read_text())["score"]
        assert f"{kind}: {shipped}" in score_text, f"OODScore.score does not describe the shipped {kind} score"
