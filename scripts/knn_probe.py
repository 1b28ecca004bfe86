"""Probe (docs/real_footage.md#nearest-training-frames-tried-not-built): does the distance to the nearest
training frames beat the Gaussian over the same statistics on a moving camera? (It did not, by its rule.)

Why: on a camera that laps a varied scene (the atrium car) the image detector's photometric and structure
parts are Gaussians over all training frames, so their nominal spread covers every view of the lap (glass
against the sun, deep shade) and brightness, frost, rain and sun-flare frames fall inside it. A frame's
distance to its k nearest training frames (in the Gaussian's whitened metric) asks instead whether any
training view looked like it.

Per recording of a `data real` build: the photometric + structure statistics of each 128 px model input
(core/photometric.py, core/structure.py), scored four ways: each part's shipped Gaussian distance, their
fusion (each part over its own calibration 95th percentile, the larger), and the k-NN distance of the 13
statistics whitened by the training frames' Ledoit-Wolf covariance. Printed per kind: AUROC of the
episode frames against the clean test frames; per scorer: the clean test frames with p < 0.05 against the
calibration split (coverage: near 5 % means the alarms hold).

Decision rule, fixed before the report recording was run: on the tuning builds the k-NN scorer replaces
the Gaussians if its mean AUROC over visible global and object kinds beats the fused Gaussians' by >= 0.02
on both moving tuning cameras, no tuning build loses more than 0.02 of that mean, and its clean coverage
is no more than 2 points above the Gaussians'.

    python scripts/knn_probe.py real_tune_rc/tub_20221129_221024 real_road/solidWhiteRight ...
"""
import csv
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.neighbors import NearestNeighbors

from ood_monitor.core.detector_metrics import kind_aurocs
from ood_monitor.core.feature_gaussian import shrunk_gaussian, squared_mahalanobis
from ood_monitor.core.model_input import FrameConfig, prepare_frame
from ood_monitor.core.photometric import frame_statistics
from ood_monitor.core.structure import frame_structure
from ood_monitor.data.labeled_frames import iter_frames

K = (1, 5, 20)
N_PHOTO = 11  # the first N_PHOTO statistics are the photometric part's, the rest the structure part's


def frame_row(model_input: np.ndarray) -> np.ndarray:
    """The photometric and structure statistics of one 128 px model input."""
    return np.concatenate([frame_statistics(model_input), frame_structure(model_input)])


def features(folder: Path) -> np.ndarray:
    cfg = FrameConfig()
    return np.stack([frame_row(prepare_frame(f.image, cfg)) for f in iter_frames(folder)])


def gaussian(train: np.ndarray):
    """The shipped parts' scorer: squared Mahalanobis distance to the training rows' shrunk Gaussian."""
    mean, precision = shrunk_gaussian(train)
    return lambda z: squared_mahalanobis(z, mean, precision)


def knn(train: np.ndarray, k: int):
    """Distance to the k-th nearest training row, in the metric of the training rows' shrunk Gaussian."""
    w = np.linalg.cholesky(shrunk_gaussian(train)[1])
    index = NearestNeighbors(n_neighbors=k).fit(train @ w)
    return lambda z: index.kneighbors(z @ w)[0][:, -1]


def gaussian_parts(tr: np.ndarray, ca: np.ndarray, te: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(calibration, test) scores of the photometric and structure Gaussians and of their fusion as the
    shipped score fuses parts: each over its calibration 95th percentile, the larger."""
    out = {}
    for name, cols in (("G_photo", slice(0, N_PHOTO)), ("G_struct", slice(N_PHOTO, None))):
        g = gaussian(tr[:, cols])
        out[name] = (g(ca[:, cols]), g(te[:, cols]))
    scales = [np.percentile(c, 95) for c, _t in out.values()]
    out["G_fused"] = tuple(np.max([pair[i] / s for pair, s in zip(out.values(), scales, strict=True)], axis=0) for i in (0, 1))
    return out


def visible_kinds(root: Path) -> set[str]:
    """Kinds whose episode visibly changes the 128 px frame, from the build's dataset.json."""
    info = json.loads((root / "dataset.json").read_text())
    return {ep["kind"] for ep in info["episodes"] if ep["category"] in ("global", "scene", "object")
            and (ep["category"] == "object" or ep.get("visible", True))}


def report(root: Path, sizes: str, scorers: dict[str, tuple[np.ndarray, np.ndarray]], width: int = 8
           ) -> dict[str, float]:
    """Print `sizes` (the training and calibration frames) and the clean test frames, each visible kind's AUROC (episode frames against the clean test frames) per scorer, then per
    scorer the mean, the kinds below 0.9 and the clean frames with p < 0.05 against the calibration
    scores; returns the means."""
    with open(root / "test" / "labels.csv", newline="") as f:
        labels = list(csv.DictReader(f))
    ood = np.array([r["is_ood"] == "1" for r in labels])
    kinds = np.array([r["kind"] for r in labels])
    visible = tuple(sorted(visible_kinds(root) & set(kinds[ood])))
    print(f"\n{root}: {sizes}, {int((~ood).sum())} clean test frames; {len(visible)} visible kinds")
    aucs = {s: kind_aurocs(t, ~ood, kinds, visible) for s, (_c, t) in scorers.items()}
    print(f"  {'kind':18s} " + " ".join(f"{s:>{width}s}" for s in scorers))
    for i, kind in enumerate(visible):
        print(f"  {kind:18s} " + " ".join(f"{a[i]:{width}.2f}" for a in aucs.values()))
    means = {}
    for s, (c, t) in scorers.items():
        p = (1 + (c[None, :] >= t[~ood][:, None]).sum(axis=1)) / (len(c) + 1)
        means[s] = float(np.mean(aucs[s]))
        print(f"  {s:{width}s} mean AUROC {means[s]:.3f}  below 0.9: {sum(a < 0.9 for a in aucs[s]):2d}  "
              f"clean p<0.05 {np.mean(p < 0.05):.3f}")
    return means


def run(root: Path) -> dict[str, float]:
    tr, ca, te = (features(root / s) for s in ("train", "calibration", "test"))
    scorers = gaussian_parts(tr, ca, te)
    for k in K:
        n = knn(tr, k)
        scorers[f"K{k}"] = (n(ca), n(te))
    return report(root, f"{len(tr)} train, {len(ca)} calibration", scorers)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: knn_probe.py DATA/RECORDING ...")
    for arg in sys.argv[1:]:
        run(Path(arg))
