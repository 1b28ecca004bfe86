"""Training frames kept on disk instead of in memory: appended one at a time, read back memory-mapped.

Why: training revisits every frame each epoch, so `train` used to hold every prepared frame of every
recording in memory (49 KB per 128-px image, 131 KB per flow field): a fleet's hours of footage did not
fit. A spool writes each frame to a file as it is read; the trainer then indexes a read-only memory map
of that file, so only the batches in use (and what the page cache keeps) are resident, and the process's
memory no longer grows with the number of frames. Frames come back bit-identical, in order.
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np


class FrameSpool:
    """Frames of one shape and dtype appended to `directory/name.bin`; `array()` maps what was written."""

    def __init__(self, directory: str | Path, name: str = "frames") -> None:
        self.path = Path(directory) / f"{name}.bin"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "wb")  # noqa: SIM115 -- closed by close() / array()
        self.shape: tuple[int, ...] | None = None
        self.dtype: np.dtype | None = None
        self.count = 0

    def append(self, frame: np.ndarray) -> None:
        frame = np.ascontiguousarray(frame)
        if self.shape is None:
            self.shape, self.dtype = frame.shape, frame.dtype
        elif frame.shape != self.shape or frame.dtype != self.dtype:
            raise ValueError(f"spool holds {self.shape} {self.dtype} frames, got {frame.shape} {frame.dtype} "
                             f"(frames of one training set must share the model's input size)")
        self._file.write(frame.tobytes())
        self.count += 1

    def __len__(self) -> int:
        return self.count

    def array(self, start: int = 0) -> np.ndarray:
        """Frames start.. as a read-only (N, *shape) memory map (flushes what was appended so far)."""
        if self.shape is None or self.count <= start:
            raise ValueError("the spool holds no frames")
        if not self._file.closed:
            self._file.flush()
        whole = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.count, *self.shape))
        return whole[start:]

    def close(self) -> None:
        self._file.close()


@contextlib.contextmanager
def spool_directory(parent: str | Path | None = None) -> Iterator[Path]:
    """A fresh folder for spools under `parent` (default: the system's temporary folder), removed with
    everything in it when the block ends, also on errors."""
    if parent is not None:
        Path(parent).mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="ood_monitor_spool_", dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def chunks(array: np.ndarray, rows: int = 256) -> Iterator[np.ndarray]:
    """Consecutive in-memory blocks of at most `rows` frames (whole-array work on a memory map copies it)."""
    for i in range(0, len(array), rows):
        yield np.asarray(array[i:i + rows])
