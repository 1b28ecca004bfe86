"""Inductive conformal anomaly detection over a frame stream (arXiv 2409.00880 and its lineage;
docs/methods.md#conformal-martingales).

A frame's nonconformity score becomes a p-value against the scores of a separate calibration split:
p = (#{cal >= s} + 1) / (n + 1), floored at `p_floor` (0.005 in the reference) so the martingale stays
finite. Single p-values are noisy; a camera stream is a sequence, so alarms come from sequential tests:

* martingales over a sliding window of the last `window` p-values, in log space:
  power      log M = sum_i [log eps + (eps - 1) log p_i]
  mixture    log M = log of integral_0^1 prod_i eps p_i^(eps - 1) d eps
                   = log of integral_0^1 eps^n exp((eps - 1) S) d eps,  S = sum_i log p_i,
  so the mixture depends on the window only through (n, S) and is one fixed Gauss-Legendre sum.
  On exchangeable data p is uniform and E[M] = 1, so log M > threshold has probability <= e^-threshold
  per frame (Markov); a run of small p-values grows log M by about -log p per frame.
* CUSUM on the p-values: S_t = max(0, S_{t-1} + (-log p_t) - delta). Under exchangeability -log p is
  Exp(1) (mean 1), so any delta > 1 gives a negative drift; with p floored at 0.005, -log p <= 5.3, so
  delta must stay well below 5.3 or the statistic can never grow. Defaults delta = 2, threshold = 20
  alarm after about 6 frames at the floor. (The reference's delta = 5 / threshold = 20 setting
  accumulates a different statistic; these are parameters.) The statistic is capped at threshold +
  delta: uncapped, a 40-frame episode at the floor leaves S ~ 130 that nominal frames drain at ~1.5
  per frame, so the alarm outlived the episode by ~90 frames (the demo test split: 933 false alarms
  per 1000 nominal frames); capped, it clears within about two nominal frames, still rides out one
  nominal-looking frame inside an episode, and a Page CUSUM never needs more than the threshold.
* `pvalue`: alarm on a single frame with p <= pvalue_threshold (no memory; for comparison).

Tail beyond the calibration (`tail: pareto`): a conformal p-value cannot fall below 1/(n+1), so a
frame just past the largest calibration score and a frame a thousand times past it get the same p-value.
On a real camera the calibration never covers every nominal stretch, so frames of ordinary drift sit at
that floor as often as fogged or blinded ones do, and no threshold can tell them apart. With the tail on,
a score s beyond the largest calibration score c_max gets p = (c_max / s)^alpha / (n + 1): the p-value
keeps falling along a Pareto tail of index alpha: the one `ood-monitor calibrate` stored (the heavier of
Hill's estimate and the overshoot between held-out blocks, core/alarm_calibration.py), else Hill's
estimate from the top 10 % of the calibration scores (Hill 1975, "A simple general approach to inference about the tail of a
distribution"; the peaks-over-threshold idea of Siffer et al., KDD 2017). Inside the calibration's range
nothing changes. A Pareto tail decays slower than the chi-square-like tails of these scores, so the
extrapolated p-values err on the large (cautious) side.

Score tolerance (`score_tolerance` kappa >= 1): a score s is compared with the calibration as s / kappa,
so a nominal stretch whose scores run up to kappa times the calibration's is not yet strange. Scores are
non-negative (squared distances, KL sums), so the factor is a shift in log score. Why: on a real camera the
calibration is a few tens of seconds; later stretches of the same drive (a camera nudged, another corner
of the room, the light later in the day) scored 1.2-4x the calibration's largest score while the
corruptions and objects of the real-footage benchmark scored 5-200x (docs/real_footage.md). `ood-monitor
calibrate` measures kappa on the nominal data itself: the most a contiguous block's top score exceeds
the top score of every block before it (core/alarm_calibration.py, `block_tolerance`).

The newest frame's own evidence (`frame_p_max`): a martingale or CUSUM alarm also needs the newest
frame's p-value at or below `frame_p_max` (0.005: past the calibration's range, with the tail). Why: with a
2-frame window, one frame at the floor holds about half the threshold, so after an episode ends the first
clean frame with a middling p-value (0.04-0.3) still crossed: on the real-footage tuning recordings every
false alarm left was such a frame right after an episode (docs/real_footage.md#alarm-needs-the-newest-frame).
The gate only removes alarms, so the martingale's false-alarm bound still holds; where the monitor's
smallest reachable p-value is above the gate (no tail: 1/(n+1); or `p_floor`), that p-value is the gate,
so an alarm stays reachable.

Everything is numpy, O(window) per update.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

TESTS = ("martingale", "cusum", "pvalue")
MARTINGALES = ("mixture", "power")
TAILS = ("none", "pareto")
TAIL_FRACTION = 0.1   # share of the calibration scores Hill's estimator reads
MIN_TAIL = 5          # ... and never fewer than this many
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(96)
_EPS = 0.5 * (_GL_NODES + 1.0)            # nodes mapped to (0, 1)
_LOG_EPS = np.log(_EPS)
_LOG_W = np.log(0.5 * _GL_WEIGHTS)


@dataclass(frozen=True)
class AlarmConfig:
    """Which sequential test raises `is_ood`, and every threshold. log_martingale thresholds are natural
    logs (10 = a likelihood ratio of about 22000 against exchangeability)."""

    test: str = "martingale"
    martingale: str = "mixture"
    epsilon: float = 0.5
    window: int = 20
    martingale_threshold: float = 10.0
    cusum_delta: float = 2.0
    cusum_threshold: float = 20.0
    pvalue_threshold: float = 0.01
    p_floor: float = 0.005
    tail: str = "none"
    tail_index: float = 0.0  # Pareto index of the tail; 0 with tail "pareto": Hill's estimate from the calibration
    score_tolerance: float = 1.0  # scores are compared with the calibration as score / score_tolerance (module doc)
    frame_p_max: float = 0.005  # martingale / CUSUM alarms also need the newest p <= this (module doc; 1: off)

    def __post_init__(self) -> None:
        if self.test not in TESTS:
            raise ValueError(f"alarm test must be one of {TESTS}, got {self.test!r}")
        if self.martingale not in MARTINGALES:
            raise ValueError(f"martingale must be one of {MARTINGALES}, got {self.martingale!r}")
        if self.tail not in TAILS:
            raise ValueError(f"p-value tail must be one of {TAILS}, got {self.tail!r}")
        if self.tail_index < 0:
            raise ValueError(f"tail index must be >= 0 (0: estimate it), got {self.tail_index}")
        if not self.score_tolerance >= 1.0:
            raise ValueError(f"score tolerance must be >= 1 (1: none), got {self.score_tolerance}")
        if not 0.0 < self.epsilon < 1.0:
            raise ValueError(f"power martingale epsilon must be in (0, 1), got {self.epsilon}")
        if self.window < 1:
            raise ValueError(f"martingale window must be >= 1, got {self.window}")
        if not 0.0 < self.p_floor < 1.0 or not 0.0 < self.pvalue_threshold < 1.0:
            raise ValueError("p_floor and pvalue_threshold must be in (0, 1)")
        if not 0.0 < self.frame_p_max <= 1.0:
            raise ValueError(f"frame_p_max must be in (0, 1] (1: off), got {self.frame_p_max}")
        if self.cusum_delta <= 0 or self.cusum_threshold <= 0:
            raise ValueError("cusum_delta and cusum_threshold must be positive")


class Decision(NamedTuple):
    p_value: float
    log_martingale: float
    cusum: float
    is_ood: bool


def p_values(cal_sorted: np.ndarray, scores: np.ndarray | float, floor: float = 0.005,
             tail_index: float = 0.0, tolerance: float = 1.0) -> np.ndarray:
    """Conformal p-values of `scores` / `tolerance` against ascending calibration scores, floored at
    `floor`; with a `tail_index` > 0, scores beyond the largest calibration score follow its Pareto tail
    (module doc)."""
    cal = np.asarray(cal_sorted, dtype=np.float64)
    s = np.atleast_1d(np.asarray(scores, dtype=np.float64)) / tolerance
    at_least = cal.size - np.searchsorted(cal, s, side="left")
    p = (at_least + 1.0) / (cal.size + 1.0)
    if tail_index > 0.0:
        beyond = s > cal[-1]
        p[beyond] = (cal[-1] / s[beyond]) ** tail_index / (cal.size + 1.0)
    return np.maximum(p, floor)


def hill_tail_index(cal_sorted: np.ndarray) -> float:
    """Hill's estimate of the Pareto index of the calibration scores' upper tail, from the top
    TAIL_FRACTION of them over the next one; 0 (no tail) when there are too few or non-positive scores."""
    cal = np.asarray(cal_sorted, dtype=np.float64)
    k = max(MIN_TAIL, int(round(TAIL_FRACTION * cal.size)))
    if cal.size < k + 1 or cal[-k - 1] <= 0.0:
        return 0.0
    mean_log = float(np.mean(np.log(cal[-k:] / cal[-k - 1])))
    return 1.0 / mean_log if mean_log > 0.0 else 0.0


def tail_index_for(cal_sorted: np.ndarray, cfg: AlarmConfig) -> float:
    """The Pareto index a monitor extrapolates p-values with (0: no tail)."""
    if cfg.tail != "pareto":
        return 0.0
    return cfg.tail_index or hill_tail_index(cal_sorted)


def log_power_martingale(sum_log_p: float, n: int, epsilon: float) -> float:
    return n * float(np.log(epsilon)) + (epsilon - 1.0) * sum_log_p


def log_mixture_martingale(sum_log_p: float, n: int) -> float:
    """log of integral_0^1 eps^n exp((eps - 1) S) d eps by 96-point Gauss-Legendre in log space."""
    terms = _LOG_W + n * _LOG_EPS + (_EPS - 1.0) * sum_log_p
    top = terms.max()
    return float(top + np.log(np.exp(terms - top).sum()))


def score_threshold(cal_sorted: np.ndarray, alpha: float) -> float:
    """The calibration score above which a frame's p-value is <= alpha (inf if no score can be)."""
    cal = np.asarray(cal_sorted, dtype=np.float64)
    allowed = int(np.floor(alpha * (cal.size + 1) - 1.0 + 1e-9))  # max #{cal >= s} with p <= alpha
    if allowed < 0:
        return float("inf")
    return float(cal[cal.size - allowed - 1]) if allowed < cal.size else float("-inf")


def frame_gate(n: int, tail_index: float, cfg: AlarmConfig) -> float:
    """The p-value the newest frame must reach for a martingale / CUSUM alarm: `frame_p_max`, or the
    smallest p-value the monitor can give when that is larger (no tail: 1/(n+1); the floor), so the gate
    never makes an alarm unreachable."""
    smallest = cfg.p_floor if tail_index > 0.0 else max(cfg.p_floor, 1.0 / (n + 1.0))
    return max(cfg.frame_p_max, smallest)


class ConformalMonitor:
    """Stateful p-value -> martingale / CUSUM -> alarm, one `update` per frame."""

    def __init__(self, calibration_scores: np.ndarray, cfg: AlarmConfig | None = None) -> None:
        cal = np.sort(np.asarray(calibration_scores, dtype=np.float64))
        if cal.ndim != 1 or cal.size == 0 or not np.all(np.isfinite(cal)):
            raise ValueError("calibration scores must be a non-empty 1-D array of finite numbers")
        self.cal = cal
        self.cfg = cfg or AlarmConfig()
        self.tail_index = tail_index_for(cal, self.cfg)
        self.score_threshold = self.cfg.score_tolerance * score_threshold(cal, self.cfg.pvalue_threshold)
        self.frame_p_gate = frame_gate(cal.size, self.tail_index, self.cfg)
        self._log_p: deque[float] = deque(maxlen=self.cfg.window)
        self._cusum = 0.0

    def reset(self) -> None:
        """Start a new sequence (e.g. after a gap in the stream)."""
        self._log_p.clear()
        self._cusum = 0.0

    def p_value(self, score: float) -> float:
        return float(p_values(self.cal, score, self.cfg.p_floor, self.tail_index, self.cfg.score_tolerance)[0])

    def update(self, score: float) -> Decision:
        if not np.isfinite(score):
            raise ValueError(f"nonconformity score must be finite, got {score}")
        cfg = self.cfg
        p = self.p_value(score)
        log_p = float(np.log(p))
        self._log_p.append(log_p)
        total, n = float(sum(self._log_p)), len(self._log_p)
        if cfg.martingale == "mixture":
            log_m = log_mixture_martingale(total, n)
        else:
            log_m = log_power_martingale(total, n, cfg.epsilon)
        self._cusum = min(max(0.0, self._cusum - log_p - cfg.cusum_delta), cfg.cusum_threshold + cfg.cusum_delta)
        if cfg.test == "martingale":
            alarm = log_m > cfg.martingale_threshold and p <= self.frame_p_gate
        elif cfg.test == "cusum":
            alarm = self._cusum > cfg.cusum_threshold and p <= self.frame_p_gate
        else:
            alarm = p <= cfg.pvalue_threshold
        return Decision(p, log_m, self._cusum, bool(alarm))


def monitor_sequence(calibration_scores: np.ndarray, scores: np.ndarray, cfg: AlarmConfig | None = None,
                     sequence: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Run a monitor over a score array (offline evaluation), resetting where `sequence` changes."""
    mon = ConformalMonitor(calibration_scores, cfg)
    out = {k: np.empty(len(scores)) for k in ("p_value", "log_martingale", "cusum")}
    out["is_ood"] = np.zeros(len(scores), dtype=bool)
    prev = None
    for i, s in enumerate(scores):
        if sequence is not None:
            if prev is not None and sequence[i] != prev:
                mon.reset()
            prev = sequence[i]
        d = mon.update(float(s))
        out["p_value"][i], out["log_martingale"][i], out["cusum"][i], out["is_ood"][i] = d
    return out
