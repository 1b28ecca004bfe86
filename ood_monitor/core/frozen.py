"""A frozen camera: the same image again and again under new stamps.

Why: a camera driver or a USB link that stalls often keeps publishing its last buffer with fresh
stamps. To the flow detector that is a standing camera (zero flow), which many robots are most of the
time, and to the image detector it is a perfectly nominal frame, so neither model can flag it (on the
real indoor footage of docs/real_footage.md the flow detector scored 8 repeated frames 0.26–0.53 AUROC).
Real sensors never repeat a frame bit for bit for long: their noise changes every pixel. Some cheap
pipelines do deliver a frame twice or three times in a row (the Donkey Car tubs of the real-footage
benchmark: runs of at most 2 repeats in four sessions), so the check counts repeats in a row and
raises only past a limit.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class RepeatCounter:
    """How many frames in a row repeat the previous one exactly (`run`, the `longest` so far); `frozen`
    past `limit` (0: off)."""

    limit: int = 4
    run: int = 0
    longest: int = 0
    _last: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.limit < 0:
            raise ValueError(f"the repeated-frame limit must be >= 0 (0: off), got {self.limit}")

    def update(self, frame: np.ndarray) -> int:
        """Count one camera frame (any array, compared bit for bit); returns the current run."""
        if self._last is not None and self._last.shape == frame.shape and np.array_equal(self._last, frame):
            self.run += 1
            self.longest = max(self.longest, self.run)
        else:
            self.run = 0
            self._last = np.array(frame, copy=True)
        return self.run

    @property
    def frozen(self) -> bool:
        return self.limit > 0 and self.run > self.limit

    def reset(self) -> None:
        """A new sequence (stamp gap, new recording): nothing to compare with."""
        self.run, self._last = 0, None
