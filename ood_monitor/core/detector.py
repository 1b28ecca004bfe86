"""ROS-free VAE detector: one prepared frame in, score + conformal decision out. The node wraps it.

Only the encoder is loaded (no score needs the decoder). One instance serves one model: kind
`image` takes the preprocessor's HxWx3 uint8 RGB frame, kind `flow` its HxWx2 float32 flow field in
pixels/frame at the model size. Anything else is refused with a ValueError before it reaches the model,
so a wrong-size or wrong-encoding frame is never scored.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ood_monitor.core.conformal import AlarmConfig, ConformalMonitor
from ood_monitor.core.nonconformity import encode
from ood_monitor.core.uncertainty import McDropoutScorer, stochastic_tail
from ood_monitor.core.vae.dataset import FrameSet, model_input
from ood_monitor.core.vae.io import CONFIG, ModelCard, ModelFileError, load_encoder, train_hint


@dataclass(frozen=True)
class FrameScore:
    """One frame's result; `uncertainty` is the MC-dropout std of the score (NaN when MC is off) and
    `uncertain` is the ignore rule of arXiv 2403.01076: the score's confidence interval straddles the p-value
    threshold."""

    score: float
    p_value: float
    log_martingale: float
    cusum: float
    is_ood: bool
    uncertainty: float
    uncertain: bool


def score_frameset(encoder: nn.Module, card: ModelCard, frames: FrameSet, batch: int = 256,
                   sequence: np.ndarray | None = None) -> np.ndarray:
    """Deterministic scores (the card's nonconformity) of a whole FrameSet (calibration, evaluation), in
    stream order; `sequence` (one id per frame) restarts a stateful score (the change part) where it
    changes, as the node restarts at a stamp gap (None: one sequence)."""
    mu, logvar = encode(encoder, lambda s: frames.inputs(s, card.flow_scale), len(frames), batch)
    score = card.nonconformity
    sequence = np.zeros(len(frames), np.int64) if sequence is None else np.asarray(sequence)
    return score.stream(mu, logvar, frames.raw, np.r_[True, sequence[1:] != sequence[:-1]])


class VaeDetector:
    def __init__(self, encoder: nn.Module, card: ModelCard, calibration_scores: np.ndarray,
                 alarm: AlarmConfig | None = None, mc_samples: int = 0, z: float = 1.96,
                 device: str = "cpu") -> None:
        if not card.selected_dims:
            raise ValueError("model card has no selected latent dims")
        self.card = card
        self.score = card.nonconformity
        self.device = torch.device(device)
        self.encoder = encoder.to(self.device).eval()
        self.monitor = ConformalMonitor(calibration_scores, alarm)
        self.mc = None
        if mc_samples:
            self.mc = McDropoutScorer(self._trunk, stochastic_tail(self.encoder.tail), self.score,
                                      samples=mc_samples, z=z)

    @classmethod
    def from_model_dir(cls, path: str | Path, alarm: AlarmConfig | None = None, mc_samples: int = 0,
                       device: str = "cpu", z: float = 1.96, kind: str | None = None,
                       expect_size: tuple[int, int] | None = None) -> VaeDetector:
        """Load encoder + calibration from a model directory (alarm: the calibrated settings stored there
        unless given). `kind` and `expect_size` (height, width)
        check the model against what the pipeline will feed it; mismatches raise ModelFileError."""
        encoder, card = load_encoder(path)
        cfg_path = Path(path) / CONFIG
        if kind is not None and card.kind != kind:
            raise ModelFileError(f"{cfg_path} is a {card.kind} model but a {kind} detector was requested: "
                                 f"point the model path at a {kind} model or {train_hint(path, kind)}")
        if expect_size is not None and tuple(expect_size) != (card.config.height, card.config.width):
            h, w = expect_size
            raise ModelFileError(f"{cfg_path} is for {card.config.height}x{card.config.width} input but frames "
                                 f"are prepared at {h}x{w}: set the preprocess size to match or retrain "
                                 f"with --size ({train_hint(path, card.kind)})")
        calibration = card.calibration_scores(path)
        if alarm is None:
            alarm = AlarmConfig(**card.alarm_settings(path))
        return cls(encoder, card, calibration, alarm, mc_samples, z, device)

    @property
    def kind(self) -> str:
        return self.card.kind

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.card.input_shape

    def check_input(self, frame: np.ndarray) -> None:
        """ValueError unless `frame` is exactly what this model was trained on."""
        want = self.input_shape
        dtype = np.uint8 if self.kind == "image" else np.float32
        what = "uint8 RGB" if self.kind == "image" else "float32 flow (px/frame; a third channel: the warp residual)"
        shapes = (want,) if self.kind == "image" else (want, (*want[:2], want[2] + 1))
        if not isinstance(frame, np.ndarray) or frame.shape not in shapes or frame.dtype != dtype:
            got = f"{frame.shape} {frame.dtype}" if isinstance(frame, np.ndarray) else type(frame).__name__
            raise ValueError(f"{self.kind} detector expects {want[0]}x{want[1]}x{want[2]} {what}, got {got}")
        if self.kind == "flow" and not np.all(np.isfinite(frame)):
            raise ValueError("flow field contains NaN or inf")

    def reset(self) -> None:
        """Start a new sequence: clears the martingale window, CUSUM and the change part's reference."""
        self.monitor.reset()
        self.score.restart()

    @torch.inference_mode()
    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.trunk(x)

    @torch.inference_mode()
    def score_frame(self, prepared: np.ndarray) -> FrameScore:
        self.check_input(prepared)
        x = torch.from_numpy(model_input(prepared[None], self.kind, self.card.flow_scale)).to(self.device)
        features = self._trunk(x)
        mu, logvar = self.encoder.tail(features)
        texture = self.score.frame_features(prepared[None])
        score = float(self.score(mu.cpu().numpy(), logvar.cpu().numpy(), texture)[0])
        decision = self.monitor.update(score)
        std, uncertain = float("nan"), False
        if self.mc is not None:
            est = self.mc.estimate(x, features, texture)
            std, uncertain = est.std, est.straddles(self.monitor.score_threshold)
        return FrameScore(score, decision.p_value, decision.log_martingale, decision.cusum, decision.is_ood,
                          std, uncertain)
