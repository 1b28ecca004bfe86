"""Speed settings of the mask path (issue 16) scored for quality, on TUNING splits (other seeds of the demo
world), then checked on the demo test split: synthesizer backend x guidance kind x steps x scale x strength,
and segmenter x resolution, under the shipped analysis (config/default.yaml's analysis_node section).

For every sampling setting the nominal discrepancy statistics are re-fitted as `ood-monitor
calibrate-analysis` would for that synthesizer (same frames: every 2nd nominal frame of --calibration, at
most --calib-frames; same clusters and z-scale), because they describe one synthesizer's errors. Each
--data's frames with a ground-truth mask (the first --max-mask-frames, as `ood-monitor evaluate`) are
synthesized once per setting and analysed with every --segmenters entry; rows give object / all-frames
pixel AUC-PR and F*, synthesis ms per frame by stage (1 thread) and analysis ms per frame by stage.

    python scripts/tune_speed.py --data /tmp/speed_seed11/images/test /tmp/speed_seed12/images/test \\
        --settings torch:gradient:10:4:0.5 onnxruntime:gradfree:4:1:0.3 --segmenters slic:400:160 felzenszwalb:100:96
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import cv2
import numpy as np
import torch

from ood_monitor.cli.evaluate_cmd import mask_analysis
from ood_monitor.core.analysis import Analyzer
from ood_monitor.core.analysis.mask_evaluation import MaskEvaluation, prepare_label
from ood_monitor.core.analysis.nominal import NominalDiscrepancy
from ood_monitor.core.analysis.segmenters import FelzenszwalbSegmenter, SlicSegmenter
from ood_monitor.core.diffusion.synthesizer import Synthesizer
from ood_monitor.core.model_input import FrameConfig, prepare_frame
from ood_monitor.data.labeled_frames import iter_frames, load_classes


@dataclass(frozen=True)
class Setting:
    backend: str
    kind: str
    steps: int
    scale: float
    strength: float

    @classmethod
    def parse(cls, text: str) -> Setting:
        b, k, n, w, s = text.split(":")
        return cls(b, k, int(n), float(w), float(s))

    @property
    def name(self) -> str:
        return f"{self.backend}:{self.kind}:{self.steps}:{self.scale:g}:{self.strength:g}"


def segmenter(spec: str):
    kind, a, side, *rest = spec.split(":")
    if kind == "slic":
        return SlicSegmenter(n_segments=int(a), max_side=int(side), iterations=int(rest[0]) if rest else SlicSegmenter.iterations)
    return FelzenszwalbSegmenter(scale=float(a), max_side=int(side))


def calibration_images(path: str, n: int, every: int = 2) -> list[np.ndarray]:
    cfg = FrameConfig(128, 128)
    frames = (f for f in iter_frames(path) if not f.is_ood and (f.mask is None or not f.mask.any()))
    return [prepare_frame(f.image, cfg) for f in islice(frames, 0, n * every, every)]


def mask_frames(path: str, limit: int) -> list[dict]:
    cfg = FrameConfig(128, 128)
    out = []
    for f in iter_frames(path):
        if f.mask is None or not f.mask.any():
            continue
        gt = prepare_label(f.mask, cfg)
        if gt.any():
            out.append({"image": prepare_frame(f.image, cfg), "gt": gt, "category": f.category,
                        "semantic": prepare_label(f.semantic, cfg) if f.semantic is not None else None})
        if len(out) >= limit:
            break
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--calibration", default="demo_data/images/calibration")
    p.add_argument("--calib-frames", type=int, default=150)
    p.add_argument("--settings", nargs="+", type=Setting.parse, required=True, metavar="BACKEND:KIND:STEPS:SCALE:STRENGTH")
    p.add_argument("--segmenters", nargs="+", default=["slic:400:160"], metavar="slic:N:SIDE[:ITERATIONS]|felzenszwalb:SCALE:SIDE")
    p.add_argument("--max-mask-frames", type=int, default=200)
    p.add_argument("--params", type=Path, default=Path("config/default.yaml"))
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    raw, _, features = mask_analysis(argparse.Namespace(params=args.params, segmenter=None, sam_checkpoint=None,
                                                        features=None), nominal=False)
    calib = calibration_images(args.calibration, args.calib_frames)
    data = {d: mask_frames(d, args.max_mask_frames) for d in args.data}
    print(f"{len(calib)} calibration frames; " + ", ".join(f"{d}: {len(v)}" for d, v in data.items()), flush=True)
    rows = []
    for s in args.settings:
        synth = Synthesizer.from_model_dir("models/latent_dit", steps=s.steps, guidance=s.scale, strength=s.strength,
                                           guidance_kind=s.kind, backend=s.backend, threads=1)
        t0 = time.perf_counter()
        pairs = [(im, raw.discrepancy(im, synth.synthesize(im))) for im in calib]
        nominal = NominalDiscrepancy.fit(pairs, k=12, z_scale=23.0)
        print(f"{s.name}: nominal fitted in {time.perf_counter() - t0:.0f} s", flush=True)
        for d, frames in data.items():
            outs, stages = [], []
            for f in frames:
                outs.append(synth.synthesize(f["image"]))
                stages.append(synth.last_timing.stages())
            synth_ms = {k: float(np.median([t[k] for t in stages])) for k in stages[0]}
            classes = load_classes(d).values()
            ids = (tuple(c.id for c in classes if c.anomaly), tuple(c.id for c in classes if c.name in ("unknown", "void")))
            for spec in args.segmenters:
                analyzer = Analyzer(raw.cfg, segmenter(spec), raw.discrepancy.extractor, nominal)
                evs = {"all": MaskEvaluation(*ids), "object": MaskEvaluation(*ids)}
                an, elapsed = [], []
                for f, o in zip(frames, outs, strict=True):
                    r = analyzer.analyze(f["image"], o)
                    an.append(r.timings_ms)
                    elapsed.append(r.elapsed_ms)
                    for name in ("all", f["category"]):
                        if name in evs:
                            evs[name].add(f["image"], o, r.confidence, r.mask.mask, f["gt"], f["semantic"], 0.0)
                obj, al = evs["object"].result(), evs["all"].result()
                row = {"setting": s.name, "segmenter": spec, "data": d, "object_auc_pr": obj["auc_pr"],
                       "object_f_star": obj["f_star"], "all_auc_pr": al["auc_pr"], "all_f_star": al["f_star"],
                       "object_frames": obj["frames"], "synth_ms": sum(synth_ms.values()),
                       **{f"synth_{k}_ms": v for k, v in synth_ms.items()},
                       "analysis_ms": float(np.median(elapsed)),
                       **{f"analysis_{k}_ms": float(np.median([t[k] for t in an])) for k in an[0]}}
                rows.append(row)
                print(f"  {Path(d).parent.name:14s} {spec:22s} object AUC-PR {row['object_auc_pr']:.3f} "
                      f"F* {row['object_f_star']:.3f}  all {row['all_auc_pr']:.3f}/{row['all_f_star']:.3f}  "
                      f"synth {row['synth_ms']:.0f} ms  analysis {row['analysis_ms']:.0f} ms", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"features": features, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
