"""Flatness verdicts of `bench pipeline --stress` on series with known trends."""
from __future__ import annotations

import numpy as np
import pytest

from ood_monitor.core.trend import FlatnessConfig, latency_trend, memory_trend, slope_per_min

CFG = FlatnessConfig()
T = np.arange(1, 31) * 10.0  # 30 windows of 10 s: five minutes


def test_slope_is_per_minute_and_ignores_nans():
    values = 100 + 0.5 * T  # 0.5 MB/s = 30 MB/min
    values[4] = np.nan
    assert slope_per_min(T, values) == pytest.approx(30.0)
    assert np.isnan(slope_per_min(T[:1], values[:1]))


def test_a_leak_is_caught_and_flat_memory_with_noise_and_warmup_is_not():
    rng = np.random.default_rng(0)
    flat = 600 + rng.normal(0, 0.5, T.size)
    flat[0] = 550  # warm-up window: allocator pools filling, dropped
    assert memory_trend(T, flat, CFG)["flat"]
    leak = 600 + 0.1 * T  # 6 MB/min
    m = memory_trend(T, leak, CFG)
    assert not m["flat"] and m["mb_per_min"] == pytest.approx(6.0)


def test_a_growing_queue_is_caught_and_steady_latency_is_not():
    steady = 30 + np.random.default_rng(1).normal(0, 2, T.size)
    assert latency_trend(steady, CFG)["flat"]
    backlog = 30 + 10 * np.arange(T.size)  # each window 10 ms later: a queue that never drains
    trend = latency_trend(backlog, CFG)
    assert not trend["flat"] and trend["late_over_early"] > 3
    tiny = np.r_[np.full(15, 1.0), np.full(15, 3.0)]  # 1 -> 3 ms: a ratio of noise, within the slack
    assert latency_trend(tiny, CFG)["flat"]
