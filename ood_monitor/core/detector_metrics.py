"""Detection metrics, one definition for evaluate, bench and tests (DESIGN.md, "Metrics").

Frame level: AUROC, AUPR-in (in-distribution positive), AUPR-out (OOD positive), FPR at 95% TPR, all with
OOD as the positive class and higher score = more OOD; AUPR is scikit-learn's average precision
(step-wise, ties grouped). Alarm level: detection delay in frames from an episode's OOD
onset to its first alarm, and false alarms per 1000 in-distribution frames.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score


def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    if y.all() or not y.any():
        raise ValueError("metrics need both positive (OOD) and negative (in-distribution) frames")
    return s, y


def _curve(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative true and false positives at each distinct threshold, highest score first."""
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.cumsum(y)[last].astype(np.float64)
    return tps, (last + 1) - tps


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Probability that an OOD frame outscores an in-distribution one (ties count half)."""
    s, y = _check(scores, labels)
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size)
    sorted_s = s[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], s.size]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # average 1-based rank per tie group
    n_pos, n_neg = y.sum(), (~y).sum()
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def kind_aurocs(scores: np.ndarray, clean: np.ndarray, kinds: np.ndarray, names: tuple[str, ...]) -> list[float]:
    """AUROC of each named kind's frames against the clean frames only (the per-kind figure of the
    real-footage benchmark, where other kinds' frames are neither)."""
    scores, clean, kinds = np.asarray(scores, np.float64), np.asarray(clean, bool), np.asarray(kinds)
    out = []
    for name in names:
        ood = kinds == name
        out.append(auroc(np.r_[scores[clean], scores[ood]], np.r_[np.zeros(clean.sum(), bool), np.ones(ood.sum(), bool)]))
    return out


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    s, y = _check(scores, labels)
    return float(average_precision_score(y, s))


def aupr_out(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision with OOD frames as positives."""
    return average_precision(scores, labels)


def aupr_in(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision with in-distribution frames as positives (score negated)."""
    return average_precision(-np.asarray(scores, dtype=np.float64), ~np.asarray(labels, dtype=bool))


def fpr_at_tpr(scores: np.ndarray, labels: np.ndarray, tpr: float = 0.95) -> float:
    """False-positive rate at the first threshold whose OOD recall reaches `tpr`."""
    s, y = _check(scores, labels)
    tps, fps = _curve(s, y)
    k = int(np.searchsorted(tps / tps[-1], tpr - 1e-12, side="left"))
    return float(fps[k] / fps[-1]) if fps[-1] > 0 else 0.0


def frame_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"auroc": auroc(scores, labels), "aupr_in": aupr_in(scores, labels),
            "aupr_out": aupr_out(scores, labels), "fpr95": fpr_at_tpr(scores, labels, 0.95)}


def detection_delays(alarm: np.ndarray, is_ood: np.ndarray, episode: np.ndarray) -> np.ndarray:
    """Per episode that contains OOD frames (in stream order): frames from its first OOD frame (the
    onset) to its first alarm at or after the onset, NaN when it never alarms. Frames of an episode
    need not be contiguous in the arrays, only in order."""
    alarm, is_ood, episode = (np.asarray(a) for a in (alarm, is_ood, episode))
    delays = []
    for ep in dict.fromkeys(episode[is_ood.astype(bool)].tolist()):
        rows = np.flatnonzero(episode == ep)
        onset = int(np.argmax(is_ood[rows]))
        hits = np.flatnonzero(alarm[rows][onset:])
        delays.append(float(hits[0]) if hits.size else float("nan"))
    return np.asarray(delays, dtype=np.float64)


def counted_id_frames(is_ood: np.ndarray, grace: int = 0) -> np.ndarray:
    """In-distribution frames that count for false alarms: all of them, except (with grace > 0) the
    first `grace` frames after an OOD frame, where a windowed statistic still remembers the episode."""
    is_ood = np.asarray(is_ood, dtype=bool)
    counted = ~is_ood
    if grace > 0:
        last = np.maximum.accumulate(np.where(is_ood, np.arange(is_ood.size), -(grace + 1)))
        counted &= np.arange(is_ood.size) - last > grace
    return counted


def false_alarms_per_1000(alarm: np.ndarray, is_ood: np.ndarray, grace: int = 0) -> float:
    """Alarmed in-distribution frames per 1000 counted in-distribution frames (see counted_id_frames)."""
    counted = counted_id_frames(is_ood, grace)
    return float(1000.0 * np.asarray(alarm, dtype=bool)[counted].sum() / max(1, counted.sum()))


def false_alarm_events(alarm: np.ndarray, is_ood: np.ndarray, grace: int = 0) -> int:
    """Runs of consecutive alarmed in-distribution frames (counted_id_frames): what an operator sees as
    separate false alarms, where false_alarms_per_1000 counts frames (a 4-frame alarm is one event)."""
    false = np.asarray(alarm, dtype=bool) & counted_id_frames(is_ood, grace)
    return int(false[:1].sum() + (false[1:] & ~false[:-1]).sum())


def alarm_metrics(alarm: np.ndarray, is_ood: np.ndarray, episode: np.ndarray, grace: int = 0
                  ) -> dict[str, float]:
    delays = detection_delays(alarm, is_ood, episode)
    hit = delays[np.isfinite(delays)]
    return {"median_delay": float(np.median(hit)) if hit.size else float("nan"),
            "missed_episodes": int(np.isnan(delays).sum()), "ood_episodes": int(delays.size),
            "false_alarms_per_1000": false_alarms_per_1000(alarm, is_ood, grace),
            "false_alarm_frames": int(np.asarray(alarm, bool)[counted_id_frames(is_ood, grace)].sum()),
            "false_alarm_events": false_alarm_events(alarm, is_ood, grace)}
