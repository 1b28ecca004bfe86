"""Hypothesis fuzzing of every subscriber callback of the detector, analysis and Nav2-bridge nodes:
valid messages with 1-3 fields (nested ones too) replaced by random values of their type — zero and
odd sizes, wrong encodings, inconsistent steps, truncated data, NaN/Inf, duplicate and out-of-order
stamps. No exception may leave a callback; every message is either processed or refused with its
reason, and none may reach the last-resort guard (`unexpected_exceptions` stays 0: an exception no
validation anticipated is a bug, not a reject). Each node still works on a valid message afterwards.
(preprocess_node has its own, stricter fuzz test.) HYPOTHESIS_PROFILE=ci-heavy runs 10,000 each."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticStatus
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo
from std_msgs.msg import Header
from test_vae_detector_node import make_model

from ood_monitor.nodes.analysis_node import AnalysisNode
from ood_monitor.nodes.nav_bridge_node import NavBridgeNode
from ood_monitor.nodes.vae_detector_node import VaeDetectorNode
from ood_monitor.ros.image import array_to_image
from ood_msgs.msg import AnomalyMask, AnomalyRegion, SynthesisResult

pytestmark = pytest.mark.ros
HEAVY = os.environ.get("HYPOTHESIS_PROFILE") == "ci-heavy"
FUZZ = settings(max_examples=10_000 if HEAVY else 150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
INT_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "octet": (0, 255), "int16": (-2**15, 2**15 - 1),
              "uint16": (0, 2**16 - 1), "int32": (-2**31, 2**31 - 1), "uint32": (0, 2**32 - 1),
              "int64": (-2**63, 2**63 - 1), "uint64": (0, 2**64 - 1)}
ODD_INTS = [0, 1, 2, 3, 7, 31, 32, 33, 64, 127, 128, 129, 240, 320, 4096, 100_000, 2**31 - 1]
ENCODINGS = ["rgb8", "bgr8", "mono8", "mono16", "32FC1", "32FC2", "rgba8", "yuv422", "", "8UC3"]


def header(stamp_ns: int) -> Header:
    h = Header(frame_id="cam")
    h.stamp.sec, h.stamp.nanosec = stamp_ns // 10**9, stamp_ns % 10**9
    return h


def leaf_paths(msg, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted path, rosidl type) of every leaf field, descending into nested messages."""
    out = []
    for name, typ in msg.get_fields_and_field_types().items():
        value = getattr(msg, name)
        if hasattr(value, "get_fields_and_field_types"):
            out += leaf_paths(value, f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", typ))
    return out


def random_value(draw, typ: str, current):
    if typ in INT_RANGES:
        lo, hi = INT_RANGES[typ]
        return draw(st.one_of(st.sampled_from([v for v in ODD_INTS if lo <= v <= hi]), st.integers(lo, hi)))
    if typ in ("float", "double"):
        return draw(st.floats(allow_nan=True, allow_infinity=True, width=32 if typ == "float" else 64))
    if typ == "boolean":
        return draw(st.booleans())
    if typ == "string":
        return draw(st.one_of(st.sampled_from(ENCODINGS), st.text(max_size=12)))
    if typ == "sequence<uint8>":
        raw = bytes(current)
        return draw(st.one_of(st.just(raw[: draw(st.integers(0, max(0, len(raw))))]), st.binary(max_size=512),
                              st.just(raw + b"\x00" * draw(st.integers(1, 64)))))
    if typ.startswith("double[") or typ.startswith("float["):
        n = len(current)
        return draw(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=n, max_size=n))
    if typ.startswith("sequence<double") or typ.startswith("sequence<float"):
        return draw(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=14))
    return current  # sequences of messages etc. keep their value; other fields carry the fuzz


def set_path(msg, path: str, value) -> None:
    *parents, leaf = path.split(".")
    for p in parents:
        msg = getattr(msg, p)
    setattr(msg, leaf, value)


def mutated(draw, valid):
    """A copy of `valid` with 1-3 leaf fields replaced; the stamp is random too (duplicates, jumps)."""
    msg = type(valid)()
    for name in valid.get_fields_and_field_types():
        setattr(msg, name, _copy(getattr(valid, name)))
    paths = leaf_paths(msg)
    for path, typ in draw(st.lists(st.sampled_from(paths), min_size=1, max_size=3, unique=True)):
        set_path(msg, path, random_value(draw, typ, eval_path(msg, path)))
    if hasattr(msg, "header"):
        msg.header.stamp.sec = draw(st.sampled_from([0, 1, 1_700_000_000, 2**31 - 1]))
    return msg


def eval_path(msg, path: str):
    for p in path.split("."):
        msg = getattr(msg, p)
    return msg


def _copy(value):
    if hasattr(value, "get_fields_and_field_types"):
        out = type(value)()
        for name in value.get_fields_and_field_types():
            setattr(out, name, _copy(getattr(value, name)))
        return out
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value.copy() if hasattr(value, "copy") else value


def frame(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


def valid_synthesis() -> SynthesisResult:
    h = header(1_700_000_000 * 10**9)
    img = frame(64, 64)
    return SynthesisResult(header=h, input=array_to_image(img, "rgb8", header=h),
                           synthesized=array_to_image(img[::-1].copy(), "rgb8", header=h), steps=4, backend="test")


def valid_anomaly() -> AnomalyMask:
    h = header(1_700_000_000 * 10**9)
    conf = np.zeros((64, 64), np.float32)
    conf[40:60, 20:40] = 0.9
    mask = (conf > 0.5).astype(np.uint8) * 255
    region = AnomalyRegion(id=0, score=0.9, area_px=400)
    return AnomalyMask(header=h, confidence=array_to_image(conf, "32FC1", header=h),
                       mask=array_to_image(mask, "mono8", header=h), frame_score=0.9, regions=[region],
                       segmenter="slic")


def valid_camera_info() -> CameraInfo:
    info = CameraInfo(header=header(1_700_000_000 * 10**9), width=64, height=64, distortion_model="plumb_bob")
    info.k = [50.0, 0.0, 31.5, 0.0, 50.0, 31.5, 0.0, 0.0, 1.0]
    info.p = [50.0, 0.0, 31.5, 0.0, 0.0, 50.0, 31.5, 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


class Published:
    """Records what a node publishes (its publishers' publish replaced)."""

    def __init__(self, node) -> None:
        self.messages: list = []
        for pub in node.publishers:
            if pub.topic_name != "/diagnostics" and not pub.topic_name.startswith("/rosout"):
                pub.publish = self.messages.append


@pytest.fixture(scope="module")
def context():
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.shutdown(context=ctx)


def quiet(node):
    node.get_logger().set_level(rclpy.logging.LoggingSeverity.ERROR)
    return node


@pytest.fixture(scope="module")
def vae_node(context, tmp_path_factory):
    model = make_model(tmp_path_factory.mktemp("fuzz"), "image")
    params = [Parameter("model_dir", value=str(model)), Parameter("input_height", value=32),
              Parameter("input_width", value=32)]
    node = quiet(VaeDetectorNode(context=context, parameter_overrides=params))
    yield node
    node.destroy_node()


@pytest.fixture(scope="module")
def analysis_node(context):
    node = quiet(AnalysisNode(context=context, parameter_overrides=[Parameter("torch_threads", value=0),
                                                                    Parameter("feature_extractor", value="random")]))
    yield node
    node.destroy_node()


@pytest.fixture(scope="module")
def nav_node(context):
    node = quiet(NavBridgeNode(context=context, parameter_overrides=[Parameter("use_tf", value=False)]))
    yield node
    node.destroy_node()


def processed_or_refused(node, before_rejected: int, out: Published | None = None) -> None:
    """The message was refused with a reason or produced output; never an unexpected exception."""
    assert node.unexpected_exceptions == 0, node.last_unexpected
    refused = node.stats.rejected > before_rejected
    if refused:
        assert node.stats.last_error.strip(), "refused without a reason"
    if out is not None:
        assert refused or out.messages, "neither published nor refused"
        assert not (refused and out.messages), "published output for a refused message"


def valid_vae_image():
    return array_to_image(frame(32, 32), "rgb8", header=header(1_700_000_000 * 10**9))


@FUZZ
@given(data=st.data())
def test_fuzz_vae_detector(vae_node, data):
    out, before = Published(vae_node), vae_node.stats.rejected
    vae_node.on_frame(mutated(data.draw, valid_vae_image()))
    processed_or_refused(vae_node, before, out)
    for m in out.messages:
        assert math.isfinite(m.score) and 0.0 < m.p_value <= 1.0


@FUZZ
@given(data=st.data())
def test_fuzz_analysis_synthesis(analysis_node, data):
    out, before = Published(analysis_node), analysis_node.stats.rejected
    analysis_node.on_synthesis(mutated(data.draw, valid_synthesis()))
    processed_or_refused(analysis_node, before, out)
    for m in out.messages:
        if isinstance(m, AnomalyMask):
            assert m.mask.encoding == "mono8" and math.isfinite(m.frame_score)


@FUZZ
@given(data=st.data())
def test_fuzz_analysis_camera_info(analysis_node, data):
    msg, before, previous = mutated(data.draw, valid_camera_info()), analysis_node.stats.rejected, analysis_node.camera_wh
    analysis_node.on_camera_info(msg)
    processed_or_refused(analysis_node, before)
    if analysis_node.stats.rejected > before:  # refused: the camera size in use is unchanged
        assert analysis_node.camera_wh == previous and "camera_info" in analysis_node.stats.last_error
        assert not (0 < msg.width <= 16384 and 0 < msg.height <= 16384)
    else:  # accepted: the size of ood/anomaly/* is the camera's, a plausible one
        assert analysis_node.camera_wh == (msg.width, msg.height) and 0 < msg.width <= 16384
    analysis_node.camera_wh = previous  # the synthesis fuzz and the final check draw at a small size


@FUZZ
@given(data=st.data())
def test_fuzz_nav_bridge_anomaly(nav_node, data):
    out, before = Published(nav_node), nav_node.stats.rejected
    nav_node.on_anomaly(mutated(data.draw, valid_anomaly()))
    processed_or_refused(nav_node, before, out)
    for m in out.messages:
        if hasattr(m, "data") and isinstance(m.data, float):
            assert math.isfinite(m.data)


@FUZZ
@given(data=st.data())
def test_fuzz_nav_bridge_camera_info(nav_node, data):
    msg, before, previous = mutated(data.draw, valid_camera_info()), nav_node.stats.rejected, nav_node.camera
    nav_node.on_camera_info(msg)
    processed_or_refused(nav_node, before)
    if nav_node.stats.rejected > before:  # refused: the intrinsics in use are unchanged
        assert nav_node.camera is previous and "camera_info" in nav_node.stats.last_error
    else:  # accepted: intrinsics the projection can use
        k, d, (w, h) = nav_node.camera
        assert (w, h) == (msg.width, msg.height) and np.isfinite(k).all() and k[0, 0] > 0 and k[1, 1] > 0
        assert np.isfinite(d).all()
    nav_node.camera = previous if previous is not None else nav_node.camera


def test_nodes_still_work_after_fuzzing(vae_node, analysis_node, nav_node):
    for node in (vae_node, analysis_node, nav_node):  # the fuzz reached the validation, and it refused
        assert node.stats.rejected > 10, f"{node.get_name()} refused only {node.stats.rejected} fuzzed messages"
        assert node.unexpected_exceptions == 0, node.last_unexpected
    for node, call, msg in [(vae_node, vae_node.on_frame, valid_vae_image()),
                            (analysis_node, analysis_node.on_synthesis, valid_synthesis())]:
        out = Published(node)
        stamp = 2_000_000_000 * 10**9
        msg.header.stamp.sec = stamp // 10**9
        for part in ("input", "synthesized"):
            if hasattr(msg, part):
                getattr(msg, part).header = msg.header
        call(msg)
        assert out.messages, f"{node.get_name()} published nothing for a valid message after fuzzing"
    nav_node.on_camera_info(valid_camera_info())
    out = Published(nav_node)
    nav_node.on_anomaly(valid_anomaly())
    assert out.messages


def test_an_unexpected_exception_is_counted_apart_and_reported_as_error(context):
    """The last-resort guard keeps the node alive, but a bug is not a reject: it has its own counter and
    turns /diagnostics to ERROR, so the fuzz tests above can fail."""
    node = quiet(AnalysisNode("analysis_bug", context=context, parameter_overrides=[
        Parameter("feature_extractor", value="none"), Parameter("nominal_stats", value="none")]))
    try:
        node.analyzer.analyze = lambda *a: {}["no such key"]  # a bug inside the core, not bad input
        out = Published(node)
        node.on_synthesis(valid_synthesis())
        assert out.messages == [] and node.unexpected_exceptions == 1 and node.stats.rejected == 0
        status = node.diagnostics.publish()
        values = {kv.key: kv.value for kv in status.values}
        assert status.level == DiagnosticStatus.ERROR and "KeyError" in status.message
        assert values["unexpected_exceptions"] == "1"
        node.on_synthesis(mutated_size(valid_synthesis()))  # bad input is still a reject with a reason
        assert node.stats.rejected == 1 and "differ in size" in node.stats.last_error
        assert node.unexpected_exceptions == 1
    finally:
        node.destroy_node()


def mutated_size(msg: SynthesisResult) -> SynthesisResult:
    msg.synthesized = array_to_image(frame(32, 32), "rgb8", header=msg.header)
    return msg
