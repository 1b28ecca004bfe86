"""synthesizer_node: ood/image -> ood/synthesis (SynthesisResult: input + in-distribution re-synthesis).

The diffusion model is the expensive stage, so it runs on a worker thread that only ever holds the
newest frame (a newer frame replaces one still waiting: stale frames are dropped, never queued), and a
trigger decides which frames are worth it: `always`, `every_n` (every n-th received frame) or `on_ood`
(the cascade: run only when an OODScore with the frame's exact header stamp says is_ood; a frame whose
scores have not all arrived waits at most `score_wait_s`). A lifecycle `StageNode`: a model or device that
cannot be loaded fails configure with one line naming the file or parameter (exit status 1 at start);
steps, guidance, strength, guidance kind, trigger, every_n and score_wait_s can be retuned at run time.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace

from sensor_msgs.msg import Image

from ood_monitor.core.diffusion.guided_ddim import GUIDANCE_KINDS
from ood_monitor.core.diffusion.synthesizer import Synthesizer
from ood_monitor.core.model_dirs import resolve_model_dir
from ood_monitor.ros.image import ImageConversionError, array_to_image, image_to_array, to_rgb8
from ood_monitor.ros.node_main import exit_process, run_node
from ood_monitor.ros.params import Limits, at_least, one_of, positive
from ood_monitor.ros.qos import sensor_qos
from ood_monitor.ros.stage_node import StageNode, stage_parameters, stamp_ns
from ood_msgs.msg import OODScore, SynthesisResult

TRIGGERS = ("always", "on_ood", "every_n")
NODE_PRECISIONS = ("fp32", "fp16", "int8-selected")
SCORE_CACHE = 256
STOP_TIMEOUT_S = 1.5  # a node must exit within 2 s of SIGINT (ros2 launch escalates to SIGTERM after 5 s)

PARAMETERS = {
    "input_topic": ("ood/image", "preprocessed frames (rgb8 at the model's input size)"),
    "output_topic": ("ood/synthesis", "SynthesisResult topic"),
    "model_dir": ("models/latent_dit", "latent_dit or pixel_ddpm model directory (relative: working dir, "
                  "then share/ood_monitor, then source tree)"),
    "steps": (10, "denoising steps (DDIM, eta = 0)"),
    "guidance": (4.0, "similarity guidance scale s (gradient) or w (gradfree)"),
    "strength": (0.5, "start from the input noised to t = strength*T (1.0: pure noise)"),
    "guidance_kind": ("gradient", "gradient (similarity-guided DDIM, docs/methods.md#similarity-guided-ddim) "
                                  "| gradfree | none"),
    "backend": ("torch", "inference backend: torch"),
    "device": ("cpu", "cpu | cuda"),
    "precision": ("fp32", "fp32 | fp16 (selected layers of denoiser + DC-AE, GPU) | int8-selected (weight-only, CPU)"),
    "threads": (0, "torch CPU threads (0: torch's default)"),
    "seed": (0, "noise seed (the same frame always gives the same synthesis)"),
    "trigger": ("always", "always | on_ood | every_n"),
    "every_n": (5, "with trigger every_n: synthesize every n-th received frame"),
    "score_topics": (["ood/score/image", "ood/score/flow"], "OODScore topics the on_ood trigger listens to"),
    "score_wait_s": (0.5, "on_ood: longest wait for a frame's scores before skipping it"),
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


LIMITS = {
    "steps": Limits(1, 1000), "guidance": at_least(0.0), "strength": positive(1.0),
    "guidance_kind": one_of(*GUIDANCE_KINDS), "trigger": one_of(*TRIGGERS), "every_n": at_least(1),
    "score_wait_s": at_least(0.0), "precision": one_of(*NODE_PRECISIONS), "backend": one_of("torch"),
    "device": one_of("cpu", "cuda"), "threads": Limits(0, 1024),
}


class SynthesizerNode(StageNode):
    PARAMETERS = PARAMETERS
    LIMITS = LIMITS
    TUNABLE = ("steps", "guidance", "strength", "guidance_kind", "trigger", "every_n", "score_wait_s")

    def __init__(self, node_name: str = "synthesizer_node", **kwargs) -> None:
        self.worker: threading.Thread | None = None
        self.cond = threading.Condition()
        self.running = False
        super().__init__(node_name, **kwargs)

    def setup(self, p: dict) -> None:
        self._check_parameters(p)
        self.synth = self._load(p)
        qos = self.start_health()
        self.counts = {"triggered": 0, "skipped_trigger": 0, "skipped_not_ood": 0, "skipped_score_timeout": 0,
                       "superseded": 0, "received": 0}
        self.scores: OrderedDict[int, dict[str, bool]] = OrderedDict()
        self.pending: Pending | None = None
        self.pub = self.create_publisher(SynthesisResult, p["output_topic"], qos)
        self.create_subscription(Image, p["input_topic"], self.on_image, sensor_qos())
        for topic in p["score_topics"]:  # always subscribed, so the trigger can be retuned to on_ood
            self.create_subscription(OODScore, topic, lambda m, t=topic: self.on_score(m, t), sensor_qos())
        self._start_worker()

    def retune(self, name: str, value) -> None:
        """Sampling parameters take effect from the next frame; trigger settings immediately."""
        fields = {"steps": "steps", "guidance": "scale", "strength": "strength", "guidance_kind": "kind"}
        with self.cond:
            if name in fields:
                self.synth.guidance = replace(self.synth.guidance, **{fields[name]: value})
            self.cond.notify()

    def _check_parameters(self, p: dict) -> None:
        """What the descriptors (LIMITS) cannot say: a combination of parameters."""
        if p["trigger"] == "on_ood" and not p["score_topics"]:
            raise ValueError("parameter score_topics is empty but trigger is on_ood")

    def _load(self, p: dict) -> Synthesizer:
        """The model, or ModelFileError / ValueError naming the file or parameter (configure fails)."""
        if p["threads"] > 0:
            import torch

            torch.set_num_threads(p["threads"])
        precision = "fp16-selected" if p["precision"] == "fp16" else p["precision"]
        self.model_dir = resolve_model_dir(p["model_dir"])
        synth = Synthesizer.from_model_dir(self.model_dir, steps=p["steps"],
                                           guidance=p["guidance"], strength=p["strength"],
                                           guidance_kind=p["guidance_kind"], device=p["device"],
                                           precision=precision, seed=p["seed"])
        for module in (synth.denoiser, synth.autoencoder):
            if module is not None:
                module.register_forward_pre_hook(self._cancel_if_stopping)
        self.get_logger().info(
            f"synthesizing {p['input_topic']} with {self.model_dir} ({synth.backend}, {p['steps']} steps, "
            f"{p['guidance_kind']} guidance {p['guidance']}, strength {p['strength']}, trigger {p['trigger']})")
        return synth

    def _cancel_if_stopping(self, _module, _inputs) -> None:
        if not self.running:
            raise SynthesisCancelled

    def diagnostic_values(self) -> dict[str, str]:
        s = self.synth
        return {"backend": s.backend, "model": str(self.model_dir), "model_hash": s.model_hash,
                "steps": str(s.guidance.steps), "guidance": f"{s.guidance.kind} {s.guidance.scale}",
                "strength": str(s.guidance.strength), "trigger": self.p["trigger"],
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
        with self.cond:
            while self.running:
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
        self.running = True
        self.worker = threading.Thread(target=self._work, name="synthesizer", daemon=True)
        self.worker.start()

    def _stop_worker(self) -> None:
        with self.cond:
            self.running = False
            self.cond.notify_all()
        if self.worker is not None and self.worker.is_alive() and threading.current_thread() is not self.worker:
            self.worker.join(timeout=STOP_TIMEOUT_S)
            if self.worker.is_alive():
                self.get_logger().error(f"synthesis worker still running {STOP_TIMEOUT_S} s after stop")
        self.worker = None

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
        if not self.active:  # deactivated while this frame was synthesized: outputs stay silent
            return
        latency = (time.perf_counter() - start) * 1e3
        g = self.synth.guidance
        self.pub.publish(SynthesisResult(
            header=msg.header, input=array_to_image(rgb, "rgb8", header=msg.header),
            synthesized=array_to_image(out, "rgb8", header=msg.header), steps=int(g.steps),
            guidance=float(g.scale), backend=self.synth.backend, latency_ms=float(latency)))
        self.stats.on_output(latency)

    def destroy_node(self) -> None:
        self._stop_worker()
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    exit_process(run_node(SynthesizerNode, "synthesizer_node", args))


if __name__ == "__main__":
    main()
