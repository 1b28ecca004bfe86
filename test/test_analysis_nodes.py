"""analysis_node and nav_bridge_node over real rclpy + Fast DDS: outputs, headers, sizes, geometry,
costmap, speed limit, bad input refused with a diagnostic while the node keeps running."""
from __future__ import annotations

import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import TransformStamped
from nav_msgs.msg import OccupancyGrid
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Float32, Header

from ood_monitor.cli.bench_analysis import oracle_synthesis
from ood_monitor.core.analysis.geometry import CameraPose, ground_to_pixel, project_to_ground
from ood_monitor.nodes.analysis_node import AnalysisNode
from ood_monitor.nodes.nav_bridge_node import NavBridgeNode
from ood_monitor.ros.image import array_to_image, image_to_array
from ood_monitor.ros.pointcloud import pointcloud_to_structured
from ood_msgs.msg import AnomalyMask, SynthesisResult

from ros_harness import RosHarness, wait_until

pytestmark = pytest.mark.ros


def scene(h: int, w: int) -> np.ndarray:
    import cv2
    from skimage import data as skdata

    return cv2.resize(skdata.astronaut()[100:400, 100:500], (w, h), interpolation=cv2.INTER_AREA)


def with_patch(img: np.ndarray, y0: int, x0: int, size: int, colour) -> tuple[np.ndarray, np.ndarray]:
    out, mask = img.copy(), np.zeros(img.shape[:2], np.uint8)
    out[y0:y0 + size, x0:x0 + size] = colour
    mask[y0:y0 + size, x0:x0 + size] = 255
    return out, mask


def header(i: int, frame_id: str = "cam_front") -> Header:
    h = Header(frame_id=frame_id)
    t = 1_700_000_000 * 10**9 + i * 66_666_667
    h.stamp.sec, h.stamp.nanosec = t // 10**9, t % 10**9
    return h


@pytest.fixture
def ros():
    with RosHarness() as h:
        yield h


def start(ros: RosHarness, cls, **params):
    return ros.add(cls(context=ros.context, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()]))


def synthesis_msg(i: int, image: np.ndarray, synth: np.ndarray) -> SynthesisResult:
    h = header(i)
    return SynthesisResult(header=h, input=array_to_image(image, "rgb8", header=h),
                           synthesized=array_to_image(synth, "rgb8", header=h), steps=0, backend="oracle-test")


def diag_has(diags, level: int, text: str) -> bool:
    return any(s.level >= level and text in s.message + " ".join(v.value for v in s.values)
               for d in diags for s in d.status)


# ------------------------------------------------------------------------------------ analysis_node


@pytest.mark.parametrize("worker", [False, True])
def test_analysis_node_outputs_aligned_masks_at_camera_resolution(ros, worker):
    node = start(ros, AnalysisNode, camera_width=320, camera_height=240, diagnostics_period_s=0.2, torch_threads=0,
                 worker_thread=worker)
    anomalies = ros.collect(AnomalyMask, "ood/anomaly")
    masks = ros.collect(Image, "ood/anomaly/mask")
    confs = ros.collect(Image, "ood/anomaly/confidence")
    diags = ros.collect(DiagnosticArray, "/diagnostics")
    pub = ros.publisher(SynthesisResult, "ood/synthesis")
    ros.wait_for_subscribers(pub)
    image, gt = with_patch(scene(128, 128), 48, 64, 32, (20, 20, 230))
    sent = synthesis_msg(3, image, oracle_synthesis(image, gt))
    pub.publish(sent)
    assert wait_until(lambda: anomalies and masks and confs, 10)
    a = anomalies[0]
    assert a.header == sent.header and masks[0].header == sent.header and confs[0].header == sent.header
    assert (a.confidence.encoding, a.confidence.width, a.confidence.height) == ("32FC1", 128, 128)
    assert (a.mask.encoding, a.mask.width, a.mask.height) == ("mono8", 128, 128)
    assert a.segmenter == "slic" and a.frame_score > 0.5 and a.latency_ms > 0
    r = a.regions[0].roi  # the patch (x 64..95, y 48..79), grown by the superpixels that straddle it
    assert r.x_offset <= 66 and r.y_offset <= 50 and r.x_offset + r.width >= 94 and r.y_offset + r.height >= 78
    assert a.regions[0].area_px < 3 * 32 * 32
    for m in (masks[0], confs[0]):
        assert (m.encoding, m.width, m.height) == ("mono8", 320, 240)
    cam, model = image_to_array(masks[0]), image_to_array(a.mask)
    # centre crop 240x240 of 320x240 scaled 128/240: model pixel centre x -> camera 40 + (x + 0.5) * 240/128 - 0.5
    ys, xs = np.nonzero(cam)
    my, mx = np.nonzero(model)
    scale = 240 / 128
    assert abs(xs.min() - (40 + mx.min() * scale)) <= 2 and abs(xs.max() + 1 - (40 + (mx.max() + 1) * scale)) <= 2
    assert abs(ys.min() - my.min() * scale) <= 2 and abs(ys.max() + 1 - (my.max() + 1) * scale) <= 2
    assert cam[:, :40].max() == 0 and cam[:, 280:].max() == 0  # outside the crop: nothing claimed
    assert image_to_array(confs[0])[ys, xs].mean() > 128
    assert wait_until(lambda: diag_has(diags, DiagnosticStatus.OK, "fallback slic: no sam_checkpoint"), 5)
    assert node.stats.processed == 1
    stages = node.diagnostic_values()  # the per-stage profile of the mask path, message conversion included
    for name in ("decode_msg", "colour", "structure", "segmentation", "pooling", "mask", "encode_msg"):
        assert float(stages[f"stage_{name}_ms"]) >= 0.0, name
    assert float(stages["stage_segmentation_ms"]) > 0 and float(stages["stage_encode_msg_ms"]) > 0


def test_analysis_node_takes_camera_size_from_camera_info(ros):
    start(ros, AnalysisNode, camera_info_topic="camera/camera_info", crop="stretch", torch_threads=0)
    masks = ros.collect(Image, "ood/anomaly/mask")
    pub_info = ros.publisher(CameraInfo, "camera/camera_info")
    pub = ros.publisher(SynthesisResult, "ood/synthesis")
    ros.wait_for_subscribers(pub)
    ros.wait_for_subscribers(pub_info)
    pub_info.publish(CameraInfo(header=header(0), width=200, height=100))
    time.sleep(0.3)
    img = scene(64, 64)
    pub.publish(synthesis_msg(1, img, img))
    assert wait_until(lambda: masks, 10)
    assert (masks[0].width, masks[0].height) == (200, 100) and image_to_array(masks[0]).max() == 0


def test_analysis_node_refuses_malformed_input_and_keeps_running(ros):
    node = start(ros, AnalysisNode, diagnostics_period_s=0.2, torch_threads=0)
    anomalies = ros.collect(AnomalyMask, "ood/anomaly")
    diags = ros.collect(DiagnosticArray, "/diagnostics")
    pub = ros.publisher(SynthesisResult, "ood/synthesis")
    ros.wait_for_subscribers(pub)
    img = scene(64, 64)
    pub.publish(synthesis_msg(0, img, scene(32, 32)))  # sizes differ
    bad = synthesis_msg(1, img, img)
    bad.input.data = bad.input.data[:100]  # truncated
    time.sleep(0.1)
    pub.publish(bad)
    assert wait_until(lambda: node.stats.rejected == 2, 5)
    assert anomalies == []
    assert wait_until(lambda: diag_has(diags, DiagnosticStatus.WARN, "rejected"), 5)
    pub.publish(synthesis_msg(2, img, img))
    assert wait_until(lambda: len(anomalies) == 1, 10)
    assert anomalies[0].frame_score == 0.0 and anomalies[0].regions == []


def test_analysis_node_loads_nominal_statistics_or_refuses_a_missing_folder(ros, tmp_path):
    from ood_monitor.core.analysis.nominal import NominalStatsError

    node = start(ros, AnalysisNode, diagnostics_period_s=0.2, torch_threads=0)  # auto: the shipped folder
    assert node.analyzer.nominal is not None and "analysis_nominal" in node.diagnostic_values()["nominal_stats"]
    assert node.diagnostic_values()["nominal_stats_mismatch"] == "none"
    assert node.set_parameters([Parameter("weight_colour", value=2.0)])[0].successful
    assert "weight_colour 0.5 -> 2.0" in node.diagnostic_values()["nominal_stats_mismatch"]  # fitted on others
    off = start(ros, AnalysisNode, node_name="analysis_raw", nominal_stats="none", torch_threads=0)
    assert off.analyzer.nominal is None and off.diagnostic_values()["nominal_stats"].startswith("off")
    with pytest.raises(NominalStatsError, match=r"absent/config.json .*ood-monitor calibrate-analysis"):
        start(ros, AnalysisNode, node_name="analysis_bad", nominal_stats=str(tmp_path / "absent"))


# ---------------------------------------------------------------------------------- nav_bridge_node

K = np.array([[110.0, 0.0, 63.5], [0.0, 110.0, 63.5], [0.0, 0.0, 1.0]])
POSE = CameraPose(height=1.0, pitch=0.3)


def camera_info() -> CameraInfo:
    info = CameraInfo(header=header(0), width=128, height=128, distortion_model="plumb_bob")
    info.k = K.ravel().tolist()
    info.d = [0.0] * 5
    return info


def anomaly_at(i: int, ground_xy, score: float = 0.9, encoding: str = "mono8") -> AnomalyMask:
    """An AnomalyMask whose anomalous blob covers the image of a ground point."""
    u, v = np.round(ground_to_pixel(np.array([[*ground_xy, 0.0]]), K, POSE.matrix())[0]).astype(int)
    mask = np.zeros((128, 128), np.uint8)
    mask[v - 2:v + 3, u - 2:u + 3] = 255
    conf = (mask > 0).astype(np.float32) * score
    h = header(i)
    m = AnomalyMask(header=h, mask=array_to_image(mask, "mono8", header=h), frame_score=score, segmenter="slic",
                    confidence=array_to_image(conf, "32FC1", header=h))
    if encoding != "mono8":
        m.mask = array_to_image(np.zeros((128, 128, 3), np.uint8), encoding, header=h)
    return m


def bridge(ros, **params) -> NavBridgeNode:
    defaults = {"camera_height": POSE.height, "camera_pitch": POSE.pitch, "pixel_stride": 1,
                "costmap_resolution": 0.25, "costmap_size_m": 20.0, "diagnostics_period_s": 0.2}
    return start(ros, NavBridgeNode, **{**defaults, **params})


def test_nav_bridge_projects_marks_and_limits_speed(ros):
    node = bridge(ros)
    clouds = ros.collect(PointCloud2, "ood/obstacles")
    grids = ros.collect(OccupancyGrid, "ood/costmap")
    speeds = ros.collect(Float32, "ood/speed_limit")
    pub_info = ros.publisher(CameraInfo, "ood/camera_info")
    pub = ros.publisher(AnomalyMask, "ood/anomaly")
    ros.wait_for_subscribers(pub)
    ros.wait_for_subscribers(pub_info)
    pub_info.publish(camera_info())
    assert wait_until(lambda: node.camera is not None, 5)
    pub.publish(anomaly_at(1, (5.0, 1.0)))
    assert wait_until(lambda: clouds and grids and speeds, 10)
    pts = pointcloud_to_structured(clouds[0])
    assert clouds[0].header.frame_id == "base_link" and clouds[0].header.stamp == header(1).stamp
    assert len(pts) == 25
    xy = np.column_stack([pts["x"], pts["y"]])
    assert np.linalg.norm(np.median(xy, axis=0) - [5.0, 1.0]) < 0.05  # centre pixel lands on the point
    assert np.allclose(pts["z"], 0.2) and np.allclose(pts["intensity"], 0.9)
    g = grids[0]
    assert g.header.frame_id == "base_link" and g.info.resolution == 0.25 and g.info.width == 80
    data = np.array(g.data, np.int8).reshape(g.info.height, g.info.width)
    col = int((5.0 - g.info.origin.position.x) / 0.25)
    row = int((1.0 - g.info.origin.position.y) / 0.25)
    assert data[row - 1:row + 2, col - 1:col + 2].max() == 90 and data.max() == 90
    assert speeds[0].data == pytest.approx(100 - (0.9 >= 0.8) * 80)  # score 0.9 >= stop_score: 20 %
    assert node.pose_source.startswith("parameters")


def test_nav_bridge_uses_tf_when_a_buffer_answers(ros):
    node = bridge(ros, camera_pitch=0.0, camera_height=5.0)  # wrong parameters: tf must win

    class Buffer:
        def lookup_transform(self, target, source, _stamp):
            t = TransformStamped()
            if (target, source) == ("base_link", "cam_front"):
                m = POSE.matrix()
                from scipy.spatial.transform import Rotation

                q = Rotation.from_matrix(m[:3, :3]).as_quat()
                t.transform.rotation.x, t.transform.rotation.y, t.transform.rotation.z, t.transform.rotation.w = q
                t.transform.translation.z = m[2, 3]
            elif (target, source) == ("odom", "base_link"):
                t.transform.translation.x, t.transform.rotation.w = 10.0, 1.0  # robot 10 m along odom x
            else:
                raise LookupError(f"{target} <- {source}")
            return t

    node.tf_buffer = Buffer()
    clouds = ros.collect(PointCloud2, "ood/obstacles")
    grids = ros.collect(OccupancyGrid, "ood/costmap")
    pub_info = ros.publisher(CameraInfo, "ood/camera_info")
    pub = ros.publisher(AnomalyMask, "ood/anomaly")
    ros.wait_for_subscribers(pub)
    ros.wait_for_subscribers(pub_info)
    pub_info.publish(camera_info())
    assert wait_until(lambda: node.camera is not None, 5)
    pub.publish(anomaly_at(1, (4.0, -0.5)))
    assert wait_until(lambda: clouds and grids, 10)
    pts = pointcloud_to_structured(clouds[0])
    centre = np.round(ground_to_pixel(np.array([[4.0, -0.5, 0.0]]), K, POSE.matrix()))
    expected, _ = project_to_ground(centre, K, POSE.matrix())  # the tf pose, not the parameters
    np.testing.assert_allclose(np.median(np.column_stack([pts["x"], pts["y"]]), axis=0), expected[0, :2], atol=1e-4)
    g = grids[0]
    assert g.header.frame_id == "odom" and node.pose_source == "tf"
    assert g.info.origin.position.x == pytest.approx(0.0)  # centred on the robot at x = 10
    data = np.array(g.data, np.int8).reshape(g.info.height, g.info.width)
    gx, gy = expected[0, 0] + 10.0, expected[0, 1]  # odom = base + 10 m in x
    assert data[int((gy - g.info.origin.position.y) / 0.25), int((gx - g.info.origin.position.x) / 0.25)] == 90


def test_nav_bridge_refuses_bad_input_with_diagnostics(ros):
    node = bridge(ros)
    clouds = ros.collect(PointCloud2, "ood/obstacles")
    diags = ros.collect(DiagnosticArray, "/diagnostics")
    pub_info = ros.publisher(CameraInfo, "ood/camera_info")
    pub = ros.publisher(AnomalyMask, "ood/anomaly")
    ros.wait_for_subscribers(pub)
    ros.wait_for_subscribers(pub_info)
    pub.publish(anomaly_at(1, (5.0, 0.0)))  # no camera_info yet
    assert wait_until(lambda: node.stats.rejected == 1, 5)
    assert "no camera_info yet" in node.stats.last_error
    pub_info.publish(CameraInfo(header=header(0), width=0, height=0))  # invalid
    assert wait_until(lambda: node.stats.rejected == 2, 5)
    pub_info.publish(camera_info())
    assert wait_until(lambda: node.camera is not None, 5)
    pub.publish(anomaly_at(2, (5.0, 0.0), encoding="rgb8"))
    assert wait_until(lambda: node.stats.rejected == 3, 5)
    assert "mono8" in node.stats.last_error and clouds == []
    assert wait_until(lambda: diag_has(diags, DiagnosticStatus.WARN, "rejected"), 5)
    pub.publish(anomaly_at(3, (5.0, 0.0)))
    assert wait_until(lambda: len(clouds) == 1, 5)  # still alive
