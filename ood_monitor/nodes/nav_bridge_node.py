"""nav_bridge_node: ood/anomaly (AnomalyMask) + camera_info -> what Nav2 acts on.

- ood/obstacles: PointCloud2 of anomalous pixels projected onto the ground, lifted to `obstacle_height`
  so the obstacle/voxel layer's height filter keeps them (an observation source, see
  config/nav2_costmap_example.yaml).
- ood/costmap: a rolling OccupancyGrid around the robot, cost = anomaly confidence, decaying over time.
- ood/speed_limit: nav2_msgs/SpeedLimit (percent) when nav2_msgs imports, else std_msgs/Float32 (percent).

The camera pose comes from tf2 (base <- camera frame, and global <- base for the costmap) when tf2_ros
imports and the lookup succeeds, else from parameters; /diagnostics says which.
"""
from __future__ import annotations

import array
import time

import numpy as np
from geometry_msgs.msg import Pose
from nav_msgs.msg import MapMetaData, OccupancyGrid
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, PointCloud2
from std_msgs.msg import Float32, Header

from ood_monitor.core.analysis.costmap import CostmapConfig, RollingCostmap, SpeedLimiter, SpeedPolicy
from ood_monitor.core.analysis.geometry import (
    OPTICAL_TO_BODY,
    CameraPose,
    mask_pixels,
    project_to_ground,
    quaternion_matrix,
)
from ood_monitor.ros.image import ImageConversionError, image_to_array
from ood_monitor.ros.node_main import exit_process, run_node
from ood_monitor.ros.params import Limits, at_least, one_of, positive
from ood_monitor.ros.pointcloud import xyz_cloud
from ood_monitor.ros.qos import sensor_qos
from ood_monitor.ros.stage_node import StageNode, stage_parameters, stamp_ns
from ood_msgs.msg import AnomalyMask

try:
    from nav2_msgs.msg import SpeedLimit
except ImportError:
    SpeedLimit = None

PARAMETERS = {
    "anomaly_topic": ("ood/anomaly", "AnomalyMask input"),
    "camera_info_topic": ("ood/camera_info", "intrinsics of the frames the masks were computed on"),
    "base_frame": ("base_link", "robot frame of the obstacle points (ground at z = 0)"),
    "camera_frame": ("", "camera frame for tf lookups (empty: the mask's header frame_id)"),
    "camera_frame_convention": ("optical", "optical (z forward, x right) | body (x forward, z up)"),
    "global_frame": ("odom", "frame the costmap rolls in (needs tf); without tf the costmap is in base_frame"),
    "use_tf": (True, "look the camera pose up with tf2 when tf2_ros imports"),
    "camera_height": (1.0, "camera height above the ground (m), when no tf"),
    "camera_pitch": (0.2, "camera pitch (rad, positive looks down), when no tf"),
    "camera_roll": (0.0, "camera roll (rad), when no tf"),
    "camera_yaw": (0.0, "camera yaw (rad, positive looks left), when no tf"),
    "camera_x": (0.0, "camera x in base_frame (m), when no tf"),
    "camera_y": (0.0, "camera y in base_frame (m), when no tf"),
    "pixel_stride": (4, "project every n-th mask pixel in each direction"),
    "min_confidence": (0.5, "mask pixels below this confidence are not projected (analysis threshold)"),
    "obstacle_height": (0.2, "z of the published points (m): inside the obstacle layer's height band"),
    "max_range": (10.0, "ground points farther than this (m) are dropped"),
    "costmap_resolution": (0.1, "m per cell"),
    "costmap_size_m": (12.0, "side of the rolling window (m)"),
    "costmap_decay_s": (2.0, "evidence time constant (s)"),
    "speed_slow_score": (0.6, "frame score above which the speed is limited"),
    "speed_stop_score": (0.9, "frame score at which the limit reaches speed_min_percent"),
    "speed_min_percent": (20.0, "lowest speed limit (percent of maximum)"),
    "speed_hold_s": (1.0, "keep a limit this long after the last high score"),
    **stage_parameters(output_depth=5, stale_timeout_s=5.0, outputs="the outputs"),
}


MAX_CAMERA_PX = 16384  # a larger camera_info size is corrupt, not a camera


def make_tf_buffer(node: StageNode):
    """(tf2 buffer, reason): None with the reason when tf2_ros is missing."""
    try:
        from tf2_ros import Buffer, TransformListener
    except ImportError:
        return None, "parameters: tf2_ros not importable"
    buffer = Buffer()
    node._tf_listener = TransformListener(buffer, node)
    return buffer, "tf"


def transform_matrix(stamped) -> np.ndarray:
    t, q = stamped.transform.translation, stamped.transform.rotation
    return quaternion_matrix((t.x, t.y, t.z), (q.x, q.y, q.z, q.w))


def scaled_k(k: np.ndarray, info_wh: tuple[int, int], mask_wh: tuple[int, int]) -> np.ndarray:
    """K of an image of `mask_wh` resized from `info_wh` (pixel-centre convention)."""
    if info_wh == mask_wh:
        return k
    sx, sy = mask_wh[0] / info_wh[0], mask_wh[1] / info_wh[1]
    s = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
    return s @ k


LIMITS = {
    "min_confidence": Limits(0.0, 1.0), "obstacle_height": at_least(0.0), "max_range": positive(),
    "pixel_stride": Limits(1, 1024), "speed_slow_score": Limits(0.0, 1.0), "speed_stop_score": Limits(0.0, 1.0),
    "speed_min_percent": Limits(0.0, 100.0), "speed_hold_s": at_least(0.0),
    "camera_frame_convention": one_of("optical", "body"), "camera_height": positive(),
    "costmap_resolution": positive(), "costmap_size_m": positive(), "costmap_decay_s": positive(),
}


class NavBridgeNode(StageNode):
    PARAMETERS = PARAMETERS
    LIMITS = LIMITS
    TUNABLE = ("min_confidence", "obstacle_height", "max_range", "pixel_stride", "speed_slow_score",
               "speed_stop_score", "speed_min_percent", "speed_hold_s")

    def __init__(self, node_name: str = "nav_bridge_node", **kwargs) -> None:
        super().__init__(node_name, **kwargs)

    def retune(self, name: str, value) -> None:
        """Projection settings are read per frame from self.p; the speed policy is rebuilt."""
        if name.startswith("speed_"):
            p = self.p
            self.speed.policy = SpeedPolicy(p["speed_slow_score"], p["speed_stop_score"], p["speed_min_percent"],
                                            p["speed_hold_s"])

    def setup(self, p: dict) -> None:
        self.pose = CameraPose(p["camera_height"], p["camera_pitch"], p["camera_roll"], p["camera_yaw"],
                               p["camera_x"], p["camera_y"])
        self.costmap = RollingCostmap(CostmapConfig(p["costmap_resolution"], p["costmap_size_m"], p["costmap_decay_s"],
                                                    p["min_confidence"]))
        self.speed = SpeedLimiter(SpeedPolicy(p["speed_slow_score"], p["speed_stop_score"], p["speed_min_percent"],
                                              p["speed_hold_s"]))
        self.tf_buffer, self.pose_source = make_tf_buffer(self) if p["use_tf"] else (None, "parameters: use_tf false")
        self.camera: tuple[np.ndarray, np.ndarray, tuple[int, int]] | None = None  # K, D, (w, h)
        self.last_points = 0
        self.costmap_frame = p["base_frame"]
        self._global_from_base = np.eye(4)
        qos = self.start_health()
        self.pub_cloud = self.create_publisher(PointCloud2, "ood/obstacles", qos)
        self.pub_costmap = self.create_publisher(OccupancyGrid, "ood/costmap", qos)
        self.speed_type = SpeedLimit if SpeedLimit is not None else Float32
        self.pub_speed = self.create_publisher(self.speed_type, "ood/speed_limit", qos)
        self.create_subscription(AnomalyMask, p["anomaly_topic"], self.on_anomaly, sensor_qos())
        self.create_subscription(CameraInfo, p["camera_info_topic"], self.on_camera_info, sensor_qos())
        self.get_logger().info(f"camera pose from {self.pose_source}; speed limit as {self.speed_type.__name__}")

    def diagnostic_values(self) -> dict[str, str]:
        return {"pose_source": self.pose_source, "camera_info": "received" if self.camera else "waiting",
                "speed_limit_type": self.speed_type.__name__, "last_points": str(self.last_points),
                "costmap_frame": self.costmap_frame}

    def on_camera_info(self, msg: CameraInfo) -> None:
        try:
            k = np.asarray(msg.k, dtype=float).reshape(3, 3)
            d = np.asarray(msg.d, dtype=float)
            if not (0 < msg.width <= MAX_CAMERA_PX and 0 < msg.height <= MAX_CAMERA_PX):
                raise ValueError(f"size {msg.width}x{msg.height}")
            if not np.isfinite(k).all() or k[0, 0] <= 0 or k[1, 1] <= 0 or not np.allclose(k[2], [0, 0, 1]):
                raise ValueError(f"K {k.ravel().tolist()} is not a camera matrix")
            if not np.isfinite(d).all() or d.size not in (0, 4, 5, 8, 12, 14):
                raise ValueError(f"distortion D {d.tolist()} (finite, 0/4/5/8/12/14 coefficients)")
        except ValueError as exc:
            self._reject(f"camera_info: invalid {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - last resort
            self._unexpected(exc, "camera_info callback")
            return
        self.camera = (k, d, (int(msg.width), int(msg.height)))

    # ------------------------------------------------------------------------------------- pose

    def camera_pose(self, header) -> np.ndarray:
        """base <- camera optical transform: tf when it answers, parameters otherwise."""
        if self.tf_buffer is not None:
            frame = self.p["camera_frame"] or header.frame_id
            try:
                m = transform_matrix(self._lookup(self.p["base_frame"], frame, header))
                if self.p["camera_frame_convention"] == "body":
                    m[:3, :3] = m[:3, :3] @ OPTICAL_TO_BODY
                self.pose_source = "tf"
                return m
            except Exception as exc:  # tf raises several exception types; all mean "use the parameters"
                self.pose_source = f"parameters: tf lookup {self.p['base_frame']} <- {frame} failed: {exc}"
        return self.pose.matrix()

    def _lookup(self, target: str, source: str, header):
        """target <- source at the frame's stamp, else the latest transform (tf often lags the camera)."""
        try:
            return self.tf_buffer.lookup_transform(target, source, Time.from_msg(header.stamp))
        except Exception:
            return self.tf_buffer.lookup_transform(target, source, Time())

    def robot_xy(self, header) -> tuple[float, float] | None:
        """Robot position in global_frame (None without tf: the costmap then stays in base_frame)."""
        if self.tf_buffer is None:
            return None
        try:
            m = transform_matrix(self._lookup(self.p["global_frame"], self.p["base_frame"], header))
        except Exception:
            return None
        self._global_from_base = m
        return float(m[0, 3]), float(m[1, 3])

    # ------------------------------------------------------------------------------------- input

    def on_anomaly(self, msg: AnomalyMask) -> None:
        start = time.perf_counter()
        stamp = stamp_ns(msg.header)
        self.stats.on_input(stamp)
        try:
            mask, conf = self._decode(msg)
            if self.camera is None:
                raise ValueError(f"no camera_info yet on {self.p['camera_info_topic']}: cannot project")
            self._process(msg.header, mask, conf, float(msg.frame_score), stamp * 1e-9)
        except (ImageConversionError, ValueError) as exc:
            self._reject(str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - last resort: a callback must never take the node down
            self._unexpected(exc, "anomaly callback")
            return
        self.stats.on_output((time.perf_counter() - start) * 1e3)

    def _decode(self, msg: AnomalyMask) -> tuple[np.ndarray, np.ndarray]:
        if msg.mask.encoding != "mono8":
            raise ValueError(f"AnomalyMask.mask must be mono8, got {msg.mask.encoding!r}")
        mask = image_to_array(msg.mask)
        if msg.confidence.encoding == "32FC1":
            conf = image_to_array(msg.confidence, allow_nonfinite=False)
        elif msg.confidence.encoding == "mono8":
            conf = image_to_array(msg.confidence).astype(np.float32) / 255.0
        else:
            raise ValueError(f"AnomalyMask.confidence must be 32FC1 or mono8, got {msg.confidence.encoding!r}")
        if conf.shape != mask.shape:
            raise ValueError(f"confidence {conf.shape} and mask {mask.shape} differ in size")
        if not np.isfinite(msg.frame_score):
            raise ValueError("frame_score is not finite")
        return mask, conf

    def _process(self, header, mask: np.ndarray, conf: np.ndarray, frame_score: float, stamp_s: float) -> None:
        k, d, info_wh = self.camera
        mask_wh = (mask.shape[1], mask.shape[0])
        keep = (mask > 0) & (conf >= self.p["min_confidence"])
        uv, c = mask_pixels(keep, conf, self.p["pixel_stride"])
        pts, idx = project_to_ground(uv, scaled_k(k, info_wh, mask_wh), self.camera_pose(header),
                                     d if info_wh == mask_wh else None, self.p["max_range"])
        c = c[idx]
        self.last_points = len(pts)
        pts[:, 2] = self.p["obstacle_height"]
        out_header = Header(stamp=header.stamp, frame_id=self.p["base_frame"])
        self.pub_cloud.publish(xyz_cloud(pts.astype(np.float32), out_header,
                                         {"intensity": c.astype(np.float32)}))
        self._update_costmap(header, pts[:, :2], c, stamp_s)
        percent = self.speed.update(stamp_s, frame_score)
        self.pub_speed.publish(self._speed_msg(header, percent))

    def _update_costmap(self, header, xy_base: np.ndarray, conf: np.ndarray, stamp_s: float) -> None:
        robot = self.robot_xy(header)
        if robot is None:
            self.costmap_frame, robot, xy = self.p["base_frame"], (0.0, 0.0), xy_base
        else:
            self.costmap_frame = self.p["global_frame"]
            g = self._global_from_base
            xy = xy_base @ g[:2, :2].T + g[:2, 3]
        self.costmap.update(stamp_s, robot, xy, conf)
        self.pub_costmap.publish(self._grid_msg(Header(stamp=header.stamp, frame_id=self.costmap_frame)))

    def _grid_msg(self, header: Header) -> OccupancyGrid:
        cm = self.costmap
        n = cm.cfg.cells
        origin = Pose()
        origin.position.x, origin.position.y = float(cm.origin[0]), float(cm.origin[1])
        origin.orientation.w = 1.0
        info = MapMetaData(map_load_time=header.stamp, resolution=float(cm.cfg.resolution), width=n, height=n,
                           origin=origin)
        return OccupancyGrid(header=header, info=info, data=array.array("b", cm.occupancy().tobytes()))

    def _speed_msg(self, header, percent: float):
        if SpeedLimit is not None:
            return SpeedLimit(header=Header(stamp=header.stamp, frame_id=self.p["base_frame"]), percentage=True,
                              speed_limit=float(percent))
        return Float32(data=float(percent))


def main(args: list[str] | None = None) -> None:
    exit_process(run_node(NavBridgeNode, "nav_bridge_node", args))


if __name__ == "__main__":
    main()
