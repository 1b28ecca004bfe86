"""Probe (docs/real_footage.md#change-part): on a moving camera the image detector's
calibration spans views (sun through glass, deep shade) as far from the training frames as several
corruptions, so brightness, frost or rain get p-values inside the calibration's range. A corruption
arrives from one frame to the next; the scene changes gradually. Does a frame's change against the last
few nominal frames separate what its distance to the training frames does not?

Statistics per 128 px model input: the photometric part's 11 and the structure part's 2 (the shipped
parts' own functions); their change against the frames before, scored by core/change.py (reference of the
last K accepted frames of the same sequence; a stamp gap of 1 s starts a new one, as the node does). Its
Gaussian is fitted on the training split; the calibration split (no gate) gives the tolerance
(`block_tolerance`, 5 blocks, as `calibrate`) and the bound: tolerance x its largest score; the test split
is scored with that bound as the gate of the reference.

Printed per kind: the fraction of episode frames over the bound (and the default score's alarm fraction
from `bench real`'s per-frame CSV when given), and the clean frames over the bound.

    python scripts/change_probe.py DATA WORK|- RECORDING [K ...]   # e.g. real_tune_rc - tub_20221129_221024 2 4
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

from ood_monitor.core.alarm_calibration import block_tolerance
from ood_monitor.core.change import ChangeConfig, ChangeStats, change_scores
from ood_monitor.core.detector_evaluation import sequence_ids
from ood_monitor.core.model_input import FrameConfig, prepare_frame
from ood_monitor.core.photometric import frame_statistics
from ood_monitor.core.structure import frame_structure
from ood_monitor.data.labeled_frames import iter_frames


def load(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    cfg = FrameConfig()
    rows, stamps = [], []
    for f in iter_frames(folder):
        x = prepare_frame(f.image, cfg)
        rows.append(np.concatenate([frame_statistics(x), frame_structure(x)]))
        stamps.append(f.stamp_ns)
    return np.stack(rows), sequence_ids(np.asarray(stamps, np.int64), 1.0)


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


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
        stats = ChangeStats.fit(tr, trs, ChangeConfig(k=k))
        cal = change_scores(stats, ca, cas)
        kappa = block_tolerance(cal, np.arange(len(cal)) * 5 // len(cal))
        bound = kappa * cal.max()
        score = change_scores(stats, te, tes, bound)
        over = score > bound
        lead = ~ood & np.array([not ood[(tes == tes[i]) & (np.arange(len(ood)) < i)].any() for i in range(len(ood))])
        print(f"{rec} K={k}: kappa {kappa:.2f}, bound {bound:.1f}; clean frames over {over[~ood].mean():.3f}, "
              f"before an episode {over[lead].mean():.3f}"
              + (f" (default martingale alarms {default[~ood].mean():.3f})" if default is not None else ""))
        for kind in sorted(set(kinds[ood])):
            i = np.flatnonzero(ood & (kinds == kind))
            extra = f"  default {default[i].mean():.2f}" if default is not None else ""
            print(f"  {kind:18s} change {over[i].mean():.2f} (median x{np.median(score[i]) / bound:6.2f}){extra}")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit("usage: change_probe.py DATA_REAL_FOLDER BENCH_REAL_WORK|- RECORDING [K ...]")
    run(Path(sys.argv[1]), None if sys.argv[2] == "-" else Path(sys.argv[2]), sys.argv[3],
        [int(k) for k in sys.argv[4:]] or [ChangeConfig().k])
