"""Hypothesis fuzzing of preprocess_node's callbacks with malformed messages: no exception ever leaves
a callback, a refused frame publishes nothing and is counted with its reason, and the node still
processes a good frame afterwards."""
from __future__ import annotations

import os

import numpy as np
import pytest
import rclpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from ood_monitor.nodes.preprocess_node import PreprocessNode
from ood_monitor.ros.image import array_to_compressed, array_to_image

pytestmark = pytest.mark.ros
HEAVY = os.environ.get("HYPOTHESIS_PROFILE") == "ci-heavy"
FUZZ = settings(max_examples=10_000 if HEAVY else 300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
ENCODINGS = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "16UC1", "32FC1", "32FC2", "yuv422", "", "rgb8 ", "RGB8"]
BPP = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "mono16": 2, "16UC1": 2, "32FC1": 4, "32FC2": 8}


class Probe:
    """Counts what the node publishes, in place of the real publishers' effect."""

    def __init__(self, node: PreprocessNode) -> None:
        self.images: list[Image] = []
        self.flows: list[Image] = []
        self.infos: list[CameraInfo] = []
        node.pub_image.publish = self.images.append
        node.pub_flow.publish = self.flows.append
        node.pub_info.publish = self.infos.append


@pytest.fixture(scope="module")
def node():
    context = rclpy.Context()
    rclpy.init(context=context)
    n = PreprocessNode(context=context)
    n.get_logger().set_level(rclpy.logging.LoggingSeverity.ERROR)  # thousands of refusals
    yield n
    n.destroy_node()
    rclpy.shutdown(context=context)


def header(stamp_ns: int) -> Header:
    h = Header(frame_id="cam")
    h.stamp.sec, h.stamp.nanosec = stamp_ns // 10**9, stamp_ns % 10**9
    return h


@st.composite
def image_messages(draw) -> Image:
    enc = draw(st.sampled_from(ENCODINGS))
    height, width = draw(st.integers(0, 40)), draw(st.integers(0, 40))
    row = width * BPP.get(enc, 3)
    step = max(0, row + draw(st.sampled_from([0, 0, 0, 1, 4, -1, -3])))
    nbytes = max(0, step * height + draw(st.sampled_from([0, 0, 0, -1, 1, -7])))
    data = draw(st.binary(min_size=nbytes, max_size=nbytes)) if nbytes < 4096 else \
        np.random.default_rng(draw(st.integers(0, 99))).integers(0, 256, nbytes, np.uint8).tobytes()
    if enc in ("32FC1", "32FC2") and nbytes >= 4 and draw(st.booleans()):
        arr = bytearray(data)
        arr[0:4] = np.float32(draw(st.sampled_from([np.nan, np.inf, -np.inf]))).tobytes()
        data = bytes(arr)
    stamp = draw(st.integers(0, 10**12))
    return Image(header=header(stamp), height=height, width=width, encoding=enc,
                 is_bigendian=draw(st.integers(0, 1)), step=step, data=data)


def check_no_false_output(node, probe, before_rejected: int, before_images: int) -> None:
    published = len(probe.images) - before_images
    refused = node.stats.rejected - before_rejected
    assert published + refused == 1, (published, refused)
    for m in probe.images[before_images:]:
        assert (m.encoding, m.width, m.height) == ("rgb8", 128, 128)


@FUZZ
@given(msg=image_messages())
def test_fuzz_image_callback(node, msg):
    probe = Probe(node)
    rejected = node.stats.rejected
    node.on_image(msg)
    check_no_false_output(node, probe, rejected, 0)


@FUZZ
@given(data=st.binary(max_size=2048), fmt=st.sampled_from(["jpeg", "png", "rgb8; jpeg compressed bgr8", "tiff", ""]),
       stamp=st.integers(0, 10**12))
def test_fuzz_compressed_callback(node, data, fmt, stamp):
    probe = Probe(node)
    rejected = node.stats.rejected
    node.on_compressed(CompressedImage(header=header(stamp), format=fmt, data=data))
    check_no_false_output(node, probe, rejected, 0)


@FUZZ
@given(width=st.integers(-5, 5000), height=st.integers(-5, 5000),
       k=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=9, max_size=9),
       p=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=12, max_size=12))
def test_fuzz_camera_info_callback(node, width, height, k, p):
    probe = Probe(node)
    msg = CameraInfo(header=header(1), distortion_model="plumb_bob")
    msg.width, msg.height = max(0, width), max(0, height)
    msg.k, msg.p = k, p
    node.on_camera_info(msg)
    for info in probe.infos:
        assert (info.width, info.height) == (128, 128)
        assert np.isfinite(info.k).all() and info.k[0] > 0 and info.k[4] > 0
    assert probe.infos or node.stats.last_error.startswith("camera_info")


def test_node_still_works_after_fuzzing(node):
    probe = Probe(node)
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (240, 320, 3), np.uint8)
    base = 10**13
    node.on_image(array_to_image(frame, "rgb8", header=header(base)))
    node.on_compressed(array_to_compressed(frame, fmt="png", header=header(base + 66_666_667)))
    assert len(probe.images) == 2 and len(probe.flows) == 1
    assert probe.images[0].header.stamp == header(base).stamp
