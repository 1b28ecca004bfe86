"""limit_threads: the node processes' one thread limit reaches torch, every loaded BLAS and OpenCV."""
import cv2
import numpy as np
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from ood_monitor.ros.threads import limit_threads


def blas_threads() -> list[int]:
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


def test_limit_threads_reaches_torch_blas_and_opencv():
    np.ones((64, 64)) @ np.ones((64, 64))  # numpy's BLAS is loaded
    before = (torch.get_num_threads(), cv2.getNumThreads())
    with threadpool_limits(limits=None):  # restores every BLAS pool's count afterwards
        try:
            limit_threads(1, opencv=True)
            assert blas_threads() and set(blas_threads()) == {1}
            assert torch.get_num_threads() == 1
            assert cv2.getNumThreads() == 1
        finally:
            torch.set_num_threads(before[0])
            cv2.setNumThreads(before[1])


def test_zero_keeps_the_defaults():
    before = (torch.get_num_threads(), blas_threads())
    limit_threads(0, opencv=True)
    assert (torch.get_num_threads(), blas_threads()) == before
