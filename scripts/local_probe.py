"""Probe (docs/real_footage.md#local-part-tried-not-built): would a part that looks at grid cells one at a
time catch the local anomalies (pasted objects, shadow, sun flare) that the image detector's global parts
miss on a moving camera, without new false alarms?

Per 128 px model input and cell of a 4x4 grid: the mean R, G, B, the luma spread, the log mean |Laplacian|
and the mean saturation; each cell has its own Ledoit-Wolf Gaussian fitted on the training split, and the
part is the largest of the 16 cells' squared Mahalanobis distances. Its tolerance is measured on the
calibration split as `calibrate` measures a part's (5 contiguous blocks, `block_tolerance`). Set beside the
shipped score of the same frames (a `bench real` work folder: evaluate's per-frame CSV, the card's
calibration scores and tolerance), printed: the fraction of each kind's frames over tolerance x the largest
calibration score (what reaches the alarms), the shipped score's alone and with the local part ("either"),
and the same for the clean frames (false alarms). Run it on tuning recordings only.

    python scripts/local_probe.py real_tune_rc work tub_20221129_221024
"""
import csv
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from ood_monitor.core.alarm_calibration import block_tolerance
from ood_monitor.core.feature_gaussian import shrunk_gaussian, squared_mahalanobis
from ood_monitor.core.model_input import FrameConfig, prepare_frame
from ood_monitor.core.texture import LUMA
from ood_monitor.data.labeled_frames import iter_frames

GRID = 4


def cell_statistics(rgb: np.ndarray) -> np.ndarray:
    """One HxWx3 uint8 RGB frame -> (GRID², 6): mean R, G, B, luma spread, log mean |Laplacian|, saturation."""
    x = rgb.astype(np.float32) / np.float32(255.0)
    luma = cv2.transform(x, LUMA[None, :])
    saturation = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1].astype(np.float32) / np.float32(255.0)
    laplacian = np.abs(cv2.Laplacian(luma, cv2.CV_32F, ksize=3))
    cells = lambda plane: cv2.resize(plane, (GRID, GRID), interpolation=cv2.INTER_AREA)  # noqa: E731
    spread = np.sqrt(np.maximum(cells(luma * luma) - cells(luma) ** 2, 0.0))
    stacked = np.stack([*(cells(x[..., c]) for c in range(3)), spread, np.log(cells(laplacian) + 1e-3),
                        cells(saturation)], axis=-1)
    return stacked.reshape(GRID * GRID, 6).astype(np.float64)


def split_cells(folder: Path) -> np.ndarray:
    cfg = FrameConfig()
    return np.stack([cell_statistics(prepare_frame(f.image, cfg)) for f in iter_frames(folder)])


def main(data: Path, work: Path, rec: str) -> None:
    train, calibration, test = (split_cells(data / rec / s) for s in ("train", "calibration", "test"))
    gaussians = [shrunk_gaussian(train[:, c]) for c in range(GRID * GRID)]

    def local(cells: np.ndarray) -> np.ndarray:
        return np.max([squared_mahalanobis(cells[:, c], *g) for c, g in enumerate(gaussians)], axis=0)

    cal_local, test_local = local(calibration), local(test)
    tolerance = block_tolerance(cal_local, np.arange(len(cal_local)) * 5 // len(cal_local))
    card = json.loads((work / rec / "vae_image" / "config.json").read_text())
    with open(work / rec / "eval" / "scores_vae_image.csv", newline="") as f:
        shipped = np.array([float(r["score"]) for r in csv.DictReader(f)])
    with open(data / rec / "test" / "labels.csv", newline="") as f:
        labels = list(csv.DictReader(f))
    if not len(labels) == len(shipped) == len(test_local):
        sys.exit(f"{rec}: {len(labels)} labels, {len(shipped)} scored frames, {len(test_local)} frames: not one run")
    over_shipped = shipped > card["alarm"]["score_tolerance"] * max(card["calibration"]["scores"])
    either = over_shipped | (test_local > tolerance * cal_local.max())
    clean, kinds = np.array([r["is_ood"] == "0" for r in labels]), np.array([r["kind"] for r in labels])
    print(f"{rec}: local tolerance {tolerance:.2f}; clean frames over: shipped {over_shipped[clean].mean():.3f}, "
          f"either {either[clean].mean():.3f}")
    for kind in sorted({r["kind"] for r in labels if r["is_ood"] == "1" and r["category"] != "motion"}):
        sel = kinds == kind
        print(f"  {kind:18s} shipped {over_shipped[sel].mean():.2f}  either {either[sel].mean():.2f}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: local_probe.py DATA_REAL_FOLDER BENCH_REAL_WORK RECORDING")
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])
