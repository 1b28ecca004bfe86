"""vae_detector_node: ood/image or ood/flow -> ood/score/<detector> (ood_msgs/OODScore).

One node class, launched once per detector: `detector: image` runs the β-VAE encoder on ood/image
(rgb8), `detector: flow` the flow-VAE encoder on ood/flow (32FC2, or 32FC3 with the warp residual). Each frame gets the latent KL score
(docs/methods.md#vae-detectors) nonconformity score, an inductive conformal p-value against the model's stored
calibration scores and the martingale / CUSUM alarm; optional cached MC dropout
(docs/methods.md#mc-dropout-ignore-rule) adds the score's uncertainty. The model must exist, match the input
and carry calibration scores, or the node refuses to start with a message saying which file and what to run.
"""
from __future__ import annotations

import math
import time

from sensor_msgs.msg import Image

from ood_monitor.core.alarm_calibration import resolve_alarm
from ood_monitor.core.conformal import MARTINGALES, TAILS, TESTS, AlarmConfig, ConformalMonitor
from ood_monitor.core.detector import VaeDetector
from ood_monitor.core.model_dirs import resolve_model_dir
from ood_monitor.core.vae.io import ModelFileError
from ood_monitor.ros.image import ImageConversionError, image_to_array
from ood_monitor.ros.node_main import exit_process, run_node
from ood_monitor.ros.params import Limits, one_of, positive
from ood_monitor.ros.qos import sensor_qos
from ood_monitor.ros.stage_node import StageNode, stage_parameters, stamp_ns
from ood_monitor.ros.threads import limit_threads
from ood_msgs.msg import OODScore

DETECTORS = {"image": ("ood/image", ("rgb8",)), "flow": ("ood/flow", ("32FC2", "32FC3"))}  # topic, encodings
BACKENDS = ("torch", "onnxruntime", "tensorrt")

PARAMETERS = {
    "detector": ("image", "image (β-VAE on ood/image) or flow (VAE on ood/flow)"),
    "input_topic": ("", "input topic; empty: ood/image or ood/flow by detector"),
    "model_dir": ("", "model folder (model.safetensors + config.json); empty: models/vae_<detector>"),
    "backend": ("onnxruntime", "inference backend: onnxruntime (the VAE trunk 2x faster than torch on one CPU "
                "thread, the same scores) | torch | tensorrt"),
    "device": ("cpu", "cpu or cuda"),
    "precision": ("", "empty: the model's own (fp32, or a compressed variant's); fp32 | fp16 | int8"),
    "engine_cache_dir": ("", "TensorRT engine cache (empty: ~/.cache/ood_monitor/engines)"),
    "force_compressed": (False, "run a compressed variant even though the OOD guard flagged it"),
    "inference_threads": (0, "ONNX Runtime, torch and BLAS CPU threads (0: library default)"),
    "input_height": (128, "frame size the preprocess node produces; the model must match"),
    "input_width": (128, "frame size the preprocess node produces; the model must match"),
    "mc_samples": (0, "MC-dropout samples per frame (0: off); the trunk runs once, the tail N times"),
    "mc_z": (1.96, "z of the MC-dropout confidence interval of the score"),
    "ignore_uncertain": (True, "ignore-uncertain rule (MC dropout on quantized nets, arXiv 2403.01076): a frame "
                                "whose score interval straddles the threshold keeps the previous is_ood"),
    "alarm_test": ("martingale", "which test sets is_ood: martingale | cusum | pvalue"),
    "martingale": ("", "mixture (simple mixture) | power; empty: the model's calibrated setting"),
    "epsilon": (0.0, "power martingale epsilon; 0: the model's calibrated setting"),
    "window": (0, "sliding window of p-values for the martingale; 0: the window `ood-monitor calibrate` chose"),
    "martingale_threshold": (0.0, "alarm when the log martingale exceeds this; 0: the threshold `ood-monitor "
                                  "calibrate` chose for its false-alarm target"),
    "cusum_delta": (0.0, "CUSUM drift subtracted from -log p each frame; 0: the model's calibrated setting"),
    "cusum_threshold": (0.0, "alarm when the CUSUM statistic exceeds this; 0: the threshold `ood-monitor "
                             "calibrate` chose"),
    "pvalue_threshold": (0.01, "alarm test pvalue: a frame with p below this is OOD"),
    "p_floor": (0.0, "p-values are clipped at this floor (keeps the martingale finite); 0: the model's setting"),
    "tail": ("", "none | pareto: p-values of scores beyond the largest calibration score keep falling along the "
                 "calibration's Pareto tail instead of stopping at 1/(n+1); empty: the model's calibrated setting"),
    "tail_index": (0.0, "Pareto index of that tail (larger: p falls faster); 0: the model's calibrated index"),
    "score_tolerance": (0.0, "scores are compared with the calibration as score / score_tolerance (>= 1): nominal "
                             "stretches scoring up to that many times the calibration's are not strange yet; 0: "
                             "the model's calibrated setting (`ood-monitor calibrate --score-tolerance`; for "
                             "a fused score the smallest part's, the parts keep their own ratio)"),
    "frame_p_max": (0.005, "a martingale or CUSUM alarm also needs the newest frame's own p-value at or below this "
                           "(past the calibration's range), so a window's memory of an episode that ended does "
                           "not keep the alarm up; 1: off"),
    "max_gap_s": (1.0, "a stamp gap longer than this, or a stamp jumping back, restarts the alarm state"),
    **stage_parameters(output_depth=10, stale_timeout_s=2.0, outputs="ood/score/<detector>"),
}


def is_variant(model_dir) -> bool:
    """A folder written by `ood-monitor compress` (its config.json has a compression section)."""
    import json

    try:
        return "compression" in json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return False


def check_card(card, model_dir, kind: str, size: tuple[int, int]) -> None:
    """The model must be of this detector's kind and input size (the checks VaeDetector.from_model_dir
    makes)."""
    if card.kind != kind:
        raise ModelFileError(f"{model_dir}/config.json is a {card.kind} model but a {kind} detector was requested")
    if (card.config.height, card.config.width) != tuple(size):
        raise ModelFileError(f"{model_dir}/config.json is for {card.config.height}x{card.config.width} input but "
                             f"frames are prepared at {size[0]}x{size[1]}")


def alarm_config(p: dict, card, model_dir) -> AlarmConfig:
    """Parameters set explicitly win; the rest are the thresholds `ood-monitor calibrate` stored with the
    model (ModelFileError, so the node refuses to start, when it stored none)."""
    return resolve_alarm(p["alarm_test"], p, lambda: card.alarm_settings(model_dir))


def alarm_summary(cfg: AlarmConfig) -> str:
    return (f"{cfg.test}; martingale {cfg.martingale} window {cfg.window} threshold {cfg.martingale_threshold:g}; "
            f"CUSUM delta {cfg.cusum_delta:g} threshold {cfg.cusum_threshold:g}; p floor {cfg.p_floor:g}; tail {cfg.tail}; "
            f"score tolerance {cfg.score_tolerance:g}; newest frame p <= {cfg.frame_p_max:g}")


LIMITS = {
    "detector": one_of(*DETECTORS), "backend": one_of(*BACKENDS), "precision": one_of("", "fp32", "fp16", "int8"),
    "inference_threads": Limits(0, 1024), "input_height": Limits(8, 8192), "input_width": Limits(8, 8192),
    "mc_samples": Limits(0, 10_000), "mc_z": positive(), "max_gap_s": positive(),
}


class VaeDetectorNode(StageNode):
    PARAMETERS = PARAMETERS
    LIMITS = LIMITS
    TUNABLE = {
        "alarm_test": lambda v: v in TESTS, "martingale": lambda v: v in MARTINGALES or v == "",
        "epsilon": lambda v: 0 <= v < 1, "window": lambda v: v >= 0, "martingale_threshold": lambda v: v >= 0,
        "cusum_delta": lambda v: v == 0 or v > 1, "cusum_threshold": lambda v: v >= 0,
        "pvalue_threshold": lambda v: 0 < v < 1, "p_floor": lambda v: 0 <= v < 1,
        "tail": lambda v: v in TAILS or v == "", "tail_index": lambda v: v >= 0,
        "score_tolerance": lambda v: v == 0 or v >= 1, "frame_p_max": lambda v: 0 < v <= 1,
        "mc_z": None, "ignore_uncertain": None,
    }

    def __init__(self, node_name: str = "vae_detector_node", **kwargs) -> None:
        super().__init__(node_name, **kwargs)

    def retune(self, name: str, value) -> None:
        """New alarm settings restart the alarm state (the window of p-values) with them."""
        if name == "mc_z":
            if self.detector.mc is not None:
                self.detector.mc.z = value
        elif name == "ignore_uncertain":
            self.ignore_uncertain = value
        else:
            alarm = alarm_config(self.p, self.detector.card, self.model_dir)
            self.detector.monitor = ConformalMonitor(self.detector.monitor.cal, alarm)
            self.last_is_ood = False

    def setup(self, p: dict) -> None:
        self.detector_name = p["detector"]
        default_topic, self.encodings = DETECTORS[self.detector_name]
        self.model_dir = resolve_model_dir(p["model_dir"] or f"models/vae_{self.detector_name}")
        self.detector = self._load_detector(p)
        alarm = alarm_config(p, self.detector.card, self.model_dir)
        self.detector.monitor = ConformalMonitor(self.detector.monitor.cal, alarm)
        self.ignore_uncertain = p["ignore_uncertain"]
        self.max_gap_ns = int(p["max_gap_s"] * 1e9)
        self.last_stamp: int | None = None
        self.last_is_ood = False
        self.counts = {"ood_frames": 0, "uncertain_frames": 0, "alarm_resets": 0}
        qos = self.start_health()
        topic = p["input_topic"] or default_topic
        self.pub = self.create_publisher(OODScore, f"ood/score/{self.detector_name}", qos)
        self.create_subscription(Image, topic, self.on_frame, sensor_qos())
        card = self.detector.card
        self.get_logger().info(
            f"{self.detector_name} detector on {topic}: {self.model_dir} ({card.config.height}x{card.config.width}, "
            f"{len(card.selected_dims)} latent dims, score {card.score}, {self.detector.monitor.cal.size} calibration scores), "
            f"alarm {alarm.test} (martingale window {alarm.window}, threshold {alarm.martingale_threshold:g}; "
            f"CUSUM threshold {alarm.cusum_threshold:g}), MC dropout {p['mc_samples'] or 'off'}")

    def _load_detector(self, p: dict) -> VaeDetector:
        """torch fp32 loads the encoder directly; other backends/precisions (and compressed variants) go
        through core.runtime, which refuses a variant the OOD guard flagged unless force_compressed."""
        size = (p["input_height"], p["input_width"])
        limit_threads(p["inference_threads"])  # one: a second thread waiting on a busy core costs a time slice
        if p["backend"] == "torch" and p["precision"] in ("", "fp32") and not is_variant(self.model_dir):
            return VaeDetector.from_model_dir(self.model_dir, AlarmConfig(), mc_samples=p["mc_samples"],
                                              device=self._device(p["device"]), z=p["mc_z"],
                                              kind=self.detector_name, expect_size=size)
        from ood_monitor.core.runtime import load_detector_backend
        from ood_monitor.core.runtime.encoder import BackendEncoder

        trunk, tail, card = load_detector_backend(self.model_dir, p["backend"], p["device"], p["precision"],
                                                  p["engine_cache_dir"] or None, p["force_compressed"],
                                                  p["inference_threads"])
        check_card(card, self.model_dir, self.detector_name, size)
        return VaeDetector(BackendEncoder(trunk, tail), card, card.calibration_scores(self.model_dir), AlarmConfig(),
                           mc_samples=p["mc_samples"], z=p["mc_z"])

    def _device(self, device: str) -> str:
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise RuntimeError(f"device {device!r} requested but CUDA is not available: set parameter device to cpu")
        return device

    def diagnostic_values(self) -> dict[str, str]:
        card = self.detector.card
        return {"detector": self.detector_name, "backend": self.p["backend"], "precision": self.p["precision"] or "model",
                "device": self.p["device"],
                "model": str(self.model_dir), "model_sha256": card.weights_sha256[:16], "score": card.score_description,
                "calibration_scores": str(self.detector.monitor.cal.size),
                "mc_samples": str(self.detector.mc.samples if self.detector.mc else 0),
                "alarm": alarm_summary(self.detector.monitor.cfg),
                **{k: str(v) for k, v in self.counts.items()}}

    def on_frame(self, msg: Image) -> None:
        start = time.perf_counter()
        stamp = stamp_ns(msg.header)
        self.stats.on_input(stamp)
        try:
            if msg.encoding not in self.encodings:
                raise ImageConversionError(f"{self.detector_name} detector expects {' or '.join(self.encodings)}, "
                                           f"got {msg.encoding!r}")
            frame = image_to_array(msg)
            self._restart_if_discontinuous(stamp)
            result = self.detector.score_frame(frame)
        except (ImageConversionError, ValueError) as exc:
            self._reject(str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - last resort: a callback must never take the node down
            self._unexpected(exc, "frame callback")
            return
        is_ood = result.is_ood
        if result.uncertain:
            self.counts["uncertain_frames"] += 1
            if self.ignore_uncertain:
                is_ood = self.last_is_ood
        self.last_is_ood = is_ood
        self.counts["ood_frames"] += int(is_ood)
        latency = (time.perf_counter() - start) * 1e3
        self.pub.publish(OODScore(
            header=msg.header, detector=self.detector_name, score=result.score, p_value=result.p_value,
            log_martingale=result.log_martingale, cusum=result.cusum, is_ood=is_ood,
            uncertainty=result.uncertainty if not math.isnan(result.uncertainty) else math.nan,
            latency_ms=latency))
        self.stats.on_output(latency)

    def _restart_if_discontinuous(self, stamp: int) -> None:
        """A looped bag or a long gap starts a new sequence: the old p-values say nothing about it."""
        last, self.last_stamp = self.last_stamp, stamp
        if last is not None and (stamp <= last or stamp - last > self.max_gap_ns):
            if stamp == last:
                raise ValueError(f"duplicate stamp {stamp} ns: frame ignored")
            self.detector.reset()
            self.last_is_ood = False
            self.counts["alarm_resets"] += 1


def main(args: list[str] | None = None) -> None:
    exit_process(run_node(VaeDetectorNode, "vae_detector_node", args))


if __name__ == "__main__":
    main()
