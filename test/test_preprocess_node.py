"""preprocess_node over real rclpy + Fast DDS: outputs, headers, flow direction, drops, bad input."""
from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from skimage import data as skdata
from std_msgs.msg import Header

from ood_monitor.nodes.preprocess_node import PreprocessNode
from ood_monitor.ros.image import array_to_compressed, array_to_image, image_to_array
from ood_monitor.ros.qos import sensor_qos

from ros_harness import RosHarness, wait_until

pytestmark = pytest.mark.ros
PERIOD_NS = 66_666_667  # 15 Hz


def zoom_sequence(n: int, step: float, width: int = 320, height: int = 240) -> list[np.ndarray]:
    """Camera moving along its optical axis over a textured wall: step > 0 approaches (flow
    expands from the centre), step < 0 backs away (flow contracts)."""
    tex = cv2.cvtColor(skdata.gravel(), cv2.COLOR_GRAY2RGB)
    tex = cv2.resize(tex, (width * 2, height * 2))
    frames = []
    for i in range(n):
        s = 1.0 + step * i
        m = cv2.getRotationMatrix2D((width, height), 0.0, s)
        big = cv2.warpAffine(tex, m, (width * 2, height * 2), borderMode=cv2.BORDER_REFLECT)
        frames.append(np.ascontiguousarray(big[height // 2:height // 2 + height, width // 2:width // 2 + width]))
    return frames


def header(i: int, frame_id: str = "camera", t0: int = 1_700_000_000 * 10**9) -> Header:
    h = Header(frame_id=frame_id)
    t = t0 + i * PERIOD_NS
    h.stamp.sec, h.stamp.nanosec = t // 10**9, t % 10**9
    return h


def stamp_of(msg) -> int:
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


@pytest.fixture
def ros():
    with RosHarness() as h:
        yield h


def start_node(ros: RosHarness, **params) -> PreprocessNode:
    overrides = [Parameter(k, value=v) for k, v in params.items()]
    return ros.add_isolated(PreprocessNode(context=ros.context, parameter_overrides=overrides))


def publish_paced(pub, msgs, period_s: float = 0.05) -> None:
    for m in msgs:
        pub.publish(m)
        time.sleep(period_s)


def test_outputs_keep_header_and_have_model_size(ros):
    start_node(ros)
    images = ros.collect(Image, "ood/image")
    flows = ros.collect(Image, "ood/flow")
    pub = ros.publisher(Image, "camera/image_raw")
    ros.wait_for_subscribers(pub)
    frames = zoom_sequence(8, 0.02)
    sent = [array_to_image(f, "rgb8", header=header(i, "cam_front")) for i, f in enumerate(frames)]
    publish_paced(pub, sent)
    assert wait_until(lambda: len(images) == 8 and len(flows) == 7, 10), (len(images), len(flows))
    assert [stamp_of(m) for m in images] == [stamp_of(m) for m in sent]
    assert [stamp_of(m) for m in flows] == [stamp_of(m) for m in sent[1:]]  # first frame has no flow
    for m in images:
        assert (m.encoding, m.width, m.height, m.header.frame_id) == ("rgb8", 128, 128, "cam_front")
    for m in flows:
        assert (m.encoding, m.width, m.height, m.header.frame_id) == ("32FC3", 128, 128, "cam_front")
    expected = cv2.resize(frames[0][:, 40:280], (128, 128), interpolation=cv2.INTER_AREA)  # centre crop 240x240
    got = image_to_array(images[0])
    assert np.abs(got.astype(int) - expected[:, :, :].astype(int)).mean() < 2.0


@pytest.mark.parametrize("step,sign", [(0.02, 1.0), (-0.02, -1.0)])
def test_flow_direction_matches_ego_motion(ros, step, sign):
    start_node(ros)
    flows = ros.collect(Image, "ood/flow")
    pub = ros.publisher(Image, "camera/image_raw")
    ros.wait_for_subscribers(pub)
    publish_paced(pub, [array_to_image(f, "rgb8", header=header(i)) for i, f in enumerate(zoom_sequence(6, step))])
    assert wait_until(lambda: len(flows) == 5, 10)
    flow = np.mean([image_to_array(m) for m in flows], axis=0)
    v_bottom, v_top = flow[96:, :, 1].mean(), flow[:32, :, 1].mean()
    u_right, u_left = flow[:, 96:, 0].mean(), flow[:, :32, 0].mean()
    # approaching: the scene expands away from the centre; backing away: it contracts
    assert sign * v_bottom > 0.3 and sign * v_top < -0.3, (v_bottom, v_top)
    assert sign * u_right > 0.3 and sign * u_left < -0.3, (u_right, u_left)


def test_slow_node_drops_stale_frames_instead_of_queueing(ros):
    node = start_node(ros)
    inner = node.pre.process

    def slow_process(rgb, stamp):
        time.sleep(0.08)
        return inner(rgb, stamp)

    node.pre.process = slow_process
    images = ros.collect(Image, "ood/image")
    pub = ros.publisher(Image, "camera/image_raw", sensor_qos())
    ros.wait_for_subscribers(pub)
    frames = zoom_sequence(45, 0.005)
    sent = [array_to_image(f, "rgb8", header=header(i)) for i, f in enumerate(frames)]
    publish_paced(pub, sent[:5], period_s=0.15)  # slower than the stage: all processed, period learnt
    assert wait_until(lambda: len(images) == 5, 5)
    sent = sent[5:]
    images.clear()
    publish_paced(pub, sent, period_s=0.005)  # 200 Hz burst into an 80 ms stage
    assert wait_until(lambda: images and stamp_of(images[-1]) == stamp_of(sent[-1]), 10)
    time.sleep(0.3)
    assert len(images) <= 12, f"{len(images)} of 40 frames processed: the node queued instead of dropping"
    assert stamp_of(images[-1]) == stamp_of(sent[-1])  # the newest frame, not a stale backlog
    assert node.stats.dropped >= 20  # estimated from the header-stamp gaps


def test_bad_input_is_refused_and_reported(ros):
    node = start_node(ros, diagnostics_period_s=0.2)
    images = ros.collect(Image, "ood/image")
    diags = ros.collect(DiagnosticArray, "/diagnostics")
    pub = ros.publisher(Image, "camera/image_raw")
    ros.wait_for_subscribers(pub)
    good = array_to_image(zoom_sequence(1, 0.0)[0], "rgb8", header=header(0))
    bad = [
        Image(header=header(1), height=240, width=320, encoding="rgb8", step=960, data=b"\x00" * 100),
        Image(header=header(2), height=4, width=4, encoding="yuv422", step=8, data=b"\x00" * 32),
        Image(header=header(3), height=0, width=0, encoding="rgb8", step=0, data=b""),
    ]
    publish_paced(pub, bad)
    assert wait_until(lambda: node.stats.rejected == 3, 5)
    assert images == []
    assert wait_until(lambda: any(s.level >= DiagnosticStatus.WARN and "rejected" in s.message
                                  for d in diags for s in d.status), 5)
    pub.publish(good)
    assert wait_until(lambda: len(images) == 1, 5)  # still alive and working
    assert stamp_of(images[0]) == stamp_of(good)


def test_resolution_change_and_stamp_jump_back_restart_flow(ros):
    node = start_node(ros)
    flows = ros.collect(Image, "ood/flow")
    images = ros.collect(Image, "ood/image")
    pub = ros.publisher(Image, "camera/image_raw")
    ros.wait_for_subscribers(pub)
    small = zoom_sequence(3, 0.01)
    big = zoom_sequence(3, 0.01, width=640, height=480)
    msgs = [array_to_image(f, "rgb8", header=header(i)) for i, f in enumerate(small)]
    msgs += [array_to_image(f, "rgb8", header=header(3 + i)) for i, f in enumerate(big)]
    msgs += [array_to_image(f, "rgb8", header=header(i)) for i, f in enumerate(big)]  # bag looped
    publish_paced(pub, msgs)
    # no flow on the first frame, after the resize, after the jump back
    assert wait_until(lambda: len(images) == 9 and len(flows) == 6, 10), (len(images), len(flows))
    time.sleep(0.2)
    assert (len(images), len(flows)) == (9, 6)
    assert node.resets == {"resolution": 1, "stamp_back": 1}


def test_compressed_transport_and_camera_info(ros):
    start_node(ros, transport="compressed")
    images = ros.collect(Image, "ood/image")
    infos = ros.collect(CameraInfo, "ood/camera_info")
    pub = ros.publisher(CompressedImage, "camera/image_raw/compressed")
    pub_info = ros.publisher(CameraInfo, "camera/camera_info")
    ros.wait_for_subscribers(pub)
    ros.wait_for_subscribers(pub_info)
    frame = zoom_sequence(1, 0.0)[0]
    info = CameraInfo(header=header(0), width=320, height=240, distortion_model="plumb_bob")
    info.k = [256.0, 0.0, 159.5, 0.0, 256.0, 119.5, 0.0, 0.0, 1.0]
    info.p = [256.0, 0.0, 159.5, 0.0, 0.0, 256.0, 119.5, 0.0, 0.0, 0.0, 1.0, 0.0]
    pub_info.publish(info)
    pub.publish(array_to_compressed(frame, fmt="jpeg", header=header(0)))
    assert wait_until(lambda: len(images) == 1 and len(infos) == 1, 5)
    k = np.array(infos[0].k).reshape(3, 3)
    # centre crop 240x240 of 320x240, scaled by 128/240: the principal point stays central
    assert infos[0].width == 128 and infos[0].height == 128
    np.testing.assert_allclose(k[0, 0], 256.0 * 128 / 240)
    np.testing.assert_allclose([k[0, 2], k[1, 2]], [63.5, 63.5], atol=1e-9)
    np.testing.assert_allclose(np.array(infos[0].p).reshape(3, 4)[:, :3], k)


def test_watchdog_reports_stale_when_input_stops(ros):
    start_node(ros, diagnostics_period_s=0.2, stale_timeout_s=0.5)
    diags = ros.collect(DiagnosticArray, "/diagnostics")
    images = ros.collect(Image, "ood/image")
    pub = ros.publisher(Image, "camera/image_raw")
    ros.wait_for_subscribers(pub)
    pub.publish(array_to_image(zoom_sequence(1, 0.0)[0], "rgb8", header=header(0)))
    assert wait_until(lambda: len(images) == 1, 5)
    assert wait_until(lambda: diags and diags[-1].status[0].level == DiagnosticStatus.OK, 3)
    assert wait_until(lambda: diags[-1].status[0].level == DiagnosticStatus.STALE, 3)
    assert "blind" in diags[-1].status[0].message


def test_frozen_camera_is_an_error_until_frames_change(ros):
    """A driver republishing its last buffer under new stamps: ERROR past max_repeated_frames, OK again
    once the image changes; the frames themselves are still published."""
    node = start_node(ros, diagnostics_period_s=0.1, max_repeated_frames=3)
    images = ros.collect(Image, "ood/image")
    diags = ros.collect(DiagnosticArray, "/diagnostics")
    pub = ros.publisher(Image, "camera/image_raw")
    ros.wait_for_subscribers(pub)
    moving = zoom_sequence(3, 0.02)
    publish_paced(pub, [array_to_image(moving[0], "rgb8", header=header(i)) for i in range(4)])  # 3 repeats
    assert wait_until(lambda: len(images) == 4, 5)
    assert node.repeats.run == 3 and not node.condition()
    pub.publish(array_to_image(moving[0], "rgb8", header=header(4)))  # the 4th repeat: past the limit
    assert wait_until(lambda: any(s.level == DiagnosticStatus.ERROR and "camera frozen" in s.message
                                  for d in diags for s in d.status), 5)
    publish_paced(pub, [array_to_image(moving[1 + i], "rgb8", header=header(5 + i)) for i in range(2)])
    assert wait_until(lambda: len(images) == 7, 5)
    assert node.repeats.run == 0 and node.repeats.longest == 4
    assert wait_until(lambda: diags[-1].status[0].level == DiagnosticStatus.OK, 3)
