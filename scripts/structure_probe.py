"""Probe (docs/real_footage.md#photometric-part, "Local structure"): would two statistics of local image
structure catch the elastic warp, which moves pixels by a pixel or two without changing light, colour or
overall sharpness, and which the image score misses on the report recording?

Per 128 px model input: the mean orientation coherence of the structure tensor on the strongest quarter
of the pixels (straight edges: near 1; an elastic warp makes them wavy) and the ratio of Laplacian to
gradient magnitude (fine jagged detail against edge contrast). Each feature set is fitted as a Ledoit-Wolf
Gaussian on the training split; printed: AUROC of its Mahalanobis distance for each corruption's 8
frames against the clean test frames. Run it on tuning recordings only.

    python scripts/structure_probe.py real_tune/tub_20190405_234358 real_road/solidWhiteRight
"""
import csv
import sys
from pathlib import Path

import cv2
import numpy as np

from ood_monitor.core.detector_metrics import kind_aurocs
from ood_monitor.core.feature_gaussian import shrunk_gaussian, squared_mahalanobis
from ood_monitor.core.model_input import FrameConfig, prepare_frame
from ood_monitor.core.photometric import photometric_features

KINDS = ("elastic_transform", "pixelate", "jpeg_compression", "sun_flare", "defocus_blur")


def structure_statistics(rgb: np.ndarray) -> list[float]:
    """[edge coherence, Laplacian / gradient magnitude] of one HxWx3 uint8 frame."""
    g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gx, gy = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    jxx, jyy, jxy = (cv2.GaussianBlur(a, (0, 0), 1.5) for a in (gx * gx, gy * gy, gx * gy))
    trace = jxx + jyy
    coherence = np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / (trace + 1e-3)
    strong = trace > np.percentile(trace, 75)
    return [coherence[strong].mean(), np.abs(cv2.Laplacian(g, cv2.CV_32F)).mean() / (np.sqrt(trace).mean() + 1e-3)]


def split(folder: Path) -> tuple[list[dict] | None, np.ndarray]:
    cfg = FrameConfig()
    labels = folder / "labels.csv"
    rows = list(csv.DictReader(labels.open())) if labels.exists() else None
    frames = [prepare_frame(cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB), cfg)
              for f in sorted((folder / "frames").glob("*.png"))]
    return rows, np.stack(frames)


def feature_sets(frames: np.ndarray) -> dict[str, np.ndarray]:
    photometric = np.asarray(photometric_features(frames), np.float64)
    structure = np.array([structure_statistics(f) for f in frames])
    return {"photometric (11)": photometric, "structure (2)": structure,
            "photometric + structure": np.c_[photometric, structure]}


def main(recordings: list[str]) -> None:
    for rec in map(Path, recordings):
        _, train = split(rec / "train")
        rows, test = split(rec / "test")
        clean, kinds = np.array([r["is_ood"] == "0" for r in rows]), np.array([r["kind"] for r in rows])
        print(rec.name)
        for (name, a), b in zip(feature_sets(train).items(), feature_sets(test).values(), strict=True):
            aurocs = kind_aurocs(squared_mahalanobis(b, *shrunk_gaussian(a, jitter=1e-9)), clean, kinds, KINDS)
            print(f"  {name:24s} " + "  ".join(f"{k} {x:.2f}" for k, x in zip(KINDS, aurocs, strict=True)))


if __name__ == "__main__":
    main(sys.argv[1:])
