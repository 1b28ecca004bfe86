"""Probe (docs/real_footage.md#change-against-recent-frames): on a moving camera the image detector's
calibration spans views (sun through glass, deep shade) as far from the training frames as several
corruptions, so brightness, frost or rain get p-values inside the calibration's range. A corruption
arrives from one frame to the next; the scene changes gradually. Does a frame's change against the last
few nominal frames separate what its distance to the training frames does not?

Statistics per 128 px model input: the photometric part's 11 and the structure part's 2 (the shipped
parts' own functions). Drift d_t = f_t - mean of the reference (the last K accepted frames of the same
sequence; a stamp gap of 1 s starts a new one, as the node does). Its Ledoit-Wolf Gaussian is fitted on
the training split (reference: the K frames before, no gate); the calibration split (no gate) gives the
tolerance (`block_tolerance`, 5 blocks, as `calibrate`) and the bound kappa x its largest score; on the
test split a frame over the bound is not added to the reference (so the reference stays on the lead-in
while a corruption lasts), for at most HOLD frames, after which the reference restarts from the frame;
unless the step goes towards the training frames (its distance to them, `away`, falls below the
reference's, or below halfway from the reference's to the held frames'): the stream came back, and the
reference restarts there (without it the frames after an episode faced a stale reference).

Printed per kind: the fraction of episode frames over the bound (and the default score's alarm fraction
from `bench real`'s per-frame CSV when given), and the clean frames over the bound.

    python scripts/drift_probe.py DATA WORK|- RECORDING [K ...]   # e.g. real_tune_rc - tub_20221129_221024 2 4
"""
from __future__ import annotations

import csv
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sklearn.covariance import LedoitWolf

from ood_monitor.core.alarm_calibration import block_tolerance
from ood_monitor.core.detector_evaluation import sequence_ids
from ood_monitor.core.model_input import FrameConfig, prepare_frame
from ood_monitor.core.photometric import frame_statistics
from ood_monitor.core.structure import frame_structure
from ood_monitor.data.labeled_frames import iter_frames

HOLD = 40  # frames a reference may stay frozen (2 s at 20 fps) before it restarts from the newest frame


def load(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    cfg = FrameConfig()
    rows, stamps = [], []
    for f in iter_frames(folder):
        x = prepare_frame(f.image, cfg)
        rows.append(np.concatenate([frame_statistics(x), frame_structure(x)]))
        stamps.append(f.stamp_ns)
    return np.stack(rows), sequence_ids(np.asarray(stamps, np.int64), 1.0)


def drifts(feats: np.ndarray, seq: np.ndarray, k: int, score: Callable[[np.ndarray], float] | None = None,
           bound: float = np.inf, away: Callable[[np.ndarray], float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(N, F) drift rows (NaN where a sequence has no reference yet) and (N,) their `score`s; a frame
    scoring over `bound` is kept out of the reference."""
    out = np.full_like(feats, np.nan)
    scores = np.zeros(len(feats))
    ref: deque = deque(maxlen=k)
    held: list[float] = []  # `away` of the frames kept out of the reference since it was last updated
    for t, f in enumerate(feats):
        if t == 0 or seq[t] != seq[t - 1]:
            ref.clear()
            held = []
        if ref:
            out[t] = f - np.mean(ref, axis=0)
            if score is not None:
                scores[t] = score(out[t])
                if scores[t] > bound:
                    a, a_ref = (away(f), away(np.mean(ref, axis=0))) if away is not None else (1.0, 0.0)
                    # a step towards the training frames (below the reference), or back from the held frames
                    # to the reference's level: the stream returned, nothing new
                    back = a <= a_ref or (held and a < 0.5 * (a_ref + float(np.mean(held))))
                    if back:
                        scores[t] = 0.0
                        ref.clear()
                    elif len(held) < HOLD:
                        held.append(a)
                        continue
                    else:
                        ref.clear()
        held = []
        ref.append(f)
    return out, scores


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def mahalanobis(rows: np.ndarray) -> Callable[[np.ndarray], float]:
    """Squared Mahalanobis distance to the Ledoit-Wolf Gaussian of the finite (N, F) rows."""
    lw = LedoitWolf().fit(rows[np.isfinite(rows).all(axis=1)])
    prec, mu = np.linalg.inv(lw.covariance_), lw.location_
    return lambda d: float((d - mu) @ prec @ (d - mu))


def run(data: Path, work: Path | None, rec: str, ks: list[int]) -> None:
    root = data / rec
    (tr, trs), (ca, cas), (te, tes) = (load(root / s) for s in ("train", "calibration", "test"))
    labels = read_rows(root / "test" / "labels.csv")
    ood = np.array([r["is_ood"] == "1" for r in labels])
    kinds = np.array([r["kind"] for r in labels])
    default = None
    if work is not None and (work / rec / "eval" / "scores_vae_image.csv").is_file():
        rows = read_rows(work / rec / "eval" / "scores_vae_image.csv")
        default = np.array([r["alarm_martingale"] == "1" for r in rows]) if "alarm_martingale" in rows[0] else None
    for k in ks:
        maha = mahalanobis(drifts(tr, trs, k)[0])
        d_ca, _ = drifts(ca, cas, k)
        cal = np.array([maha(d) if np.isfinite(d).all() else 0.0 for d in d_ca])
        kappa = block_tolerance(cal, np.arange(len(cal)) * 5 // len(cal))
        bound = kappa * cal.max()
        _, score = drifts(te, tes, k, maha, bound, mahalanobis(tr))
        over = score > bound
        lead = ~ood & np.array([not ood[(tes == tes[i]) & (np.arange(len(ood)) < i)].any() for i in range(len(ood))])
        print(f"{rec} K={k}: kappa {kappa:.2f}, bound {bound:.1f}; clean frames over {over[~ood].mean():.3f}, "
              f"before an episode {over[lead].mean():.3f}"
              + (f" (default martingale alarms {default[~ood].mean():.3f})" if default is not None else ""))
        for kind in sorted(set(kinds[ood])):
            i = np.flatnonzero(ood & (kinds == kind))
            extra = f"  default {default[i].mean():.2f}" if default is not None else ""
            print(f"  {kind:18s} drift {over[i].mean():.2f} (median x{np.median(score[i]) / bound:6.2f}){extra}")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit("usage: drift_probe.py DATA_REAL_FOLDER BENCH_REAL_WORK|- RECORDING [K ...]")
    run(Path(sys.argv[1]), None if sys.argv[2] == "-" else Path(sys.argv[2]), sys.argv[3],
        [int(k) for k in sys.argv[4:]] or [4])
