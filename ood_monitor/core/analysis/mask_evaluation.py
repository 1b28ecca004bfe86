"""Anomaly-mask evaluation as the pipeline runs it: camera frame -> prepared model-size frame ->
synthesizer -> analysis, scored against the ground truth brought to the same crop and size (pixel
AUC-PR over frames with anomalies; F* over ground-truth objects, docs/methods.md#mask-metrics)."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import cv2
import numpy as np

from ood_monitor.core.analysis import Analyzer
from ood_monitor.core.mask_metrics import FStar, PixelAucPr
from ood_monitor.core.model_input import FrameConfig, crop_window, prepare_frame


def prepare_label(label: np.ndarray, cfg: FrameConfig) -> np.ndarray:
    """A mask or semantic label image through the same crop as the frame, resized nearest-neighbour."""
    win = crop_window(label.shape[1], label.shape[0], cfg)
    view = label[win.y0:win.y0 + win.height, win.x0:win.x0 + win.width]
    return cv2.resize(view, (cfg.width, cfg.height), interpolation=cv2.INTER_NEAREST)


@dataclass
class MaskEvaluation:
    """Running pixel AUC-PR and F*; keeps the first `keep` frames for overlays."""

    anomaly_ids: tuple[int, ...]
    ignore_ids: tuple[int, ...] = ()
    keep: int = 6
    keep_every: int = 1  # sampling stride of the overlays; doubles whenever `keep` is exceeded, so the kept
    # frames stay spread over every episode evaluated (large and small objects), not the first few
    auc: PixelAucPr = field(default_factory=PixelAucPr)
    samples: list[tuple[np.ndarray, ...]] = field(default_factory=list)
    ms: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.fstar = FStar(self.anomaly_ids, self.ignore_ids)

    def add(self, image: np.ndarray, synth: np.ndarray, confidence: np.ndarray, mask: np.ndarray,
            gt_mask: np.ndarray, semantic: np.ndarray | None, ms: float) -> None:
        self.auc.add(confidence, gt_mask)
        if semantic is not None:
            self.fstar.add(confidence, semantic)
        self.ms.append(ms)
        if (len(self.ms) - 1) % self.keep_every == 0:
            self.samples.append((image, synth, confidence, mask, gt_mask))
            if len(self.samples) > self.keep:  # thin out: every other kept frame, sample half as often
                self.samples, self.keep_every = self.samples[::2], self.keep_every * 2

    def result(self) -> dict[str, float]:
        best, tau = self.fstar.value()
        return {"frames": self.auc.frames, "auc_pr": self.auc.value(), "f_star": best, "f_star_tau": tau,
                "ms_per_frame": float(np.mean(self.ms)) if self.ms else float("nan")}


def evaluate_masks(frames: Iterable, synthesize: Callable[[np.ndarray], np.ndarray], analyzer: Analyzer,
                   cfg: FrameConfig, evaluations: dict[str, MaskEvaluation]) -> dict[str, MaskEvaluation]:
    """Run synthesis + analysis on every frame that has a non-empty ground-truth mask; each frame counts
    in `evaluations["all"]` and in the evaluation named by its category (e.g. "object"), if any."""
    import time

    for f in frames:
        if f.mask is None or not f.mask.any():
            continue
        image = prepare_frame(f.image, cfg)
        t0 = time.perf_counter()
        synth = synthesize(image)
        result = analyzer.analyze(image, synth)
        ms = (time.perf_counter() - t0) * 1e3
        semantic = prepare_label(f.semantic, cfg) if f.semantic is not None else None
        gt = prepare_label(f.mask, cfg)
        if gt.any():
            for name in ("all", f.category):
                if name in evaluations:
                    evaluations[name].add(image, synth, result.confidence, result.mask.mask, gt, semantic, ms)
    return evaluations


def overlay(image: np.ndarray, mask: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Predicted mask in red, ground truth outlined in green, over the input."""
    out = image.copy()
    red = mask > 0
    out[red] = (0.5 * out[red] + 0.5 * np.array([255, 0, 0])).astype(np.uint8)
    contours, _ = cv2.findContours((gt > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, (0, 255, 0), 1)
    return out


def heat(confidence: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(cv2.applyColorMap((np.clip(confidence, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_INFERNO),
                        cv2.COLOR_BGR2RGB)
