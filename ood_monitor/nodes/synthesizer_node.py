"""synthesizer_node: ood/image -> ood/synthesis (SynthesisResult: input + in-distribution re-synthesis).

The diffusion model is the expensive stage, so it runs on a worker thread that only ever holds the
newest frame (a newer frame replaces one still waiting: stale frames are dropped, never queued), and a
trigger decides which frames are worth it: `always`, `every_n` (every n-th received frame) or `on_ood`
(the cascade: run only when an OODScore with the frame's exact header stamp says is_ood; a frame whose
scores have not all arrived waits at most `score_wait_s`). A frame that arrived while a synthesis ran
and had waited more than `max_wait_ms` when the worker came free is dropped too: the worker starts on
the camera's next frame instead, so every mask starts from a fresh frame (on 2 cores at a 30 Hz camera
this cut camera->AnomalyMask p95 by about a quarter at a lower but still >= 15 Hz mask rate:
docs/benchmarks-masks.md). A lifecycle `StageNode`: a model or device that
cannot be loaded fails configure with one line naming the file or parameter (exit status 1 at start);
steps, guidance, strength, guidance kind, trigger, every_n, score_wait_s, max_wait_ms and hand_features
can be retuned at run time.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace

from sensor_msgs.msg import Image

from ood_monitor.core.diffusion.guided_ddim import GUIDANCE_KINDS
from ood_monitor.core.diffusion.synthesizer import (
    MAX_WAIT_MS,
    NODE_BACKENDS,
    SAMPLING_PRESETS,
    Synthesizer,
    sampling_overrides,
    synthesizer_from_params,
    waited_too_long,
)
from ood_monitor.core.model_dirs import resolve_model_dir
from ood_monitor.ros.features import features_to_fields
from ood_monitor.ros.image import ImageConversionError, array_to_image, image_to_array, to_rgb8
from ood_monitor.ros.node_main import exit_process, run_node
from ood_monitor.ros.params import Limits, at_least, one_of
from ood_monitor.ros.qos import sensor_qos
from ood_monitor.ros.stage_node import EXIT_WORKER_WAIT_S, StageNode, stage_parameters, stamp_ns
from ood_monitor.ros.threads import limit_threads
from ood_msgs.msg import OODScore, SynthesisResult

TRIGGERS = ("always", "on_ood", "every_n")
NODE_PRECISIONS = ("fp32", "fp16", "int8-selected")
SCORE_CACHE = 256

PARAMETERS = {
    "input_topic": ("ood/image", "preprocessed frames (rgb8 at the model's input size)"),
    "output_topic": ("ood/synthesis", "SynthesisResult topic"),
    "model_dir": ("models/latent_dit", "latent_dit or pixel_ddpm model directory (relative: working dir, "
                  "then share/ood_monitor, then source tree)"),
    "sampling": ("realtime", "realtime (gradient-free guidance w 4, 2 DDIM steps from strength 0.3: masks at camera "
                             "rate on a 2-core CPU) | model (the model directory's sampling: Algorithm 1 of Jiang "
                             "et al., 'Efficient Anomaly Detection using Diffusion Models', 10 steps, ~4x slower); "
                             "steps, guidance, strength and guidance_kind override it when set"),
    "steps": (0, "denoising steps (DDIM, eta = 0); 0: from sampling"),
    "guidance": (-1.0, "similarity guidance scale s (gradient) or w (gradfree); -1: from sampling"),
    "strength": (0.0, "start from the input noised to t = strength*T (1.0: pure noise); 0: from sampling"),
    "guidance_kind": ("", "gradient (Algorithm 1: backprop through the DiT) | gradfree | none; empty: from sampling"),
    "backend": ("auto", "auto (onnxruntime for fp32 where it runs on the device, else torch) | onnxruntime | torch; "
                        "gradient guidance always runs the DiT in torch (it backpropagates)"),
    "device": ("cpu", "cpu | cuda"),
    "precision": ("fp32", "fp32 | fp16 (selected layers of denoiser + DC-AE, GPU) | int8-selected (weight-only, CPU)"),
    "threads": (0, "torch, BLAS and ONNX Runtime CPU threads (0: the libraries' defaults)"),
    "seed": (0, "noise seed (the same frame always gives the same synthesis)"),
    "hand_features": (True, "send the input's DC-AE encoder features with the synthesis (0.9 MB at 128 px) so "
                            "the analysis need not compute them; false: smaller messages for a remote analysis"),
    "trigger": ("always", "always | on_ood | every_n"),
    "every_n": (5, "with trigger every_n: synthesize every n-th received frame"),
    "score_topics": (["ood/score/image", "ood/score/flow"], "OODScore topics the on_ood trigger listens to"),
    "score_wait_s": (0.5, "on_ood: longest wait for a frame's scores before skipping it"),
    "max_wait_ms": (MAX_WAIT_MS, "a frame that arrived while a synthesis ran and had waited longer than this when "
                                 "the worker came free is dropped, and the worker starts on the next frame "
                                 "(fresher masks at a lower rate, still at least half the camera's while a synthesis "
                                 "takes under two camera periods); 0: take the newest frame however old"),
    **stage_parameters(output_depth=2, stale_timeout_s=5.0, outputs="the output"),
}


class SynthesisCancelled(Exception):
    """Raised inside the diffusion model's forward when the node stops: a shutdown never waits for a
    whole synthesis (seconds on a CPU), it ends at the next network call."""


@dataclass
class Pending:
    msg: Image
    stamp: int
    arrived: float


LIMITS = {  # 0 / -1 / "": the sampling preset's value
    "sampling": one_of(*SAMPLING_PRESETS), "steps": Limits(0, 1000), "guidance": at_least(-1.0),
    "strength": Limits(0.0, 1.0), "guidance_kind": one_of(*GUIDANCE_KINDS, ""), "trigger": one_of(*TRIGGERS),
    "every_n": at_least(1), "score_wait_s": at_least(0.0), "max_wait_ms": at_least(0.0), "precision": one_of(*NODE_PRECISIONS),
    "backend": one_of(*NODE_BACKENDS),
    "device": one_of("cpu", "cuda"), "threads": Limits(0, 1024),
}


class SynthesizerNode(StageNode):
    PARAMETERS = PARAMETERS
    LIMITS = LIMITS
    TUNABLE = ("sampling", "steps", "guidance", "strength", "guidance_kind", "trigger", "every_n", "score_wait_s",
               "max_wait_ms", "hand_features")

    def __init__(self, node_name: str = "synthesizer_node", **kwargs) -> None:
        self.worker: threading.Thread | None = None
        self.stage_ms: dict[str, float] = {}
        self.cond = threading.Condition()
        self.running = False
        super().__init__(node_name, **kwargs)

    def setup(self, p: dict) -> None:
        self._check_parameters(p)
        self.synth = self._load(p)
        qos = self.start_health()
        self.counts = {"triggered": 0, "skipped_trigger": 0, "skipped_not_ood": 0, "skipped_score_timeout": 0,
                       "skipped_stale": 0, "superseded": 0, "received": 0}
        self.scores: OrderedDict[int, dict[str, bool]] = OrderedDict()
        self.pending: Pending | None = None
        self.pub = self.create_publisher(SynthesisResult, p["output_topic"], qos)
        self.create_subscription(Image, p["input_topic"], self.on_image, sensor_qos())
        for topic in p["score_topics"]:  # always subscribed, so the trigger can be retuned to on_ood
            self.create_subscription(OODScore, topic, lambda m, t=topic: self.on_score(m, t), sensor_qos())
        self._start_worker()

    def retune(self, name: str, value) -> None:
        """Sampling parameters take effect from the next frame; trigger settings immediately."""
        with self.cond:
            if name in ("sampling", "steps", "guidance", "strength", "guidance_kind"):
                self.synth.guidance = replace(self.synth.guidance, **self._sampling(self.p))
            self.cond.notify()

    def _sampling(self, p: dict) -> dict:
        """GuidanceConfig fields for the parameters (unset ones from the preset, then the model's config)."""
        o = sampling_overrides(p["sampling"], p["steps"], p["guidance"], p["strength"], p["guidance_kind"])
        defaults = self.model_sampling
        return {"steps": int(o["steps"] if o["steps"] is not None else defaults.steps),
                "scale": float(o["guidance"] if o["guidance"] is not None else defaults.scale),
                "strength": float(o["strength"] if o["strength"] is not None else defaults.strength),
                "kind": o["guidance_kind"] or defaults.kind}

    def _check_parameters(self, p: dict) -> None:
        """What the descriptors (LIMITS) cannot say: a combination of parameters."""
        if -1.0 < p["guidance"] < 0.0:
            raise ValueError(f"parameter guidance must be >= 0 (or -1: from sampling), got {p['guidance']}")
        if p["trigger"] == "on_ood" and not p["score_topics"]:
            raise ValueError("parameter score_topics is empty but trigger is on_ood")

    def _load(self, p: dict) -> Synthesizer:
        """The model, or ModelFileError / ValueError naming the file or parameter (configure fails)."""
        limit_threads(p["threads"])
        self.model_dir = resolve_model_dir(p["model_dir"])
        synth = synthesizer_from_params(self.model_dir, p)
        self.model_sampling = Synthesizer.card_sampling(self.model_dir)
        synth.before_each_call(self._cancel_if_stopping)
        g = synth.guidance
        self.get_logger().info(
            f"synthesizing {p['input_topic']} with {self.model_dir} ({synth.backend}, sampling {p['sampling']}: "
            f"{g.steps} steps, {g.kind} guidance {g.scale:g}, strength {g.strength:g}, trigger {p['trigger']})")
        return synth

    def _cancel_if_stopping(self) -> None:
        if not self.running:
            raise SynthesisCancelled

    def diagnostic_values(self) -> dict[str, str]:
        s = self.synth
        stages = {f"stage_{k}_ms": f"{v:.1f}" for k, v in self.stage_ms.items()}  # moving average per stage
        return {"backend": s.backend, "model": str(self.model_dir), "model_hash": s.model_hash,
                "sampling": self.p["sampling"], "steps": str(s.guidance.steps),
                "guidance": f"{s.guidance.kind} {s.guidance.scale}",
                "strength": str(s.guidance.strength), "trigger": self.p["trigger"], **stages,
                **{k: str(v) for k, v in self.counts.items()}}

    # ------------------------------------------------------------------------------------ callbacks

    def on_image(self, msg: Image) -> None:
        stamp = stamp_ns(msg.header)
        self.stats.on_input(stamp)
        with self.cond:
            self.counts["received"] += 1
            if self.p["trigger"] == "every_n" and (self.counts["received"] - 1) % self.p["every_n"]:
                self.counts["skipped_trigger"] += 1
                return
            if self.pending is not None:
                self.counts["superseded"] += 1
            self.pending = Pending(msg, stamp, time.monotonic())
            self.cond.notify()

    def on_score(self, msg: OODScore, topic: str) -> None:
        with self.cond:
            self.scores.setdefault(stamp_ns(msg.header), {})[topic] = bool(msg.is_ood)
            while len(self.scores) > SCORE_CACHE:
                self.scores.popitem(last=False)
            self.cond.notify()

    # ------------------------------------------------------------------------------------ worker

    def _decision(self, item: Pending) -> str:
        """"run", "wait", "not_ood" or "timeout" for the pending frame (caller holds the lock)."""
        if self.p["trigger"] != "on_ood":
            return "run"
        seen = self.scores.get(item.stamp, {})
        if any(seen.values()):
            return "run"
        if len(seen) >= len(self.p["score_topics"]):
            return "not_ood"
        return "timeout" if time.monotonic() - item.arrived > self.p["score_wait_s"] else "wait"

    def _next(self) -> Pending | None:
        free_at = time.monotonic()
        with self.cond:
            while self.running:
                if self.pending is not None and waited_too_long(self.pending.arrived, free_at, self.p["max_wait_ms"]):
                    self.counts["skipped_stale"] += 1
                    self.pending = None
                if self.pending is not None:
                    decision = self._decision(self.pending)
                    if decision == "run":
                        item, self.pending = self.pending, None
                        self.counts["triggered"] += 1
                        return item
                    if decision != "wait":
                        self.counts["skipped_not_ood" if decision == "not_ood" else "skipped_score_timeout"] += 1
                        self.pending = None
                        continue
                    self.cond.wait(timeout=0.02)
                else:
                    self.cond.wait(timeout=0.2)
        return None

    def _start_worker(self) -> None:
        self.start_worker(self._work, "synthesizer")

    def _stop_worker(self) -> None:
        self.stop_worker()

    def on_cleanup(self, state):
        self._stop_worker()
        return super().on_cleanup(state)

    def on_shutdown(self, state):
        self._stop_worker()
        return super().on_shutdown(state)

    def _work(self) -> None:
        while (item := self._next()) is not None:
            self._process(item)

    def _process(self, item: Pending) -> None:
        """Synthesize and publish one frame; refuse malformed input without raising."""
        start = time.perf_counter()
        msg = item.msg
        try:
            rgb = to_rgb8(image_to_array(msg), msg.encoding)
            out = self.synth.synthesize(rgb)
        except SynthesisCancelled:
            return
        except (ImageConversionError, ValueError) as exc:
            self._reject(str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - last resort: the worker must never die
            self._unexpected(exc, "synthesis worker")
            return
        if not (self.active and self.running):  # deactivated or stopped during this frame: outputs stay silent
            return
        handed = self.synth.last_features if self.p["hand_features"] and self.synth.feature_source else ()
        values, shapes = features_to_fields(handed)
        latency = (time.perf_counter() - start) * 1e3
        self._track_stages(self.synth.last_timing.stages(), latency - self.synth.last_timing.total_ms)
        g = self.synth.guidance
        self.pub.publish(SynthesisResult(
            header=msg.header, input=array_to_image(rgb, "rgb8", header=msg.header),
            synthesized=array_to_image(out, "rgb8", header=msg.header), steps=int(g.steps),
            guidance=float(g.scale), backend=self.synth.backend, latency_ms=float(latency),
            input_features=values, feature_shapes=shapes, feature_source=self.synth.feature_source if handed else ""))
        self.stats.on_output(latency)

    def _track_stages(self, stages: dict[str, float], conversion_ms: float) -> None:
        """Moving averages (weight 0.1) of the per-stage ms for /diagnostics: encode, dit, guidance, decode,
        conversion (message to array, and the validation around the synthesis)."""
        for name, ms in {**stages, "conversion": conversion_ms}.items():
            old = self.stage_ms.get(name)
            self.stage_ms[name] = ms if old is None else 0.9 * old + 0.1 * ms

    def destroy_node(self) -> None:
        self.stop_worker(EXIT_WORKER_WAIT_S)
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    exit_process(run_node(SynthesizerNode, "synthesizer_node", args))


if __name__ == "__main__":
    main()
