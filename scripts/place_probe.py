"""Probe (docs/real_footage.md#the-matched-training-view-tried-not-built): does comparing a frame cell by
cell with the training frame of the same place catch what global statistics miss on a camera that
repeats its route?

Why: the nearest-frames probe (scripts/knn_probe.py) compared global statistics, which an object in one
corner or a sun flare moves little. A robot that laps a track sees each place again; the training frame
that looks most like the same place (matched on a blurred, brightness- and contrast-normalised thumbnail)
predicts, cell by cell, the light, colour and fine texture the new frame should have.

Per frame of a `data real` build: the place thumbnail (24x32 luma, Gaussian-blurred, zero mean, unit norm)
picks the training frame with the highest correlation; on a 4x4 grid of the 128 px inputs, each cell's
mean R, G, B and log mean |Laplacian| are differenced with the matched frame's; the calibration split's
differences give each (cell, statistic) a median and a robust spread; the frame's score is the largest
standardised absolute difference, and a second score adds the mean over cells (a shift of the whole
view). Printed per visible kind: AUROC of the episode frames against the clean test frames; per score:
mean AUROC, kinds below 0.9, and the clean test frames with p < 0.05 against the calibration split.

Decision rule, fixed before any run: worth building (as an option for robots that repeat their routes,
since a single pass cannot match) if on the RC lab track and the standing indoor tuning camera the better
of the two scores, fused with the shipped Gaussians (the larger of each over its calibration 95th
percentile), beats the fused Gaussians alone by >= 0.03 mean AUROC on both, with coverage <= 7 %.

    python scripts/place_probe.py real_tune_rc/tub_20221129_221024 real_tune/tub_20190405_234358 ...
"""
import sys
from pathlib import Path

import cv2
import numpy as np
from knn_probe import frame_row, gaussian_parts, report

from ood_monitor.core.model_input import FrameConfig, prepare_frame
from ood_monitor.data.labeled_frames import iter_frames

GRID = 4
THUMB = (32, 24)  # (width, height) of the place thumbnail


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    t = cv2.GaussianBlur(cv2.resize(g, THUMB, interpolation=cv2.INTER_AREA), (0, 0), 1.0).ravel()
    t -= t.mean()
    return t / (np.linalg.norm(t) + 1e-6)


def cells(rgb: np.ndarray) -> np.ndarray:
    """(GRID*GRID, 4): per cell mean R, G, B (0-1) and log mean |Laplacian| of luma."""
    x = rgb.astype(np.float32) / 255.0
    lap = np.abs(cv2.Laplacian(cv2.cvtColor(x, cv2.COLOR_RGB2GRAY), cv2.CV_32F))
    h, w = x.shape[:2]
    rows = []
    for i in range(GRID):
        for j in range(GRID):
            sl = (slice(i * h // GRID, (i + 1) * h // GRID), slice(j * w // GRID, (j + 1) * w // GRID))
            rows.append([*x[sl].reshape(-1, 3).mean(axis=0), np.log(lap[sl].mean() + 1e-4)])
    return np.asarray(rows)


def load(folder: Path):
    """Per frame: the place thumbnail, the cell statistics and the global statistics (knn_probe's)."""
    cfg = FrameConfig()
    th, ce, st = [], [], []
    for f in iter_frames(folder):
        x = prepare_frame(f.image, cfg)
        th.append(thumbnail(x))
        ce.append(cells(x))
        st.append(frame_row(x))
    return np.stack(th), np.stack(ce), np.stack(st)


def matched_differences(th: np.ndarray, ce: np.ndarray, train_th: np.ndarray, train_ce: np.ndarray) -> np.ndarray:
    best = np.argmax(th @ train_th.T, axis=1)
    return ce - train_ce[best]


def robust_z(cal: np.ndarray, x: np.ndarray) -> np.ndarray:
    """|x - the calibration median| in units of the calibration's MAD-based SD, per column."""
    med = np.median(cal, axis=0)
    return np.abs(x - med) / (1.4826 * np.median(np.abs(cal - med), axis=0) + 1e-3)


def run(root: Path) -> None:
    (tr_th, tr_ce, tr_st), (ca_th, ca_ce, ca_st), (te_th, te_ce, te_st) = (
        load(root / s) for s in ("train", "calibration", "test"))
    dc = matched_differences(ca_th, ca_ce, tr_th, tr_ce)
    dt = matched_differences(te_th, te_ce, tr_th, tr_ce)
    cell_max = tuple(robust_z(dc, d).max(axis=(1, 2)) for d in (dc, dt))
    view = tuple(robust_z(dc.mean(axis=1), d.mean(axis=1)).max(axis=1) for d in (dc, dt))
    scores = {"cell_max": cell_max, "cell+view": tuple(np.maximum(a, b) for a, b in zip(cell_max, view, strict=True))}
    gc, gt = gaussian_parts(tr_st, ca_st, te_st)["G_fused"]
    scores["G_fused"] = (gc, gt)
    for name in ("cell_max", "cell+view"):
        c, t = scores[name]
        s = np.percentile(c, 95)
        scores[f"G+{name}"] = (np.maximum(gc, c / s), np.maximum(gt, t / s))
    report(root, f"{len(tr_th)} train, {len(ca_th)} calibration", scores, width=12)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: place_probe.py DATA/RECORDING ...")
    for arg in sys.argv[1:]:
        run(Path(arg))
