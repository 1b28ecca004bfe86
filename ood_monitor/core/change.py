"""A frame's change against the frames just before it: the change part of the image detector's fused score
`kl_texture_photometric_structure_change` (an option; docs/real_footage.md#change-part).

Why: on a fast moving camera the calibration runs through views (sun through glass, deep shade) as far
from the training frames as brightness, frost or rain, so those corruptions get p-values inside the
calibration's range and no alarm can call them. A corruption arrives from one frame to the next while
the scene changes gradually: on the moving tuning recordings the change of a frame's photometric and
structure statistics against the last two frames caught 18 of 22 and 20 of 20 visible episodes within
two frames, where the shipped score's alarms caught 13 of 22 on the lab track.

What: per frame, a row of statistics (the photometric and structure parts' own); its change against the
mean of the last `k` rows accepted into a reference; the squared Mahalanobis distance of that change to
the training frames' changes (Ledoit-Wolf, core/feature_gaussian.py). A frame over `bound` stays out of
the reference, so a lasting corruption keeps being compared with the frames before it, for at most `hold`
frames. A step *towards* the training frames (the row's own distance to them falls below the
reference's, or below halfway from the reference's to the held frames') is the stream coming back: it
scores 0 and the reference restarts there; without that rule the frames after an episode faced a stale
reference on a moving camera. A frame that repeats the one before it bit for bit (the same row) is no
change and stays out of the reference; the first new frame after repeats restarts it: a camera that froze
and resumes has jumped in time, and against the frames before the freeze it looked like a lasting step
(false alarms right after frozen episodes on the moving tuning recording and the demo world). State
restarts with each sequence, where the node restarts its alarms.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from ood_monitor.core.feature_gaussian import shrunk_gaussian, squared_mahalanobis


@dataclass(frozen=True)
class ChangeConfig:
    """k: rows in the reference (2 chosen on the moving tuning recording, equal to 4 elsewhere);
    hold: frames a step is held against the reference before the reference restarts. Short: the alarm
    needs two frames, and a jump of the stream itself (frames skipped, a frozen camera resuming) looks
    like a lasting step, so each held frame after it is a false alarm (2, 4 and 40 on the tuning builds:
    docs/real_footage.md#change-part)."""

    k: int = 2
    hold: int = 2

    def __post_init__(self) -> None:
        if self.k < 1 or self.hold < 0:
            raise ValueError(f"change reference needs k >= 1 and hold >= 0, got k={self.k}, hold={self.hold}")


@dataclass(frozen=True)
class ChangeStats:
    """Training Gaussians of the statistics' change (`change_*`) and of the statistics themselves
    (`level_*`, which says whether a step goes towards the training frames or away from them)."""

    change_mean: np.ndarray
    change_precision: np.ndarray
    level_mean: np.ndarray
    level_precision: np.ndarray
    cfg: ChangeConfig = ChangeConfig()

    @classmethod
    def fit(cls, rows: np.ndarray, sequence: np.ndarray | None = None, cfg: ChangeConfig = ChangeConfig()
            ) -> ChangeStats:
        """Fit on training rows in stream order (`sequence`: one id per row; None = one sequence). The
        changes are taken with the reference of the k rows before, no gate: every training frame is nominal."""
        rows = np.asarray(rows, np.float64)
        sequence = np.zeros(len(rows), np.int64) if sequence is None else np.asarray(sequence)
        width = rows.shape[1] if rows.ndim == 2 else 0
        changes = ungated_changes(rows, sequence, cfg.k) if width else np.zeros((0, 0))
        if width == 0 or len(changes) < 2 * width + 1:
            raise ValueError(f"change statistics need at least {2 * width + 1} training changes of (N, F) rows in "
                             f"stream order, got {len(changes)} from rows {rows.shape}")
        return cls(*shrunk_gaussian(changes), *shrunk_gaussian(rows), cfg)

    def change_distance(self, change: np.ndarray) -> float:
        return float(squared_mahalanobis(change, self.change_mean, self.change_precision)[0])

    def level_distance(self, row: np.ndarray) -> float:
        return float(squared_mahalanobis(row, self.level_mean, self.level_precision)[0])

    def to_dict(self) -> dict:
        return {"k": self.cfg.k, "hold": self.cfg.hold, "change_mean": self.change_mean.tolist(),
                "change_precision": self.change_precision.tolist(), "level_mean": self.level_mean.tolist(),
                "level_precision": self.level_precision.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> ChangeStats:
        arrays = [np.asarray(d[key], np.float64) for key in
                  ("change_mean", "change_precision", "level_mean", "level_precision")]
        width = len(arrays[0])
        if any(a.shape != s for a, s in zip(arrays, [(width,), (width, width)] * 2, strict=True)):
            raise ValueError(f"change statistics have shapes {[a.shape for a in arrays]}, expected one width {width}")
        return cls(*arrays, ChangeConfig(int(d["k"]), int(d["hold"])))


def ungated_changes(rows: np.ndarray, sequence: np.ndarray, k: int) -> np.ndarray:
    """Each row minus the mean of the (up to) k rows before it in its sequence; rows without one are left out."""
    out = []
    for t in range(1, len(rows)):
        start = t
        while start > 0 and t - start < k and sequence[start - 1] == sequence[t]:
            start -= 1
        if start < t:
            out.append(rows[t] - rows[start:t].mean(axis=0))
    return np.asarray(out).reshape(-1, rows.shape[1])


class ChangeTracker:
    """One stream's reference; `update(row)` gives the frame's change score. `bound`: the score over which
    a frame stays out of the reference (inf: every frame enters it, as on nominal footage)."""

    def __init__(self, stats: ChangeStats, bound: float = np.inf) -> None:
        self.stats, self.bound = stats, bound
        self.reference: deque = deque(maxlen=stats.cfg.k)
        self.held: list[float] = []  # level distances of the frames kept out since the reference last grew
        self.last: np.ndarray | None = None  # the previous frame's row, accepted or not
        self.repeats = 0  # frames in a row that repeated `last` exactly

    def reset(self) -> None:
        """A new sequence: no reference until its first frame."""
        self.reference.clear()
        self.held = []
        self.last, self.repeats = None, 0

    def update(self, row: np.ndarray) -> float:
        row = np.asarray(row, np.float64)
        if self.last is not None and np.array_equal(row, self.last):
            self.repeats += 1
            return 0.0
        if self.repeats:  # the camera moves on after repeating itself: what came before is stale
            self.reset()
        self.last = row
        score = 0.0
        if self.reference:
            mean = np.mean(self.reference, axis=0)
            score = self.stats.change_distance(row - mean)
            if score > self.bound:
                level, ref_level = self.stats.level_distance(row), self.stats.level_distance(mean)
                back = level <= ref_level or (self.held and level < 0.5 * (ref_level + float(np.mean(self.held))))
                if back:
                    score = 0.0
                    self.reference.clear()
                elif len(self.held) < self.stats.cfg.hold:
                    self.held.append(level)
                    return score
                else:
                    self.reference.clear()
        self.held = []
        self.reference.append(row)
        return score


def change_scores(stats: ChangeStats, rows: np.ndarray, sequence: np.ndarray | None = None,
                  bound: float = np.inf) -> np.ndarray:
    """(N,) change scores of rows in stream order, the tracker restarted at every new `sequence` id."""
    rows = np.asarray(rows, np.float64)
    sequence = np.zeros(len(rows), np.int64) if sequence is None else np.asarray(sequence)
    tracker, scores = ChangeTracker(stats, bound), np.zeros(len(rows))
    for t, row in enumerate(rows):
        if t and sequence[t] != sequence[t - 1]:
            tracker.reset()
        scores[t] = tracker.update(row)
    return scores
