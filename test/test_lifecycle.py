"""Lifecycle (what nav2_lifecycle_manager does) and live tuning (what `ros2 param set` does), through
the nodes' real ROS services."""
from __future__ import annotations

import numpy as np
import pytest
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from test_vae_detector_node import make_model

from ood_monitor.nodes.preprocess_node import PreprocessNode
from ood_monitor.nodes.vae_detector_node import VaeDetectorNode
from ood_monitor.ros.image import array_to_image

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
    assert transition(ros, "preprocess_node", Transition.TRANSITION_CONFIGURE)
    assert state(ros, "preprocess_node") == "inactive"
    ros.wait_for_subscribers(pub)
    assert frames_received(ros, pub, images, 0, active=False) == 0  # configured but inactive: nothing processed
    assert transition(ros, "preprocess_node", Transition.TRANSITION_ACTIVATE)
    assert frames_received(ros, pub, images, 10, active=True) == 5
    assert transition(ros, "preprocess_node", Transition.TRANSITION_DEACTIVATE)
    assert frames_received(ros, pub, images, 20, active=False) == 0
    assert transition(ros, "preprocess_node", Transition.TRANSITION_CLEANUP)
    assert state(ros, "preprocess_node") == "unconfigured"
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
