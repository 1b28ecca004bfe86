"""preprocess_node: camera -> ood/image (rgb8, model size) + ood/flow (32FC3: u, v, warp residual; 32FC2
without the residual) + ood/camera_info.

Subscribes the camera with sensor-data QoS (keep last 1: a busy node drops stale frames, it never
queues), prepares frames with the ROS-free `Preprocessor`, and keeps every output's header equal to
the input's. Bad input is refused with a log line and a /diagnostics WARN/ERROR; nothing false is
published and the node keeps running.
"""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from ood_monitor.core.flow import DIS_PRESETS, FlowConfig
from ood_monitor.core.frozen import RepeatCounter
from ood_monitor.core.model_input import FrameConfig, image_transform
from ood_monitor.core.preprocess import PreprocessConfig, Preprocessor
from ood_monitor.ros.image import (
    ImageConversionError,
    array_to_image,
    compressed_to_array,
    image_to_array,
    to_rgb8,
)
from ood_monitor.ros.node_main import exit_process, run_node
from ood_monitor.ros.params import Limits, one_of, positive
from ood_monitor.ros.qos import sensor_qos
from ood_monitor.ros.stage_node import StageNode, stage_parameters, stamp_ns

PARAMETERS = {
    "image_topic": ("camera/image_raw", "camera image topic (relative names follow the namespace)"),
    "transport": ("raw", "raw: sensor_msgs/Image on image_topic; compressed: CompressedImage on <image_topic>/compressed"),
    "camera_info_topic": ("camera/camera_info", "CameraInfo topic; empty disables ood/camera_info"),
    "width": (128, "model input width in pixels"),
    "height": (128, "model input height in pixels"),
    "crop": ("center", "center: crop to the model aspect ratio then resize; stretch: resize only"),
    "flow_enabled": (True, "compute dense optical flow and publish ood/flow"),
    "flow_preset": ("ultrafast", "OpenCV DIS preset: ultrafast | fast | medium"),
    "flow_residual": (True, "add the warp residual (|next frame warped back by the flow - previous frame|, grey "
                            "levels) as a third channel of ood/flow (32FC3); flow models scored with posterior_motion (the "
                            "default and the shipped flow model) need it"),
    "max_gap_s": (1.0, "a larger gap between stamps restarts the flow sequence"),
    "max_repeated_frames": (RepeatCounter.limit, "more exact repeats of the camera frame in a row than this: ERROR 'camera frozen' "
                               "on /diagnostics (0: off)"),
    **stage_parameters(output_depth=5, stale_timeout_s=2.0, outputs="the outputs"),
}


LIMITS = {
    "transport": one_of("raw", "compressed"), "width": Limits(8, 8192), "height": Limits(8, 8192),
    "crop": one_of("center", "stretch"), "flow_preset": one_of(*DIS_PRESETS), "max_gap_s": positive(),
    "max_repeated_frames": Limits(0, 1_000_000),
}


class PreprocessNode(StageNode):
    PARAMETERS = PARAMETERS
    LIMITS = LIMITS
    TUNABLE = ("flow_preset", "max_gap_s")

    def __init__(self, node_name: str = "preprocess_node", **kwargs) -> None:
        super().__init__(node_name, **kwargs)

    def retune(self, name: str, value) -> None:
        """A new DIS preset or gap restarts the flow sequence with the new settings."""
        field = "preset" if name == "flow_preset" else name
        self.cfg = replace(self.cfg, flow=replace(self.cfg.flow, **{field: value}))
        self.pre = Preprocessor(self.cfg)

    def setup(self, p: dict) -> None:
        self.cfg = PreprocessConfig(
            frame=FrameConfig(width=p["width"], height=p["height"], crop=p["crop"]),
            flow=FlowConfig(preset=p["flow_preset"], max_gap_s=p["max_gap_s"], residual=p["flow_residual"]),
            flow_enabled=p["flow_enabled"],
        )
        self.pre = Preprocessor(self.cfg)
        self.repeats = RepeatCounter(p["max_repeated_frames"])
        qos = self.start_health()
        self.resets: dict[str, int] = {}
        self.pub_image = self.create_publisher(Image, "ood/image", qos)
        self.pub_flow = self.create_publisher(Image, "ood/flow", qos) if p["flow_enabled"] else None
        self.pub_info = self.create_publisher(CameraInfo, "ood/camera_info", qos)
        if p["transport"] == "compressed":
            topic = p["image_topic"].rstrip("/") + "/compressed"
            self.create_subscription(CompressedImage, topic, self.on_compressed, sensor_qos())
        else:
            topic = p["image_topic"]
            self.create_subscription(Image, topic, self.on_image, sensor_qos())
        if p["camera_info_topic"]:
            self.create_subscription(CameraInfo, p["camera_info_topic"], self.on_camera_info, sensor_qos())
        self.get_logger().info(
            f"preprocessing {topic} ({p['transport']}) to {p['width']}x{p['height']}, "
            f"flow {'DIS ' + p['flow_preset'] if p['flow_enabled'] else 'off'}")

    def diagnostic_values(self) -> dict[str, str]:
        f = self.cfg.frame
        return {"input_size": f"{f.width}x{f.height}", "flow_preset": self.cfg.flow.preset,
                "repeated_frames": str(self.repeats.run), "longest_repeat": str(self.repeats.longest),
                **{f"flow_resets_{k}": str(v) for k, v in self.resets.items()}}

    def condition(self) -> str:
        if not self.repeats.frozen:
            return ""
        return (f"camera frozen: the same image {self.repeats.run + 1} times in a row "
                f"(max_repeated_frames {self.repeats.limit})")

    def on_image(self, msg: Image) -> None:
        self._handle(msg.header, lambda: to_rgb8(image_to_array(msg), msg.encoding))

    def on_compressed(self, msg: CompressedImage) -> None:
        self._handle(msg.header, lambda: compressed_to_array(msg, desired="rgb8"))

    def _handle(self, header, decode) -> None:
        """Decode, prepare and publish one frame; refuse anything malformed without raising."""
        start = time.perf_counter()
        stamp = stamp_ns(header)
        self.stats.on_input(stamp)
        try:
            rgb = decode()
            result = self.pre.process(rgb, stamp)
        except (ImageConversionError, ValueError) as exc:
            self._reject(str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - last resort: a callback must never take the node down
            self._unexpected(exc, "image callback")
            return
        if result.duplicate:
            self._reject(f"duplicate stamp {stamp} ns: frame ignored")
            return
        self._count_repeat(rgb)
        if result.reset and result.reset != "first":
            self.resets[result.reset] = self.resets.get(result.reset, 0) + 1
            self.get_logger().info(f"flow sequence restarted: {result.reset}")
        self.pub_image.publish(array_to_image(result.image, "rgb8", header=header))
        if self.pub_flow is not None and result.flow is not None:
            encoding = "32FC3" if result.flow.shape[-1] == 3 else "32FC2"
            self.pub_flow.publish(array_to_image(result.flow, encoding, header=header))
        self.stats.on_output((time.perf_counter() - start) * 1e3)

    def _count_repeat(self, rgb: np.ndarray) -> None:
        was_frozen = self.repeats.frozen
        self.repeats.update(rgb)
        if self.repeats.frozen and not was_frozen:
            self.get_logger().error(self.condition())
        elif was_frozen and not self.repeats.frozen:
            self.get_logger().info("camera frames change again")

    def on_camera_info(self, msg: CameraInfo) -> None:
        """Republish the intrinsics of the prepared frames (crop + resize applied to K and P)."""
        try:
            if msg.width <= 0 or msg.height <= 0:
                raise ValueError(f"camera_info has size {msg.width}x{msg.height}")
            k = np.asarray(msg.k, dtype=float).reshape(3, 3)
            if not np.isfinite(k).all() or k[0, 0] <= 0 or k[1, 1] <= 0 or not np.allclose(k[2], [0, 0, 1]):
                raise ValueError(f"camera_info K is not a valid camera matrix: {k.ravel().tolist()}")
            f = self.cfg.frame
            t = image_transform(msg.width, msg.height, f)
            out = CameraInfo(header=msg.header, width=f.width, height=f.height,
                             distortion_model=msg.distortion_model, d=list(msg.d), r=list(msg.r))
            out.k = [float(v) for v in (t @ k).ravel()]
            out.p = [float(v) for v in (t @ np.asarray(msg.p, dtype=float).reshape(3, 4)).ravel()]
            self.pub_info.publish(out)
        except ValueError as exc:
            self._reject(f"camera_info: {exc}")
        except Exception as exc:  # noqa: BLE001 - last resort
            self._unexpected(exc, "camera_info callback")


def main(args: list[str] | None = None) -> None:
    exit_process(run_node(PreprocessNode, "preprocess_node", args))


if __name__ == "__main__":
    main()
