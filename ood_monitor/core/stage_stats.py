"""Per-stage health numbers behind /diagnostics: input rate, latency percentiles, frames dropped
upstream (estimated from header-stamp gaps), rejected inputs and the watchdog's staleness.

ROS-free so the benchmarks and the stress test read the same numbers as the nodes publish.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

OK, WARN, ERROR, STALE = "OK", "WARN", "ERROR", "STALE"


@dataclass
class StageStats:
    """Rolling statistics of one processing stage; `window` bounds memory."""

    window: int = 300
    stale_timeout_s: float = 2.0
    clock: callable = field(default=time.monotonic, repr=False)

    def __post_init__(self) -> None:
        self._arrivals: deque[float] = deque(maxlen=self.window)
        self._latency_ms: deque[float] = deque(maxlen=self.window)
        self._stamp_deltas: deque[int] = deque(maxlen=64)
        self._last_stamp: int | None = None
        self.received = 0
        self.processed = 0
        self.dropped = 0
        self.rejected = 0
        self.last_error = ""
        self._last_error_at = -1e18
        self._consecutive_rejects = 0

    def on_input(self, stamp_ns: int | None = None) -> None:
        """A message arrived; `stamp_ns` (its header stamp) feeds the upstream-drop estimate."""
        self.received += 1
        self._arrivals.append(self.clock())
        if stamp_ns is None:
            return
        if self._last_stamp is not None and stamp_ns > self._last_stamp:
            delta = stamp_ns - self._last_stamp
            period = self.period_ns()
            if period and delta > 1.5 * period:
                self.dropped += int(round(delta / period)) - 1
            self._stamp_deltas.append(delta)
        self._last_stamp = stamp_ns

    def on_output(self, latency_ms: float) -> None:
        self.processed += 1
        self._consecutive_rejects = 0
        self._latency_ms.append(float(latency_ms))

    def on_reject(self, reason: str) -> None:
        """An input was refused (bad encoding, size, NaN, stamp ...): counted, never scored."""
        self.rejected += 1
        self._consecutive_rejects += 1
        self.last_error = reason
        self._last_error_at = self.clock()

    def period_ns(self) -> float | None:
        """Median header-stamp period of recent frames (the camera's rate, not ours)."""
        return float(np.median(self._stamp_deltas)) if len(self._stamp_deltas) >= 3 else None

    def rate_hz(self) -> float:
        """Input rate over the recent window of arrivals."""
        if len(self._arrivals) < 2:
            return 0.0
        span = self._arrivals[-1] - self._arrivals[0]
        return (len(self._arrivals) - 1) / span if span > 0 else 0.0

    def latency_percentiles(self) -> dict[str, float]:
        if not self._latency_ms:
            return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
        lat = np.fromiter(self._latency_ms, dtype=float)
        p50, p95, p99 = np.percentile(lat, [50, 95, 99])
        return {"p50": float(p50), "p95": float(p95), "p99": float(p99)}

    def seconds_since_input(self) -> float:
        return self.clock() - self._arrivals[-1] if self._arrivals else float("inf")

    def level(self) -> tuple[str, str]:
        """(level, message): STALE when input stopped, ERROR when every recent input was refused,
        WARN after a recent refusal, OK otherwise."""
        if not self._arrivals:
            return STALE, "waiting for input"
        idle = self.seconds_since_input()
        if idle > self.stale_timeout_s:
            return STALE, f"no input for {idle:.1f} s: the monitor is blind"
        if self._consecutive_rejects >= 5:
            return ERROR, f"rejecting every input: {self.last_error}"
        if self.clock() - self._last_error_at < max(self.stale_timeout_s, 1.0):
            return WARN, f"rejected input: {self.last_error}"
        return OK, "running"

    def values(self) -> dict[str, str]:
        """Key/values for the diagnostic status."""
        lat = self.latency_percentiles()
        return {
            "input_rate_hz": f"{self.rate_hz():.2f}",
            "latency_p50_ms": f"{lat['p50']:.2f}",
            "latency_p95_ms": f"{lat['p95']:.2f}",
            "latency_p99_ms": f"{lat['p99']:.2f}",
            "received": str(self.received),
            "processed": str(self.processed),
            "dropped_upstream": str(self.dropped),
            "rejected": str(self.rejected),
            "last_error": self.last_error,
        }
