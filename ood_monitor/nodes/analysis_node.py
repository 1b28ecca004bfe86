"""analysis_node: ood/synthesis (input + re-synthesis) -> ood/anomaly (AnomalyMask) and, at the camera's
resolution, mono8 ood/anomaly/mask and ood/anomaly/confidence (what Nav2 semantic-segmentation layers read).

The ROS-free `Analyzer` does the work: discrepancy, pooling over SAM or superpixel segments, threshold and
regions. Which segmenter runs, and why (e.g. "fallback slic: no sam_checkpoint configured"), is on every
message and on /diagnostics. Camera-resolution outputs undo the preprocess crop + resize, so a pixel of
the mask lies on the camera pixel it describes. Every output carries the input's header.
"""
from __future__ import annotations

import threading
import time

import cv2
import numpy as np
from sensor_msgs.msg import CameraInfo, Image, RegionOfInterest

from ood_monitor.core.analysis import AnalysisConfig, Analyzer, analysis_config
from ood_monitor.core.analysis.discrepancy import FEATURE_KINDS, DiscrepancyConfig, make_feature_extractor
from ood_monitor.core.analysis.masks import Region
from ood_monitor.core.analysis.nominal import load_nominal, settings_mismatch
from ood_monitor.core.analysis.segmenters import AutoMaskConfig, SlicSegmenter, make_segmenter
from ood_monitor.core.model_dirs import ModelDirError, resolve_model_dir
from ood_monitor.core.model_input import FrameConfig, image_transform
from ood_monitor.ros.features import features_from_fields
from ood_monitor.ros.image import ImageConversionError, array_to_image, image_to_array, to_rgb8
from ood_monitor.ros.node_main import exit_process, run_node
from ood_monitor.ros.params import Limits, at_least, one_of, positive
from ood_monitor.ros.qos import sensor_qos
from ood_monitor.ros.stage_node import EXIT_WORKER_WAIT_S, StageNode, stage_parameters, stamp_ns
from ood_monitor.ros.threads import limit_threads
from ood_msgs.msg import AnomalyMask, AnomalyRegion, SynthesisResult

# Analysis defaults come from the dataclasses (one source: evaluate, bench and the node run the same).
PARAMETERS = {
    "synthesis_topic": ("ood/synthesis", "SynthesisResult input (input frame + its re-synthesis)"),
    "segmenter": ("auto", "auto | sam | sam_onnx | slic | felzenszwalb (auto: SAM when configured, else fallback)"),
    "fallback_segmenter": ("slic", "superpixels used without SAM: slic | felzenszwalb"),
    "slic_segments": (SlicSegmenter.n_segments, "number of SLIC superpixels"),
    "slic_iterations": (SlicSegmenter.iterations, "SLIC k-means iterations (3: half the segmentation time of 10 at the same mask quality)"),
    "sam_checkpoint": ("", "SAM weights (.pth state_dict or .safetensors), user-supplied"),
    "sam_model_type": ("vit_b", "vit_b | vit_l | vit_h | custom (<checkpoint>.json)"),
    "sam_onnx_dir": ("", "folder written by ood_monitor.core.analysis.sam_export"),
    "sam_points_per_side": (32, "automatic mask generator point grid"),
    "sam_pred_iou_thresh": (0.88, "automatic mask generator predicted-IoU filter"),
    "sam_stability_score_thresh": (0.95, "automatic mask generator stability filter"),
    "feature_extractor": ("auto", "learned feature term: auto | none | random | vae | dcae"),
    "models_dir": ("models", "folder holding dcae/, vae_image/ and analysis_nominal/"),
    "nominal_stats": ("auto", "discrepancy normalised by nominal statistics: auto (<models_dir>/analysis_nominal "
                              "when present) | none | a folder from ood-monitor calibrate-analysis"),
    "weight_feature": (DiscrepancyConfig.weight_feature, "weight of the feature cosine-distance term"),
    "weight_colour": (DiscrepancyConfig.weight_colour, "weight of the Lab colour term"),
    "weight_structure": (DiscrepancyConfig.weight_structure, "weight of the local-SSIM structure term"),
    "confidence_gain": (AnalysisConfig.confidence_gain,
                        "confidence = clip(gain x pooled discrepancy, 0, 1) (0.5: the tuned decision point)"),
    "threshold": (AnalysisConfig.threshold, "confidence at or above this is anomalous"),
    "min_region_px": (AnalysisConfig.min_region_px, "smaller regions are dropped (model-resolution pixels)"),
    "device": ("cpu", "torch device for SAM and the feature extractor"),
    "torch_threads": (1, "torch, BLAS and OpenCV threads (0: their defaults)"),
    "camera_info_topic": ("camera/camera_info", "camera intrinsics; gives the camera resolution (empty: off)"),
    "camera_width": (0, "camera resolution of ood/anomaly/mask|confidence (0: from camera_info, else input size)"),
    "camera_height": (0, "see camera_width"),
    "crop": ("center", "how preprocess_node made the model input: center | stretch"),
    "worker_thread": (False, "true: analyse on a worker thread holding only the newest synthesis (older waiting ones are "
                            "dropped), so the callback never blocks an executor shared with the synthesizer"),
    **stage_parameters(output_depth=5, stale_timeout_s=5.0, outputs="the outputs"),
}


MAX_CAMERA_PX = 16384  # a larger camera_info size is corrupt, not a camera


def camera_warp(model_wh: tuple[int, int], camera_wh: tuple[int, int], crop: str) -> np.ndarray:
    """2x3 camera -> model pixel map (for cv2.warpAffine with WARP_INVERSE_MAP)."""
    t = image_transform(camera_wh[0], camera_wh[1], FrameConfig(model_wh[0], model_wh[1], crop))
    return t[:2].astype(np.float64)


def to_camera(image: np.ndarray, camera_wh: tuple[int, int], crop: str, nearest: bool) -> np.ndarray:
    """A model-resolution map drawn at camera resolution; camera pixels outside the crop get 0."""
    h, w = image.shape[:2]
    if (w, h) == tuple(camera_wh):
        return image
    flags = (cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR) | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(image, camera_warp((w, h), camera_wh, crop), tuple(camera_wh), flags=flags,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def region_msg(index: int, r: Region) -> AnomalyRegion:
    return AnomalyRegion(id=index, score=float(r.score), area_px=int(r.area_px),
                         roi=RegionOfInterest(x_offset=r.x, y_offset=r.y, width=r.width, height=r.height))


LIMITS = {
    "threshold": Limits(0.0, 1.0), "min_region_px": at_least(0), "weight_feature": at_least(0.0),
    "weight_colour": at_least(0.0), "weight_structure": at_least(0.0), "confidence_gain": positive(),
    "segmenter": one_of("auto", "sam", "sam_onnx", "slic", "felzenszwalb"),
    "fallback_segmenter": one_of("slic", "felzenszwalb"), "slic_segments": Limits(1, 100_000),
    "slic_iterations": Limits(1, 100),
    "sam_model_type": one_of("vit_b", "vit_l", "vit_h", "custom"), "sam_points_per_side": Limits(1, 256),
    "sam_pred_iou_thresh": Limits(0.0, 1.0), "sam_stability_score_thresh": Limits(0.0, 1.0),
    "feature_extractor": one_of(*FEATURE_KINDS), "torch_threads": Limits(0, 1024),
    "camera_width": Limits(0, 65535), "camera_height": Limits(0, 65535), "crop": one_of("center", "stretch"),
}


class AnalysisNode(StageNode):
    PARAMETERS = PARAMETERS
    LIMITS = LIMITS
    TUNABLE = ("threshold", "min_region_px", "weight_feature", "weight_colour", "weight_structure",
               "confidence_gain")

    def __init__(self, node_name: str = "analysis_node", **kwargs) -> None:
        self.stage_ms: dict[str, float] = {}
        self.cond = threading.Condition()
        self.pending: SynthesisResult | None = None
        self.superseded = 0
        self.handed = {"used": 0, "not_used": 0, "malformed": 0, "none_sent": 0}
        self.handed_reason = "none received yet"
        self.running = False
        self.worker: threading.Thread | None = None
        super().__init__(node_name, **kwargs)

    # Why a worker: in one process with the synthesizer (ood-monitor run, bench pipeline) a single-threaded
    # executor delivered no camera frame to the synthesizer while an analysis callback ran, so synthesis and
    # analysis ran one after the other (mask rate = 1 / (synthesis + analysis)); now they overlap.

    def on_message(self, msg: SynthesisResult) -> None:
        """Subscription callback: with worker_thread, hand the newest message over and return."""
        if not self.p["worker_thread"]:
            self.on_synthesis(msg)
            return
        with self.cond:
            if self.pending is not None:
                self.superseded += 1
            self.pending = msg
            self.cond.notify()

    def _work(self) -> None:
        while True:
            with self.cond:
                while self.running and self.pending is None:
                    self.cond.wait(timeout=0.2)
                if not self.running:
                    return
                msg, self.pending = self.pending, None
            self.on_synthesis(msg)

    def _start_worker(self) -> None:
        if self.p["worker_thread"]:
            self.start_worker(self._work, "analysis")

    def _stop_worker(self) -> None:
        self.stop_worker()

    def on_cleanup(self, state):
        self._stop_worker()
        return super().on_cleanup(state)

    def destroy_node(self) -> None:
        self.stop_worker(EXIT_WORKER_WAIT_S)
        super().destroy_node()

    def _track_stages(self, stages: dict[str, float]) -> None:
        """Moving averages (weight 0.1) of the per-stage ms for /diagnostics: the Analyzer's stages plus
        `decode_msg` (messages to arrays) and `encode_msg` (camera-resolution warps and arrays to messages)."""
        for name, ms in stages.items():
            old = self.stage_ms.get(name)
            self.stage_ms[name] = ms if old is None else 0.9 * old + 0.1 * ms

    def retune(self, name: str, value) -> None:
        self.analyzer.cfg = analysis_config(self.p)
        self.analyzer.discrepancy.cfg = self.analyzer.cfg.discrepancy
        self.check_nominal()

    def check_nominal(self) -> None:
        """Warn (log + /diagnostics) when the nominal statistics were fitted with other discrepancy settings."""
        nominal = self.analyzer.nominal
        self.nominal_mismatch = settings_mismatch(nominal, self.analyzer.cfg.discrepancy) if nominal else ""
        if self.nominal_mismatch:
            self.get_logger().warning(f"nominal statistics were fitted with other discrepancy settings "
                                      f"({self.nominal_mismatch}): re-run ood-monitor calibrate-analysis "
                                      f"--params <this parameter file>")

    def setup(self, p: dict) -> None:
        # OpenCV too: its thread pool fighting the other nodes for 2 cores costs more than it gives
        limit_threads(p["torch_threads"], opencv=True)
        auto = AutoMaskConfig(p["sam_points_per_side"], p["sam_pred_iou_thresh"], p["sam_stability_score_thresh"])
        choice = make_segmenter(p["segmenter"], p["sam_checkpoint"], p["sam_model_type"], p["sam_onnx_dir"],
                                p["device"], p["fallback_segmenter"], auto,
                                SlicSegmenter(n_segments=p["slic_segments"], iterations=p["slic_iterations"]))
        self.segmenter_reason = choice.reason
        self.models_dir = resolve_model_dir(p["models_dir"])
        if not self.models_dir.is_dir():
            raise ModelDirError(f"models_dir {self.models_dir} is not a folder")
        extractor, self.features = make_feature_extractor(p["feature_extractor"], self.models_dir, p["device"])
        nominal, self.nominal_desc = load_nominal(p["nominal_stats"], self.models_dir)
        self.analyzer = Analyzer(analysis_config(p), choice.segmenter, extractor, nominal)
        self.check_nominal()
        self.camera_wh = (p["camera_width"], p["camera_height"]) if p["camera_width"] > 0 and p["camera_height"] > 0 \
            else None
        self.camera_from_param = self.camera_wh is not None
        qos = self.start_health()
        self.pub_anomaly = self.create_publisher(AnomalyMask, "ood/anomaly", qos)
        self.pub_mask = self.create_publisher(Image, "ood/anomaly/mask", qos)
        self.pub_conf = self.create_publisher(Image, "ood/anomaly/confidence", qos)
        self.create_subscription(SynthesisResult, p["synthesis_topic"], self.on_message, sensor_qos())
        self._start_worker()
        if p["camera_info_topic"] and not self.camera_from_param:
            self.create_subscription(CameraInfo, p["camera_info_topic"], self.on_camera_info, sensor_qos())
        log = self.get_logger().warning if choice.reason.startswith("fallback") else self.get_logger().info
        log(f"segmenter {choice.segmenter.name} ({choice.reason}); features {self.features}; "
            f"nominal statistics {self.nominal_desc}")

    def diagnostic_values(self) -> dict[str, str]:
        cam = f"{self.camera_wh[0]}x{self.camera_wh[1]}" if self.camera_wh else "input size"
        return {"segmenter": self.analyzer.segmenter.name, "segmenter_reason": self.segmenter_reason,
                "models_dir": str(self.models_dir), "features": self.features, "nominal_stats": self.nominal_desc,
                "nominal_stats_mismatch": self.nominal_mismatch or "none",
                "threshold": str(self.analyzer.cfg.threshold), "camera_size": cam,
                "superseded": str(self.superseded),
                **{f"handed_features_{k}": str(v) for k, v in self.handed.items()},
                "handed_features": self.handed_reason,
                **{f"stage_{k}_ms": f"{v:.1f}" for k, v in self.stage_ms.items()}}

    def on_camera_info(self, msg: CameraInfo) -> None:
        if not (0 < msg.width <= MAX_CAMERA_PX and 0 < msg.height <= MAX_CAMERA_PX):
            self._reject(f"camera_info has size {msg.width}x{msg.height} (1..{MAX_CAMERA_PX} px)")
            return
        self.camera_wh = (int(msg.width), int(msg.height))

    def on_synthesis(self, msg: SynthesisResult) -> None:
        """Analyse one frame pair and publish; anything malformed is refused without raising."""
        start = time.perf_counter()
        self.stats.on_input(stamp_ns(msg.header))
        try:
            image = to_rgb8(image_to_array(msg.input), msg.input.encoding)
            synth = to_rgb8(image_to_array(msg.synthesized), msg.synthesized.encoding)
            if image.shape != synth.shape:
                raise ValueError(f"input {image.shape[1]}x{image.shape[0]} and synthesized "
                                 f"{synth.shape[1]}x{synth.shape[0]} differ in size")
            features, malformed = self._handed_features(msg)
            decoded = time.perf_counter()
            result = self.analyzer.analyze(image, synth, features)
            self._count_handed(features, malformed)
        except (ImageConversionError, ValueError) as exc:
            self._reject(str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - last resort: a callback must never take the node down
            self._unexpected(exc, "synthesis callback")
            return
        if self.p["worker_thread"] and not self.running:  # stopped while this frame was analysed
            return
        self._publish(msg.header, result, start)
        done = time.perf_counter()
        analysed = decoded + result.elapsed_ms / 1e3
        self._track_stages({"decode_msg": (decoded - start) * 1e3, **result.timings_ms,
                            "encode_msg": max(0.0, (done - analysed) * 1e3)})

    def _handed_features(self, msg: SynthesisResult):
        """(the input's encoder features the synthesizer sent or None, why they are malformed or "").
        Malformed ones are ignored (the analysis computes its own), never a refused frame."""
        try:
            return features_from_fields(msg.input_features, msg.feature_shapes, msg.feature_source), ""
        except ValueError as exc:
            return None, str(exc)

    def _count_handed(self, features, malformed: str) -> None:
        """Counts and the latest reason for /diagnostics (`handed_features`)."""
        if malformed:
            self.handed["malformed"] += 1
            self.handed_reason = f"malformed: {malformed}"
        elif features is None:
            self.handed["none_sent"] += 1
            self.handed_reason = "none sent (synthesizer_node hand_features false, or no DC-AE)"
        elif self.analyzer.discrepancy.last_handed:
            self.handed["not_used"] += 1
            self.handed_reason = f"not used: {self.analyzer.discrepancy.last_handed}"
        else:
            self.handed["used"] += 1
            self.handed_reason = "used"

    def _publish(self, header, result, start: float) -> None:
        conf = np.clip(result.confidence, 0.0, 1.0).astype(np.float32)
        mask = result.mask.mask
        camera_wh = self.camera_wh or (mask.shape[1], mask.shape[0])
        conf8 = np.rint(to_camera(conf, camera_wh, self.p["crop"], nearest=False) * 255).astype(np.uint8)
        mask_cam = to_camera(mask, camera_wh, self.p["crop"], nearest=True)
        latency = (time.perf_counter() - start) * 1e3
        out = AnomalyMask(header=header, confidence=array_to_image(conf, "32FC1", header=header),
                          mask=array_to_image(mask, "mono8", header=header),
                          frame_score=float(result.mask.frame_score),
                          regions=[region_msg(i, r) for i, r in enumerate(result.mask.regions)],
                          segmenter=self.analyzer.segmenter.name, latency_ms=float(latency))
        self.pub_anomaly.publish(out)
        self.pub_mask.publish(array_to_image(mask_cam, "mono8", header=header))
        self.pub_conf.publish(array_to_image(conf8, "mono8", header=header))
        self.stats.on_output(latency)


def main(args: list[str] | None = None) -> None:
    exit_process(run_node(AnalysisNode, "analysis_node", args))


if __name__ == "__main__":
    main()
