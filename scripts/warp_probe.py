"""Probe (issue 16, not a product feature): how much mask quality is lost when a frame is analysed against
the synthesis of an *earlier* frame, warped to it by optical flow, instead of its own synthesis?

If little, the analysis could run on every camera frame against the newest synthesis (mask rate and
latency set by the analysis, the synthesis running behind at its own rate). Per lag k, every frame with a
ground-truth mask is analysed against synth(frame t-k) warped by DIS flow from t to t-k (same sequence
only); lag 0 is today's pipeline. Prints pixel AUC-PR and F* per lag over the object frames. Run it on tuning builds of
the demo world (`ood-monitor data demo --seed 11 --scale 0.25 --out /tmp/speed_seed11`), not the test split
whose figures are reported.

    python scripts/warp_probe.py /tmp/speed_seed11/images/test --lags 0 1 2 4 --max-frames 60
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from ood_monitor.cli.evaluate_cmd import class_ids, mask_analysis, node_parameters
from ood_monitor.core.analysis.mask_evaluation import MaskEvaluation, prepare_label
from ood_monitor.core.diffusion.synthesizer import synthesizer_from_params
from ood_monitor.core.model_dirs import resolve_model_dir
from ood_monitor.core.model_input import FrameConfig, prepare_frame
from ood_monitor.data.labeled_frames import iter_frames

GAP_NS = 1_000_000_000


def backward_warp(src: np.ndarray, frame_gray: np.ndarray, src_gray: np.ndarray, dis) -> np.ndarray:
    """`src` (aligned with src_gray) moved onto frame_gray's pixels: flow frame -> src, then remap."""
    flow = dis.calc(frame_gray, src_gray, None)
    h, w = frame_gray.shape
    grid = np.dstack(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)))
    return cv2.remap(src, grid + flow, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("--lags", type=int, nargs="+", default=[0, 1, 2, 4])
    ap.add_argument("--params", type=Path, default=Path("config/default.yaml"))
    ap.add_argument("--max-frames", type=int, default=60, help="mask frames evaluated")
    ap.add_argument("--preset", choices=("fast", "medium", "ultrafast"), default="fast", help="DIS flow preset")
    a = ap.parse_args()
    synth = synthesizer_from_params(resolve_model_dir("models/latent_dit"), node_parameters(a.params, "synthesizer_node"))
    analyzer, _, _ = mask_analysis(argparse.Namespace(params=a.params, segmenter=None, sam_checkpoint=None, features=None))
    anomaly, ignore = class_ids(a.data, None)
    cfg = FrameConfig(synth.image_size, synth.image_size)
    dis = cv2.DISOpticalFlow_create(getattr(cv2, f"DISOPTICAL_FLOW_PRESET_{a.preset.upper()}"))
    evs = {k: MaskEvaluation(anomaly, ignore) for k in a.lags}
    history: list[tuple[np.ndarray, np.ndarray, int]] = []  # (prepared, grey, stamp) of recent frames
    cache: dict[int, np.ndarray] = {}
    done, t0 = 0, time.perf_counter()
    for f in iter_frames(a.data):
        image = prepare_frame(f.image, cfg)
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        if history and (f.stamp_ns - history[-1][2] > GAP_NS or f.stamp_ns < history[-1][2]):
            history, cache = [], {}
        history = (history + [(image, grey, f.stamp_ns)])[-(max(a.lags) + 1):]
        cache = {s: v for s, v in cache.items() if s in {h[2] for h in history}}
        if f.category != "object" or f.mask is None or not f.mask.any() or done >= a.max_frames:
            continue
        gt = prepare_label(f.mask, cfg)
        semantic = prepare_label(f.semantic, cfg) if f.semantic is not None else None
        for k in a.lags:
            if k >= len(history):
                continue
            src_img, src_grey, src_stamp = history[-1 - k]
            if src_stamp not in cache:
                cache[src_stamp] = synth.synthesize(src_img)
            recon = cache[src_stamp] if k == 0 else backward_warp(cache[src_stamp], grey, src_grey, dis)
            res = analyzer.analyze(image, recon)
            evs[k].add(image, recon, res.confidence, res.mask.mask, gt, semantic, 0.0)
        done += 1
    print(f"{a.data}: {done} mask frames, {time.perf_counter() - t0:.0f} s")
    for k, ev in evs.items():
        r = ev.result()
        print(f"  lag {k}: frames {r['frames']}, pixel AUC-PR {r['auc_pr']:.3f}, F* {r['f_star']:.3f}")


if __name__ == "__main__":
    main()
