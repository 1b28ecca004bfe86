"""Analysis step of anomalies by synthesis (docs/methods.md#segment-pooling): input vs synthesized frame ->
pooled anomaly map, binary mask and regions. ROS-free; the analysis node, the bench and the evaluator all call
`Analyzer`."""
from __future__ import annotations

import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from ood_monitor.core.analysis.discrepancy import (
    Discrepancy,
    DiscrepancyConfig,
    FeatureExtractor,
    FrameFeatures,
)
from ood_monitor.core.analysis.masks import MaskResult, Region, extract_regions
from ood_monitor.core.analysis.nominal import NominalDiscrepancy
from ood_monitor.core.analysis.pooling import pool_labels
from ood_monitor.core.analysis.segmenters import Segmenter


@dataclass(frozen=True)
class AnalysisConfig:
    """Defaults are the shipped ones (config/default.yaml's analysis_node section, the node's PARAMETERS
    default to them), chosen on a tuning split by scripts/tune_analysis.py."""

    discrepancy: DiscrepancyConfig = field(default_factory=DiscrepancyConfig)
    threshold: float = 0.5  # confidence at or above this is anomalous
    min_region_px: int = 20  # smaller connected regions are dropped from mask and regions
    # confidence = clip(gain x pooled discrepancy, 0, 1). The weighted mean of three terms stays far below 1
    # even on clear anomalies (pooled ~0.2-0.35 on the demo data), so unscaled every threshold would sit in
    # the bottom third of [0, 1]; 2.5 = 0.5 / the pooled level where object F1 peaks on the tuning split,
    # so confidence 0.5 is that decision point and a 0.1 threshold step is a 20 % change around it. With
    # nominal statistics (core/analysis/nominal.py) their z_scale is calibrated to keep that point at 0.5.
    confidence_gain: float = 2.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0 or self.min_region_px < 0 or self.confidence_gain <= 0:
            raise ValueError(f"threshold must be in [0, 1], min_region_px >= 0 and confidence_gain > 0, got "
                             f"{self.threshold}, {self.min_region_px}, {self.confidence_gain}")


def analysis_config(params: Mapping[str, Any]) -> AnalysisConfig:
    """AnalysisConfig from analysis_node parameters: the node's own, or a ROS parameter file's section (what
    `ood-monitor evaluate --params` runs). Names are the fields of AnalysisConfig and DiscrepancyConfig;
    absent ones keep the defaults."""
    disc = replace(DiscrepancyConfig(), **{f.name: params[f.name] for f in fields(DiscrepancyConfig) if f.name in params})
    top = {f.name: params[f.name] for f in fields(AnalysisConfig) if f.name != "discrepancy" and f.name in params}
    return AnalysisConfig(disc, **top)


@dataclass
class AnalysisResult:
    discrepancy: np.ndarray  # HxW float32 [0, 1], before pooling (after the nominal normalisation, if any)
    confidence: np.ndarray  # HxW float32 [0, 1], pooled over segments, times confidence_gain, clipped
    mask: MaskResult
    timings_ms: dict[str, float]

    @property
    def elapsed_ms(self) -> float:
        """The frame's analysis time: every stage but `segmentation`, which ran beside the others (what
        they waited for it is `segmentation_wait`)."""
        return sum(v for k, v in self.timings_ms.items() if k != "segmentation")


class Analyzer:
    """discrepancy -> (nominal normalisation) -> segment pooling -> threshold + regions. `segmenter=None`
    skips pooling; `nominal=None` pools the raw discrepancy (the analysis as published)."""

    def __init__(self, cfg: AnalysisConfig | None = None, segmenter: Segmenter | None = None,
                 extractor: FeatureExtractor | None = None, nominal: NominalDiscrepancy | None = None) -> None:
        self.cfg = cfg or AnalysisConfig()
        self.segmenter = segmenter
        self.discrepancy = Discrepancy(self.cfg.discrepancy, extractor)
        self.nominal = nominal
        self._segment_thread: ThreadPoolExecutor | None = None

    def _segment(self, image: np.ndarray) -> Future:
        """The segmentation needs only the input frame, so it runs on a thread of its own beside the
        discrepancy: SLIC's k-means and torch's convolutions release the GIL, and with a core free the
        frame's analysis is 5 ms shorter (18.5 -> 13.4 ms isolated on the 2-core EPYC; the same 19 ms
        either way with the other core busy). Future of (labels, ms)."""
        if self._segment_thread is None:
            self._segment_thread = ThreadPoolExecutor(1, thread_name_prefix="segmentation")
        return self._segment_thread.submit(self._timed_labels, image)

    def _timed_labels(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        labels = self.segmenter.labels(image)
        return labels, (time.perf_counter() - t0) * 1e3

    def analyze(self, image: np.ndarray, synthesized: np.ndarray,
                image_features: FrameFeatures | None = None) -> AnalysisResult:
        """`timings_ms` is the per-stage profile: the discrepancy terms (features, colour, structure; each
        only when enabled), nominal (normalisation), segmentation (its own time, on its thread beside the
        discrepancy and nominal stages), segmentation_wait (what this thread then still waited for it),
        pooling (+ confidence), mask (threshold + regions). All but segmentation sum to the frame's
        analysis time. `image_features`: the image's encoder features from the synthesizer (used when they
        match this analysis' encoder; Discrepancy.handed_maps)."""
        t0 = time.perf_counter()
        segmentation = None if self.segmenter is None else self._segment(image)
        disc = self.discrepancy(image, synthesized, image_features)
        timings = dict(self.discrepancy.last_ms)
        t1 = time.perf_counter()
        timings["weighting"] = max(0.0, (t1 - t0) * 1e3 - sum(timings.values()))
        if self.nominal is not None:
            disc = self.nominal(image, disc)
        t2 = time.perf_counter()
        labels, segment_ms = (None, 0.0) if segmentation is None else segmentation.result()
        t3 = time.perf_counter()
        pooled = disc if labels is None else pool_labels(disc, labels)
        conf = np.clip(pooled * np.float32(self.cfg.confidence_gain), 0.0, 1.0).astype(np.float32, copy=False)
        t4 = time.perf_counter()
        mask = extract_regions(conf, self.cfg.threshold, self.cfg.min_region_px)
        t5 = time.perf_counter()
        timings.update(nominal=(t2 - t1) * 1e3, segmentation=segment_ms, segmentation_wait=(t3 - t2) * 1e3,
                       pooling=(t4 - t3) * 1e3, mask=(t5 - t4) * 1e3)
        return AnalysisResult(disc, conf, mask, timings)


__all__ = ["AnalysisConfig", "AnalysisResult", "Analyzer", "DiscrepancyConfig", "FrameFeatures", "MaskResult", "Region",
           "analysis_config"]
