"""Probe (docs/real_footage.md#photometric-part): would a score on global photometric statistics catch what
the image detector's score tolerance lets through, without its drift? (It led to the shipped
`kl_texture_photometric` score; the statistics are core/photometric.py's.)

Features of each 128 px model input: mean R, G, B, luma spread, log Laplacian variance (sharpness), mean
dark channel (haze), mean saturation, 2x2 luma grid. Their Ledoit-Wolf Mahalanobis distance to the
training split, with the score tolerance measured on the calibration split as `calibrate` measures it
(5 contiguous blocks, `block_tolerance`), is set beside the shipped `kl_texture` score of the same frames
(from `ood-monitor bench real`'s work folder: evaluate's per-frame CSV and the model's stored calibration).
Printed per kind: the fraction of episode frames above tolerance x the largest calibration score, and the
median frame's multiple of that bound; and the same fraction for the clean frames (false alarms).

    python scripts/photometric_probe.py real_road work solidWhiteRight
"""
import csv
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.covariance import LedoitWolf

from ood_monitor.core.alarm_calibration import block_tolerance
from ood_monitor.core.model_input import FrameConfig, prepare_frame
from ood_monitor.core.photometric import frame_statistics
from ood_monitor.data.labeled_frames import iter_frames


def load(folder: Path):
    cfg = FrameConfig()
    return np.stack([frame_statistics(prepare_frame(f.image, cfg)) for f in iter_frames(folder)])


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run(data: Path, work: Path, rec: str) -> None:
    root = data / rec
    tr, ca, te = (load(root / s) for s in ("train", "calibration", "test"))
    lw = LedoitWolf().fit(tr)
    prec, mu = np.linalg.inv(lw.covariance_), lw.location_

    def maha(z):
        d = z - mu
        return np.einsum("ij,jk,ik->i", d, prec, d)

    cal = maha(ca)
    blocks = np.arange(len(cal)) * 5 // len(cal)
    kap = block_tolerance(cal, blocks)
    photo = maha(te)
    scored = read_rows(work / rec / "eval" / "scores_vae_image.csv")
    card = json.loads((work / rec / "vae_image" / "config.json").read_text())
    if card["score"] != "kl_texture":
        sys.exit(f"{rec}: the probe sets the photometric distance beside kl_texture; this model runs {card['score']}: "
                 f"recalibrate it with `ood-monitor calibrate --score kl_texture` first")
    kscore = np.array([float(r["score"]) for r in scored])
    kcal = np.asarray(card["calibration"]["scores"])
    kkap = card["alarm"]["score_tolerance"]
    labels = read_rows(root / "test" / "labels.csv")
    if not len(labels) == len(scored) == len(photo):
        sys.exit(f"{rec}: {len(labels)} labels, {len(scored)} scored frames, {len(photo)} frames: not one run")
    ood = np.array([r["is_ood"] == "1" for r in labels])
    kinds = np.array([r["kind"] for r in labels])
    over_p = photo > kap * cal.max()
    over_k = kscore > kkap * kcal.max()
    print(f"{rec}: photometric kappa {kap:.2f} calmax {cal.max():.1f}; kl_texture kappa {kkap:.2f}")
    clean = ~ood
    print(f"  clean frames over: photometric {over_p[clean].mean():.3f}  kl_texture {over_k[clean].mean():.3f}"
          f"  either {(over_p | over_k)[clean].mean():.3f}")
    for kind in sorted(set(kinds[ood])):
        i = np.flatnonzero(ood & (kinds == kind))
        print(f"  {kind:18s} photometric {over_p[i].mean():.2f} (x{np.median(photo[i]) / (kap * cal.max()):6.2f})"
              f"  kl_texture {over_k[i].mean():.2f} (x{np.median(kscore[i]) / (kkap * kcal.max()):6.2f})")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: photometric_probe.py DATA_REAL_FOLDER BENCH_REAL_WORK RECORDING")
    run(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])
