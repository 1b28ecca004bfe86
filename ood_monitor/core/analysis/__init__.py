"""Analysis step of anomaly-by-synthesis (seed 004): input vs synthesized frame -> pooled anomaly map,
binary mask and regions. ROS-free; the analysis node, the bench and the evaluator all call `Analyzer`."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ood_monitor.core.analysis.discrepancy import Discrepancy, DiscrepancyConfig, FeatureExtractor
from ood_monitor.core.analysis.masks import MaskResult, Region, extract_regions
from ood_monitor.core.analysis.pooling import pool_labels
from ood_monitor.core.analysis.segmenters import Segmenter


@dataclass(frozen=True)
class AnalysisConfig:
    discrepancy: DiscrepancyConfig = field(default_factory=DiscrepancyConfig)
    threshold: float = 0.3  # pooled confidence at or above this is anomalous
    min_region_px: int = 20  # smaller connected regions are dropped from mask and regions

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0 or self.min_region_px < 0:
            raise ValueError(f"threshold must be in [0, 1] and min_region_px >= 0, got "
                             f"{self.threshold}, {self.min_region_px}")


@dataclass
class AnalysisResult:
    discrepancy: np.ndarray  # HxW float32 [0, 1], before pooling
    confidence: np.ndarray  # HxW float32 [0, 1], pooled over segments
    mask: MaskResult
    timings_ms: dict[str, float]


class Analyzer:
    """discrepancy -> segment pooling -> threshold + regions. `segmenter=None` skips pooling."""

    def __init__(self, cfg: AnalysisConfig | None = None, segmenter: Segmenter | None = None,
                 extractor: FeatureExtractor | None = None) -> None:
        self.cfg = cfg or AnalysisConfig()
        self.segmenter = segmenter
        self.discrepancy = Discrepancy(self.cfg.discrepancy, extractor)

    def analyze(self, image: np.ndarray, synthesized: np.ndarray) -> AnalysisResult:
        t0 = time.perf_counter()
        disc = self.discrepancy(image, synthesized)
        t1 = time.perf_counter()
        conf = disc if self.segmenter is None else pool_labels(disc, self.segmenter.labels(image))
        t2 = time.perf_counter()
        mask = extract_regions(conf, self.cfg.threshold, self.cfg.min_region_px)
        t3 = time.perf_counter()
        timings = {"discrepancy": (t1 - t0) * 1e3, "pooling": (t2 - t1) * 1e3, "mask": (t3 - t2) * 1e3}
        return AnalysisResult(disc, conf, mask, timings)


__all__ = ["AnalysisConfig", "AnalysisResult", "Analyzer", "DiscrepancyConfig", "MaskResult", "Region"]
