"""Lifecycle (what nav2_lifecycle_manager does) and live tuning (what `ros2 param set` does), through
the nodes' real ROS services."""
from __future__ import annotations

import gc
import time

import numpy as np
import pytest
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.exceptions import InvalidParameterValueException
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header
from test_vae_detector_node import make_model

from ood_monitor.nodes.analysis_node import AnalysisNode
from ood_monitor.nodes.nav_bridge_node import NavBridgeNode
from ood_monitor.nodes.preprocess_node import PreprocessNode
from ood_monitor.nodes.synthesizer_node import SynthesizerNode
from ood_monitor.nodes.vae_detector_node import VaeDetectorNode
from ood_monitor.ros.image import array_to_image
from ood_msgs.msg import AnomalyMask, OODScore, SynthesisResult

from ros_harness import RosHarness, wait_until

pytestmark = pytest.mark.ros


@pytest.fixture
def ros():
    with RosHarness() as h:
        yield h


def call(ros: RosHarness, srv_type, name: str, request, timeout: float = 10.0):
    client = ros.probe.create_client(srv_type, name)
    assert client.wait_for_service(timeout_sec=timeout), f"no service {name}"
    future = client.call_async(request)
    assert wait_until(future.done, timeout), f"{name} did not answer"
    return future.result()


def transition(ros: RosHarness, node: str, transition_id: int) -> bool:
    return call(ros, ChangeState, f"/{node}/change_state",
                ChangeState.Request(transition=Transition(id=transition_id))).success


def state(ros: RosHarness, node: str) -> str:
    return call(ros, GetState, f"/{node}/get_state", GetState.Request()).current_state.label


def header(i: int) -> Header:
    h = Header(frame_id="camera")
    t = 1_700_000_000 * 10**9 + i * 66_666_667
    h.stamp.sec, h.stamp.nanosec = t // 10**9, t % 10**9
    return h


def frames_received(ros: RosHarness, pub, images: list, start: int, active: bool, n: int = 5) -> int:
    """Publish n frames one at a time; an active node gets up to 10 s for each (its input is best
    effort, keep last 1, so a burst on a loaded machine could drop frames), an inactive one 0.3 s."""
    before = len(images)
    rng = np.random.default_rng(start)
    for k, i in enumerate(range(start, start + n)):
        pub.publish(array_to_image(rng.integers(0, 255, (120, 160, 3), np.uint8), "rgb8", header=header(i)))
        wait_until(lambda k=k: len(images) > before + k, 10 if active else 0.3)
    return len(images) - before


def test_lifecycle_transitions_gate_processing(ros):
    node = ros.add(PreprocessNode(context=ros.context, parameter_overrides=[Parameter("autostart", value=False)]))
    images = ros.collect(Image, "ood/image")
    pub = ros.publisher(Image, "camera/image_raw")
    assert state(ros, "preprocess_node") == "unconfigured" and not list(node.subscriptions)
    gc.unfreeze()  # what earlier tests' nodes froze
    assert transition(ros, "preprocess_node", Transition.TRANSITION_CONFIGURE)
    assert state(ros, "preprocess_node") == "inactive"
    assert gc.get_freeze_count() > 0  # set up: the long-lived objects are out of the collector's walks
    ros.wait_for_subscribers(pub)
    assert frames_received(ros, pub, images, 0, active=False) == 0  # configured but inactive: nothing processed
    assert transition(ros, "preprocess_node", Transition.TRANSITION_ACTIVATE)
    assert frames_received(ros, pub, images, 10, active=True) == 5
    assert transition(ros, "preprocess_node", Transition.TRANSITION_DEACTIVATE)
    assert frames_received(ros, pub, images, 20, active=False) == 0
    assert transition(ros, "preprocess_node", Transition.TRANSITION_CLEANUP)
    assert state(ros, "preprocess_node") == "unconfigured"
    assert gc.get_freeze_count() == 0  # what the cleanup lets go of can be collected
    assert wait_until(lambda: pub.get_subscription_count() == 0, 5)  # subscriptions freed


def test_configure_failure_is_reported_not_raised(ros, tmp_path):
    params = [Parameter("autostart", value=False), Parameter("model_dir", value=str(tmp_path / "none"))]
    node = ros.add(VaeDetectorNode("vae_image_detector", context=ros.context, parameter_overrides=params))
    assert not transition(ros, "vae_image_detector", Transition.TRANSITION_CONFIGURE)
    assert state(ros, "vae_image_detector") == "unconfigured"
    assert "config.json not found" in str(node.start_error)
    with pytest.raises(RuntimeError, match="config.json not found"):  # autostart: the process refuses to start
        VaeDetectorNode("other", context=ros.context, parameter_overrides=params[1:])


def set_param(ros: RosHarness, node: str, name: str, value: float):
    msg = ParameterMsg(name=name, value=ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value))
    return call(ros, SetParameters, f"/{node}/set_parameters", SetParameters.Request(parameters=[msg])).results[0]


def test_live_tuning_is_validated_and_applied(ros, tmp_path):
    model = make_model(tmp_path, "image")
    params = [Parameter("model_dir", value=str(model)), Parameter("input_height", value=32),
              Parameter("input_width", value=32)]
    node = ros.add(VaeDetectorNode("vae_image_detector", context=ros.context, parameter_overrides=params))
    result = set_param(ros, "vae_image_detector", "martingale_threshold", 3.5)
    assert result.successful
    assert node.detector.monitor.cfg.martingale_threshold == 3.5 and node.get_parameter("martingale_threshold").value == 3.5
    result = set_param(ros, "vae_image_detector", "pvalue_threshold", 1.5)
    assert not result.successful and "invalid value for pvalue_threshold" in result.reason
    assert node.detector.monitor.cfg.pvalue_threshold == 0.01
    msg = ParameterMsg(name="model_dir", value=ParameterValue(type=ParameterType.PARAMETER_STRING, string_value="x"))
    result = call(ros, SetParameters, "/vae_image_detector/set_parameters",
                  SetParameters.Request(parameters=[msg])).results[0]
    assert not result.successful and "read at configure" in result.reason


# ------------------------------------------------------------------------------ every node, like Nav2

def synthesis_msg(i: int, size: int = 64):
    h = header(i)
    img = np.random.default_rng(i).integers(0, 255, (size, size, 3), np.uint8)
    return SynthesisResult(header=h, input=array_to_image(img, "rgb8", header=h),
                           synthesized=array_to_image(img[::-1].copy(), "rgb8", header=h), steps=1, backend="test")


def anomaly_msg(i: int):
    h = header(i)
    conf = np.zeros((64, 64), np.float32)
    conf[40:60, 20:40] = 0.9
    return AnomalyMask(header=h, confidence=array_to_image(conf, "32FC1", header=h),
                       mask=array_to_image((conf > 0.5).astype(np.uint8) * 255, "mono8", header=h), frame_score=0.9,
                       segmenter="slic")


def camera_info_msg(i: int) -> CameraInfo:
    info = CameraInfo(header=header(i), width=64, height=64, distortion_model="plumb_bob")
    info.k = [50.0, 0.0, 31.5, 0.0, 50.0, 31.5, 0.0, 0.0, 1.0]
    info.p = [50.0, 0.0, 31.5, 0.0, 0.0, 50.0, 31.5, 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


def image_msg(i: int, size: tuple[int, int] = (120, 160)):
    return array_to_image(np.random.default_rng(i).integers(0, 255, (*size, 3), np.uint8), "rgb8", header=header(i))


# name -> (class, parameters, [(input type, topic, message maker)], (output type, topic))
LIFECYCLE_CASES = {
    "preprocess_node": (PreprocessNode, {}, [(Image, "camera/image_raw", image_msg)], (Image, "ood/image")),
    "vae_image_detector": (VaeDetectorNode, {"input_height": 32, "input_width": 32},
                           [(Image, "ood/image", lambda i: image_msg(i, (32, 32)))], (OODScore, "ood/score/image")),
    "synthesizer_node": (SynthesizerNode, {"steps": 1, "strength": 0.1, "guidance_kind": "none"},
                         [(Image, "ood/image", lambda i: image_msg(i, (128, 128)))], (SynthesisResult, "ood/synthesis")),
    "analysis_node": (AnalysisNode, {"feature_extractor": "none", "nominal_stats": "none", "torch_threads": 0},
                      [(SynthesisResult, "ood/synthesis", synthesis_msg)], (AnomalyMask, "ood/anomaly")),
    "nav_bridge_node": (NavBridgeNode, {"use_tf": False},
                        [(CameraInfo, "ood/camera_info", camera_info_msg), (AnomalyMask, "ood/anomaly", anomaly_msg)],
                        (PointCloud2, "ood/obstacles")),
}


def outputs_for(ros: RosHarness, pubs, out: list, start: int, active: bool, n: int = 3) -> int:
    """Publish n rounds of inputs one at a time; an active node gets up to 20 s for each output, an
    inactive one 0.5 s (its inputs must be dropped, so nothing can arrive)."""
    before = len(out)
    for k, i in enumerate(range(start, start + n)):
        for pub, make in pubs:
            pub.publish(make(i))
            time.sleep(0.05)
        wait_until(lambda k=k: len(out) > before + k, 20 if active else 0.5)
    return len(out) - before


@pytest.mark.parametrize("name", list(LIFECYCLE_CASES))
def test_every_node_follows_the_nav2_lifecycle(ros, name, tmp_path):
    """What nav2_lifecycle_manager does with `autostart: false` nodes, over the real lifecycle services:
    configure, activate, deactivate, cleanup, shutdown; outputs appear only while active."""
    cls, params, inputs, (out_type, out_topic) = LIFECYCLE_CASES[name]
    if cls is VaeDetectorNode:
        params = {**params, "model_dir": str(make_model(tmp_path, "image"))}
    overrides = [Parameter("autostart", value=False)] + [Parameter(k, value=v) for k, v in params.items()]
    node = ros.add(cls(name, context=ros.context, parameter_overrides=overrides))
    out = ros.collect(out_type, out_topic)
    pubs = [(ros.publisher(t, topic), make) for t, topic, make in inputs]
    assert state(ros, name) == "unconfigured" and not list(node.subscriptions)
    assert transition(ros, name, Transition.TRANSITION_CONFIGURE) and state(ros, name) == "inactive"
    for pub, _ in pubs:
        ros.wait_for_subscribers(pub)
    assert outputs_for(ros, pubs, out, 0, active=False) == 0  # configured, inactive: silent
    assert transition(ros, name, Transition.TRANSITION_ACTIVATE) and state(ros, name) == "active"
    assert outputs_for(ros, pubs, out, 10, active=True) >= 1
    assert transition(ros, name, Transition.TRANSITION_DEACTIVATE) and state(ros, name) == "inactive"
    assert outputs_for(ros, pubs, out, 20, active=False) == 0
    assert transition(ros, name, Transition.TRANSITION_CLEANUP) and state(ros, name) == "unconfigured"
    assert all(wait_until(lambda p=p: p.get_subscription_count() == 0, 5) for p, _ in pubs)  # freed
    assert transition(ros, name, Transition.TRANSITION_UNCONFIGURED_SHUTDOWN) and state(ros, name) == "finalized"
    assert node.unexpected_exceptions == 0


def test_autostart_is_read_only_and_ranges_are_enforced(ros):
    """Descriptors: `ros2 param set` cannot change what needs a restart, nor set a value out of range,
    and a parameter file with an out-of-range value makes the node refuse to start."""
    node = ros.add(PreprocessNode(context=ros.context, parameter_overrides=[Parameter("autostart", value=False)]))
    described = node.describe_parameter("autostart")
    assert described.read_only
    msg = ParameterMsg(name="autostart", value=ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=True))
    result = call(ros, SetParameters, "/preprocess_node/set_parameters", SetParameters.Request(parameters=[msg])).results[0]
    assert not result.successful and "read-only" in result.reason
    assert node.describe_parameter("width").integer_range[0].from_value == 8
    assert "one of raw | compressed" in node.describe_parameter("transport").additional_constraints
    result = set_param(ros, "preprocess_node", "max_gap_s", -1.0)
    assert not result.successful and "out of range" in result.reason
    msg = ParameterMsg(name="transport", value=ParameterValue(type=ParameterType.PARAMETER_STRING, string_value="x"))
    result = call(ros, SetParameters, "/preprocess_node/set_parameters", SetParameters.Request(parameters=[msg])).results[0]
    assert not result.successful and "invalid value for transport" in result.reason
    with pytest.raises(InvalidParameterValueException, match="out of range"):
        SynthesizerNode("bad_synth", context=ros.context, parameter_overrides=[Parameter("steps", value=-1)])
    with pytest.raises(ValueError, match="invalid value for trigger"):
        SynthesizerNode("bad_synth2", context=ros.context, parameter_overrides=[Parameter("trigger", value="never")])


def test_synthesizer_stops_in_the_middle_of_a_synthesis(ros):
    """Ctrl-C must not wait for a whole CPU synthesis (1000 steps here: minutes): the worker stops at the
    next network call, publishes nothing, and the node can be destroyed at once."""
    node = ros.add(SynthesizerNode(context=ros.context, parameter_overrides=[
        Parameter("steps", value=1000), Parameter("strength", value=1.0), Parameter("guidance_kind", value="none")]))
    out = ros.collect(SynthesisResult, "ood/synthesis")
    calls = []
    node.synth.before_each_call(lambda: calls.append(1))  # counts network calls, torch or ONNX Runtime
    pub = ros.publisher(Image, "ood/image")
    ros.wait_for_subscribers(pub)
    pub.publish(image_msg(0, (128, 128)))
    assert wait_until(lambda: len(calls) >= 2, 60), "the synthesis did not start"
    worker = node.worker
    node._stop_worker()
    assert not worker.is_alive(), "the worker kept synthesizing after stop"
    assert len(calls) < 1000 and out == [] and node.unexpected_exceptions == 0
