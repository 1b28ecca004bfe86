"""Is a long run flat? Memory and latency sampled over time, reduced to a slope and a late/early ratio,
so `bench pipeline --stress` can say "no leak, no backlog" with the figures that back it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FlatnessConfig:
    """What counts as flat after the warm-up windows are dropped."""

    warmup_windows: int = 1  # model warm-up, allocator pools, DDS discovery
    max_mb_per_min: float = 2.0  # memory slope above this reads as a leak
    max_latency_ratio: float = 1.5  # p95 of the last third over the first third above this reads as a backlog
    latency_slack_ms: float = 5.0  # ratios of tiny latencies are noise: allow this much absolute growth


def slope_per_min(t_s: np.ndarray, values: np.ndarray) -> float:
    """Least-squares slope in units per minute (NaN with fewer than two finite points)."""
    t_s, values = np.asarray(t_s, float), np.asarray(values, float)
    ok = np.isfinite(t_s) & np.isfinite(values)
    if ok.sum() < 2 or np.ptp(t_s[ok]) == 0:
        return float("nan")
    return float(np.polyfit(t_s[ok] / 60.0, values[ok], 1)[0])


def thirds_ratio(values: np.ndarray) -> tuple[float, float]:
    """(mean of the first third, mean of the last third) of a sequence, ignoring NaNs."""
    values = np.asarray(values, float)
    k = max(1, len(values) // 3)
    first, last = values[:k], values[-k:]
    mean = lambda a: float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")  # noqa: E731
    return mean(first), mean(last)


def memory_trend(t_s: np.ndarray, rss_mb: np.ndarray, cfg: FlatnessConfig) -> dict:
    """Slope and start/end of one process's resident memory after warm-up."""
    t_s, rss_mb = np.asarray(t_s, float)[cfg.warmup_windows:], np.asarray(rss_mb, float)[cfg.warmup_windows:]
    slope = slope_per_min(t_s, rss_mb)
    return {"start_mb": float(rss_mb[0]) if rss_mb.size else float("nan"),
            "end_mb": float(rss_mb[-1]) if rss_mb.size else float("nan"),
            "mb_per_min": slope, "flat": bool(np.isfinite(slope) and slope <= cfg.max_mb_per_min)}


def latency_trend(p95_ms: np.ndarray, cfg: FlatnessConfig) -> dict:
    """p95 latency early vs late after warm-up: a growing queue shows as a late p95 far above the early."""
    p95_ms = np.asarray(p95_ms, float)[cfg.warmup_windows:]
    early, late = thirds_ratio(p95_ms)
    ratio = late / early if early > 0 else float("nan")
    flat = bool(np.isfinite(late) and late <= early * cfg.max_latency_ratio + cfg.latency_slack_ms)
    return {"early_p95_ms": early, "late_p95_ms": late, "late_over_early": ratio, "flat": flat}
