"""RepeatCounter: exact repeats in a row, the limit, resets (plain numpy)."""
from __future__ import annotations

import numpy as np
import pytest

from ood_monitor.core.frozen import RepeatCounter


def test_counts_exact_repeats_in_a_row_and_flags_past_the_limit():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (2, 24, 32, 3), dtype=np.uint8)
    counter = RepeatCounter(limit=2)
    assert [counter.update(a) for _ in range(4)] == [0, 1, 2, 3]
    assert counter.frozen
    nudged = a.copy()
    nudged[0, 0, 0] ^= 1  # one bit of sensor noise is a new frame
    assert counter.update(nudged) == 0 and not counter.frozen
    assert counter.update(b) == 0 and counter.update(b) == 1
    assert counter.longest == 3
    assert counter.update(np.zeros((12, 16, 3), np.uint8)) == 0  # another size is another frame


def test_the_counter_keeps_its_own_copy_and_resets():
    frame = np.zeros((4, 4, 3), np.uint8)
    counter = RepeatCounter(limit=1)
    counter.update(frame)
    frame[:] = 7  # the caller reuses its buffer: that is a changed image
    assert counter.update(frame) == 0
    counter.update(frame)
    counter.reset()
    assert counter.update(frame) == 0 and counter.run == 0


def test_limit_zero_is_off_and_negative_is_refused():
    counter = RepeatCounter(limit=0)
    frame = np.ones((2, 2), np.uint8)
    for _ in range(10):
        counter.update(frame)
    assert counter.run == 9 and not counter.frozen
    with pytest.raises(ValueError, match=">= 0"):
        RepeatCounter(limit=-1)
