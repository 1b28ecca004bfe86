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
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors

from ood_monitor.core.model_input import FrameConfig, prepare_frame
from ood_monitor.core.photometric import frame_statistics
from ood_monitor.core.structure import frame_structure
from ood_monitor.data.labeled_frames import iter_frames

K = (1, 5, 20)
N_PHOTO = 11


def features(folder: Path) -> np.ndarray:
    cfg = FrameConfig()
    rows = []
    for f in iter_frames(folder):
        x = prepare_frame(f.image, cfg)
        rows.append(np.concatenate([frame_statistics(x), frame_structure(x)]))
    return np.stack(rows)


def gaussian(train: np.ndarray):
    lw = LedoitWolf().fit(train)
    prec, mu = np.linalg.inv(lw.covariance_ + 1e-6 * np.eye(train.shape[1])), train.mean(axis=0)
    return lambda z: np.einsum("ij,jk,ik->i", z - mu, prec, z - mu)


def knn(train: np.ndarray, k: int):
    lw = LedoitWolf().fit(train)
    w = np.linalg.cholesky(np.linalg.inv(lw.covariance_ + 1e-6 * np.eye(train.shape[1])))
    index = NearestNeighbors(n_neighbors=k).fit(train @ w)
    return lambda z: index.kneighbors(z @ w)[0][:, -1]


def visible_kinds(root: Path) -> set[str]:
    """Kinds whose episode visibly changes the 128 px frame, from the build's dataset.json."""
    info = json.loads((root / "dataset.json").read_text())
    return {ep["kind"] for ep in info["episodes"] if ep["category"] in ("global", "scene", "object")
            and (ep["category"] == "object" or ep.get("visible", True))}


def run(root: Path) -> dict[str, float]:
    tr, ca, te = (features(root / s) for s in ("train", "calibration", "test"))
    with open(root / "test" / "labels.csv", newline="") as f:
        labels = list(csv.DictReader(f))
    ood = np.array([r["is_ood"] == "1" for r in labels])
    kinds = np.array([r["kind"] for r in labels])
    scorers = {}
    parts = {"photo": slice(0, N_PHOTO), "struct": slice(N_PHOTO, None)}
    fused_cal, fused_te = [], []
    for name, cols in parts.items():
        g = gaussian(tr[:, cols])
        c, t = g(ca[:, cols]), g(te[:, cols])
        scorers[f"G_{name}"] = (c, t)
        scale = np.percentile(c, 95)
        fused_cal.append(c / scale)
        fused_te.append(t / scale)
    scorers["G_fused"] = (np.max(fused_cal, axis=0), np.max(fused_te, axis=0))
    for k in K:
        n = knn(tr, k)
        scorers[f"K{k}"] = (n(ca), n(te))
    visible = sorted(visible_kinds(root) & set(kinds[ood]))
    print(f"\n{root}: {len(tr)} train, {len(ca)} calibration, {int((~ood).sum())} clean test frames; "
          f"{len(visible)} visible kinds")
    print(f"  {'kind':18s} " + " ".join(f"{s:>8s}" for s in scorers))
    for kind in visible:
        i = ood & (kinds == kind)
        row = []
        for _c, t in scorers.values():
            y = np.r_[np.zeros((~ood).sum()), np.ones(i.sum())]
            row.append(roc_auc_score(y, np.r_[t[~ood], t[i]]))
        print(f"  {kind:18s} " + " ".join(f"{a:8.2f}" for a in row))
    means = {}
    for s, (c, t) in scorers.items():
        aucs = [roc_auc_score(np.r_[np.zeros((~ood).sum()), np.ones((ood & (kinds == k)).sum())],
                              np.r_[t[~ood], t[ood & (kinds == k)]]) for k in visible]
        p = (1 + (c[None, :] >= t[~ood][:, None]).sum(axis=1)) / (len(c) + 1)
        means[s] = float(np.mean(aucs))
        print(f"  {s:8s} mean AUROC {np.mean(aucs):.3f}  below 0.9: {sum(a < 0.9 for a in aucs):2d}  "
              f"clean p<0.05 {np.mean(p < 0.05):.3f}")
    return means


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: knn_probe.py DATA/RECORDING ...")
    for arg in sys.argv[1:]:
        run(Path(arg))
