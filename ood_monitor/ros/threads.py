"""One CPU-thread limit for a node's process: torch's pool, optionally OpenCV's, and every BLAS library
loaded (numpy's, scipy's and OpenCV's OpenBLAS copies, through threadpoolctl).

Why BLAS too: numpy's OpenBLAS starts a worker thread when it is imported, before the node can lower its
priority, and after every large enough product (the analysis' colour clusters: a 16,384-pixel matrix
product per frame) that worker busy-waits for the next one. Live, in the synthesis/analysis process, it
took a third of a core from the detectors and the mask path; with one BLAS thread the mask rate at a 30 Hz
camera went from 6.8 to 9.8-13.0 Hz on 2 cores (docs/benchmarks-masks.md#one-blas-thread-the-default)."""
from __future__ import annotations


def limit_threads(n: int, opencv: bool = False) -> None:
    """Run torch, BLAS (and OpenCV when `opencv`) with at most `n` threads; n <= 0 keeps the libraries'
    defaults (all cores)."""
    if n <= 0:
        return
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    threadpool_limits(limits=n, user_api="blas")  # process-wide, for the process's lifetime
    if opencv:
        import cv2

        cv2.setNumThreads(n)
