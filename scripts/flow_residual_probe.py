"""Probe (docs/real_footage.md#motion-anomalies-and-the-flow-detector): would per-frame statistics of the
flow stream that look at two frames at once (how well the flow explains the next frame, how much the flow
changed since the last one) separate the real motion anomalies where the flow VAE does not?

For every frame of a `data real` recording, through the same `Preprocessor` as the nodes (DIS flow at the
128 px model input, restarted at each block's stamp gap): the motion statistics of core/motion.py; the
warp residual |next warped back by the flow - previous| that the Preprocessor sends as the flow's third
channel (mean, 90th percentile, and relative to the plain frame difference); and the change of the flow field since the previous frame (mean, 90th percentile,
relative to the speed); the log of the residual's mean and 90th percentile and of the mean speed
(docs/real_footage.md#the-residual-on-a-log-scale-the-flow-default). A Ledoit-Wolf Gaussian is fitted on the training split for each feature set; the
printed figure is the AUROC of its Mahalanobis distance, each motion kind's 8 frames against the 416 clean
test frames. Run it on tuning recordings only.

    python scripts/flow_residual_probe.py real_tune/tub_20190405_234358 real_road/solidWhiteRight
    python scripts/flow_residual_probe.py --per-feature real_tune_rc/tub_20221129_221024   # each statistic alone
    python scripts/flow_residual_probe.py --contraction real_road/solidWhiteRight ...      # the weight rule below

The contraction weight rule (fixed before its runs): the shipped term (motion + log residual) plus w times
the one-sided contraction part, w in CONTRACTION_WEIGHTS; on the five tuning builds (road solidWhiteRight,
RC lab track tub_20221129_221024, indoor tub_20190405_234358 and tub_20190412_194536, the demo world's
`--seed 21` images) the w with the highest mean AUROC over every motion kind of every build wins, unless
some kind on some build falls more than 0.05 below w = 0 (then that w is out); ties go to the smaller w.
"""
import csv
import sys
from pathlib import Path

import cv2
import numpy as np

from ood_monitor.core.detector_metrics import kind_aurocs
from ood_monitor.core.feature_gaussian import shrunk_gaussian, squared_mahalanobis
from ood_monitor.core.model_input import to_gray
from ood_monitor.core.motion import FEATURES, motion_features
from ood_monitor.core.preprocess import Preprocessor

MOTION_KINDS = ("frozen", "jerk_drop", "jerk_shuffle", "reversing")
EXTRA = ("resid_mean", "resid_p90", "diff_mean", "resid_ratio", "dflow_mean", "dflow_p90", "dflow_rel",
         "log_resid_mean", "log_resid_p90", "log_speed")
CONTRACTION_WEIGHTS = (0.0, 1.0, 2.0, 4.0, 8.0)
LOG_FLOOR = 0.05  # grey levels / px per frame: far under a real sensor's noise, over float round-off


def column(*names: str) -> list[int]:
    everything = (*FEATURES, *EXTRA)
    return [everything.index(n) for n in names]


FEATURE_SETS = {
    "motion (core/motion.py)": column(*FEATURES),
    "warp residual": column("resid_mean", "resid_p90", "resid_ratio"),
    "flow change": column("dflow_mean", "dflow_p90", "dflow_rel"),
    "motion + warp residual": column(*FEATURES, "resid_mean", "resid_p90", "resid_ratio"),
    "motion + flow change": column(*FEATURES, "dflow_mean", "dflow_p90", "dflow_rel"),
    "motion + residual mean, p90": column(*FEATURES, "resid_mean", "resid_p90"),
    "motion + log residual": column(*FEATURES, "log_resid_mean", "log_resid_p90"),
    "motion + log residual, log speed": column(*FEATURES, "log_resid_mean", "log_resid_p90", "log_speed"),
    "motion + linear and log residual": column(*FEATURES, "resid_mean", "resid_p90", "log_resid_mean", "log_resid_p90"),
    "global six + log residual": column(*FEATURES[:6], "log_resid_mean", "log_resid_p90"),
    "all": column(*FEATURES, *EXTRA),
}


def two_frame_statistics(prev: np.ndarray, gray: np.ndarray, flow: np.ndarray,
                         prev_flow: np.ndarray | None) -> list[float]:
    """EXTRA for one flow field; prev/gray float32 grey frames, flow prev -> gray as the Preprocessor gives it
    (u, v in px/frame and the warp residual of core/flow.warp_residual)."""
    resid, diff, uv = flow[..., 2], np.abs(gray - prev), flow[..., :2]
    out = [resid.mean(), np.percentile(resid, 90), diff.mean(), resid.mean() / (diff.mean() + 0.5)]
    logs = [np.log(resid.mean() + LOG_FLOOR), np.log(np.percentile(resid, 90) + LOG_FLOOR),
            np.log(np.linalg.norm(uv, axis=-1).mean() + LOG_FLOOR)]
    if prev_flow is None:
        return out + [np.nan] * 3 + logs
    change = np.linalg.norm(uv - prev_flow[..., :2], axis=-1)
    speed = np.linalg.norm(uv, axis=-1).mean() + np.linalg.norm(prev_flow[..., :2], axis=-1).mean()
    return out + [change.mean(), np.percentile(change, 90), change.mean() / (speed + 0.05)] + logs


def split_features(split: Path) -> tuple[list[dict], np.ndarray]:
    """(label rows, (N, features)) of every frame with a flow field."""
    pre, rows, feats = Preprocessor(), [], []
    prev = prev_flow = None
    for row in csv.DictReader((split / "labels.csv").open()):
        bgr = cv2.imread(str(split / "frames" / f"{int(row['frame']):06d}.png"))
        res = pre.process(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), int(row["stamp_ns"]))
        if res.image is None:
            continue
        gray = to_gray(res.image).astype(np.float32)
        if res.flow is not None:
            rows.append(row)
            feats.append([*motion_features(res.flow[None])[0], *two_frame_statistics(prev, gray, res.flow, prev_flow)])
        prev, prev_flow = gray, res.flow
    return rows, np.asarray(feats, np.float64)


def distances(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    score = squared_mahalanobis(test, *shrunk_gaussian(train[~np.isnan(train).any(axis=1)], jitter=1e-9))
    return np.where(np.isnan(score), np.nanmedian(score), score)  # first flow of a block: no flow change


def single_feature_aurocs(train: np.ndarray, test: np.ndarray, clean: np.ndarray, kinds: np.ndarray) -> None:
    """Each statistic alone: |z| against its training median and spread (two-sided), AUROC per motion kind."""
    for j, name in enumerate((*FEATURES, *EXTRA)):
        column = train[:, j][~np.isnan(train[:, j])]
        z = np.abs((test[:, j] - np.median(column)) / (np.std(column) + 1e-9))
        aurocs = kind_aurocs(np.where(np.isnan(z), np.nanmedian(z), z), clean, kinds, MOTION_KINDS)
        print(f"  {name:26s} " + "  ".join(f"{k} {a:.2f}" for k, a in zip(MOTION_KINDS, aurocs, strict=True)))


def contraction(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """The one-sided direction part tried for reversing: (how far the expansion falls below the training
    frames', in training SDs)², 0 above the mean. A forward-driving camera keeps its expansion; played
    backwards it contracts; a camera that stands or turns in place sits near 0 either way."""
    j = FEATURES.index("expansion")
    column = train[:, j][~np.isnan(train[:, j])]
    return np.maximum(0.0, (column.mean() - test[:, j]) / (column.std() + 1e-9)) ** 2


def contraction_rule(results: dict[str, dict[float, list[float]]]) -> float:
    """The weight the rule in the module docstring picks from {build: {w: AUROCs per motion kind}}."""
    best, best_mean = 0.0, -1.0
    for w in CONTRACTION_WEIGHTS:
        drops = [a0 - a for per_w in results.values() for a0, a in zip(per_w[0.0], per_w[w], strict=True)]
        mean = float(np.mean([a for per_w in results.values() for a in per_w[w]]))
        print(f"w {w:g}: mean AUROC {mean:.3f}, largest drop {max(drops):+.3f}")
        if max(drops) <= 0.05 and mean > best_mean + 1e-9:
            best, best_mean = w, mean
    return best


def main(recordings: list[str], per_feature: bool = False, weights: bool = False) -> None:
    results = {}
    for rec in map(Path, recordings):
        _, train = split_features(rec / "train")
        rows, test = split_features(rec / "test")
        clean, kinds = np.array([r["is_ood"] == "0" for r in rows]), np.array([r["kind"] for r in rows])
        motion_kinds = tuple(sorted({r["kind"] for r in rows if r["category"] == "motion"}))
        print(rec.name)
        if weights:
            shipped = distances(train[:, FEATURE_SETS["motion + log residual"]], test[:, FEATURE_SETS["motion + log residual"]])
            results[str(rec)] = {}
            for w in CONTRACTION_WEIGHTS:
                aurocs = kind_aurocs(shipped + w * contraction(train, test), clean, kinds, motion_kinds)
                results[str(rec)][w] = list(aurocs)
                print(f"  + {w:g} x contraction  " + "  ".join(f"{k} {a:.2f}" for k, a in zip(motion_kinds, aurocs, strict=True)))
            continue
        if per_feature:
            single_feature_aurocs(train, test, clean, kinds)
            continue
        shipped = distances(train[:, FEATURE_SETS["motion + log residual"]], test[:, FEATURE_SETS["motion + log residual"]])
        extra = {"motion + log residual + contraction": shipped + contraction(train, test),
                 "motion + log residual + 4 x contraction": shipped + 4.0 * contraction(train, test)}
        rows_out = {name: distances(train[:, cols], test[:, cols]) for name, cols in FEATURE_SETS.items()} | extra
        for name, score in rows_out.items():
            aurocs = kind_aurocs(score, clean, kinds, MOTION_KINDS)
            print(f"  {name:38s} " + "  ".join(f"{k} {a:.2f}" for k, a in zip(MOTION_KINDS, aurocs, strict=True)))
    if weights:
        print(f"chosen contraction weight: {contraction_rule(results):g}")


if __name__ == "__main__":
    args = sys.argv[1:]
    main([a for a in args if not a.startswith("--")], per_feature="--per-feature" in args,
         weights="--contraction" in args)
