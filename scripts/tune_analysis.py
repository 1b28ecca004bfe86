"""Reproducible sweep of the analysis settings on a TUNING split (never the test split).

Each anomaly frame is prepared and synthesized once, as `ood-monitor evaluate` does (same frame selection:
frames with a non-empty ground-truth mask, the first --max-mask-frames; groups `object` = category object,
`all` = every such frame), and cached as .npz. The sweep then re-runs only the cheap analysis over the cache
(discrepancy terms cached per blur, superpixel labels per segmenter) and reports, per setting, F*, its τ and
pixel AUC-PR of each group (docs/methods.md#mask-metrics, core/mask_metrics.py), ranked by the object F*.

    ood-monitor data demo --out /tmp/tune_data --seed 11 --scale 0.5
    ood-monitor data demo --out /tmp/tune_data12 --seed 12 --scale 0.5   # optional: more objects
    python scripts/tune_analysis.py --data /tmp/tune_data/bags/test /tmp/tune_data12/bags/test

Scale 1 tuning data (the demo's own scale) give 40-frame object episodes like demo_data's test split, so
small objects start farther away (smaller) than at scale 0.5; a scale-1 test split has 120 masked frames,
hence the --max-mask-frames default of 200 (what the demo's evaluate uses), which keeps the small_objects
episode whatever its place in the seeded episode order.

Stages (each keeps the --keep best of the previous one): A discrepancy weights x feature_gain x blur with
SLIC 150; B segmenter (SLIC n_segments x compactness, Felzenszwalb scale); both ranked by the best F1 at any
τ (a fine grid), so the coarse F* grid does not decide them; C confidence mapping (per-frame median removal,
global gains), ranked by F*. The script prints the calibrated confidence_gain: 0.5 / the τ where the best
identity setting's F1 peaks, so confidence 0.5 is the tuned decision point (AnalysisConfig.threshold).
"""
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch

from ood_monitor.core.analysis import AnalysisConfig
from ood_monitor.core.analysis.discrepancy import (
    colour_term,
    feature_term,
    make_feature_extractor,
    structure_term,
)
from ood_monitor.core.analysis.pooling import pool_labels
from ood_monitor.core.analysis.segmenters import FelzenszwalbSegmenter, SlicSegmenter
from ood_monitor.core.mask_metrics import TAUS, FStar, PixelAucPr

WEIGHTS_F, WEIGHTS_C, WEIGHTS_S = (0.0, 0.25, 0.5, 1.0, 2.0), (0.0, 0.5, 1.0), (0.0, 0.25, 0.5, 1.0)
GAINS, BLURS = (2.0, 3.0, 5.0, 8.0), (0.5, 1.0, 2.0)
SEGMENTERS = {**{f"slic-{n}-c{c:g}": SlicSegmenter(n_segments=n, compactness=c)
                 for n, c in itertools.product((50, 100, 150, 250, 400, 600, 800), (5.0, 10.0, 20.0))},
              **{f"felz-{s:g}": FelzenszwalbSegmenter(scale=s) for s in (25.0, 50.0, 100.0, 200.0, 400.0)}}
STAGE_A_SEGMENTER = "slic-150-c10"  # the SLIC setting shipped before this sweep (issue 7)
FINE_TAUS = tuple(round(0.05 + 0.025 * i, 3) for i in range(37))  # 0.05 ... 0.95; contains TAUS


def build_cache(args: argparse.Namespace, data: Path) -> list[dict]:
    """Prepared frame, synthesis, semantic label, mask and category of every selected frame of `data`
    (synthesized once, cached under --cache/<data's dataset folder name>)."""
    cache = args.cache / data.resolve().parent.parent.name
    cache.mkdir(parents=True, exist_ok=True)
    files = sorted(cache.glob("frame_*.npz"))
    if not files:
        from itertools import islice

        from ood_monitor.core.analysis.mask_evaluation import prepare_label
        from ood_monitor.core.diffusion.synthesizer import Synthesizer
        from ood_monitor.core.model_input import FrameConfig, prepare_frame
        from ood_monitor.data.labeled_frames import iter_frames

        synth = Synthesizer.from_model_dir(args.synthesizer)
        cfg = FrameConfig(synth.image_size, synth.image_size)
        frames = (f for f in iter_frames(data) if f.mask is not None and f.mask.any())
        for i, f in enumerate(islice(frames, args.max_mask_frames)):
            image = prepare_frame(f.image, cfg)
            gt = prepare_label(f.mask, cfg)
            if not gt.any() or f.semantic is None:
                continue
            np.savez_compressed(cache / f"frame_{i:04d}.npz", image=image, synth=synth.synthesize(image),
                                semantic=prepare_label(f.semantic, cfg), gt=gt, category=f.category)
            print(f"  synthesized frame {i} ({f.category})", flush=True)
        files = sorted(cache.glob("frame_*.npz"))
    return [{k: (str(v) if k == "category" else v) for k, v in np.load(p).items()} for p in files]


def refuse_demo_data(paths: list[Path]) -> None:
    """Tuning never sees the demo's own splits (its test split is what the figures are measured on)."""
    if any(d.resolve().is_relative_to(Path("demo_data").resolve()) for d in paths):
        raise SystemExit("tune on a separate split (ood-monitor data demo --seed 11 ...), not demo_data")


def class_ids(data: Path) -> tuple[tuple[int, ...], tuple[int, ...]]:
    from ood_monitor.cli.evaluate_cmd import class_ids as ids

    return ids(data, None)


# ----------------------------------------------------------------------------- confidence mappings


def map_identity(conf: np.ndarray) -> np.ndarray:
    return conf


def map_median(conf: np.ndarray) -> np.ndarray:
    """Per-frame background removed: (c - median) / (1 - median), clipped (the frame's typical synthesis
    error is 0, a full discrepancy stays 1)."""
    m = float(np.median(conf))
    return np.clip((conf - m) / max(1e-6, 1.0 - m), 0.0, 1.0)


def map_gain(gain: float):
    def f(conf: np.ndarray) -> np.ndarray:
        return np.clip(conf * gain, 0.0, 1.0)
    return f


def map_median_gain(gain: float):
    def f(conf: np.ndarray) -> np.ndarray:
        return np.clip((conf - float(np.median(conf))) * gain, 0.0, 1.0)
    return f


MAPPINGS = {"identity": map_identity, "median": map_median,
            **{f"gain{g:g}": map_gain(g) for g in (1.25, 1.5, 2.0, 2.5, 3.0)},
            **{f"median-gain{g:g}": map_median_gain(g) for g in (1.0, 1.5, 2.0, 3.0)}}


def mapping(name: str):
    """A MAPPINGS entry, or `gain<g>` for any g (AnalysisConfig.confidence_gain)."""
    return MAPPINGS[name] if name in MAPPINGS else map_gain(float(name.removeprefix("gain")))


# ------------------------------------------------------------------------------------------- sweep


class Sweep:
    """Cached terms / labels and the scoring of one setting."""

    def __init__(self, frames: list[dict], ids, extractor, feature_size: int = 128, nominal=None) -> None:
        self.frames, self.ids, self.nominal = frames, ids, nominal
        self.feature = [f["feature"] if "feature" in f else feature_term(f["image"], f["synth"], extractor,
                                                                          feature_size, 1.0) for f in frames]
        self._terms: dict = {}
        self._labels: dict = {}

    def terms(self, blur: float) -> list[tuple[np.ndarray, np.ndarray]]:
        if blur not in self._terms:
            self._terms[blur] = [(colour_term(f["image"], f["synth"], blur), structure_term(f["image"], f["synth"], 2.0, blur))
                                 for f in self.frames]
        return self._terms[blur]

    def labels(self, seg: str) -> list[np.ndarray]:
        if seg not in self._labels:
            self._labels[seg] = [SEGMENTERS[seg].labels(f["image"]) for f in self.frames]
        return self._labels[seg]

    def score(self, s: dict) -> dict:
        w = {"f": s["wf"], "c": s["wc"], "s": s["ws"]}
        total = sum(w.values())
        conf_map = mapping(s["map"])
        groups = {name: (PixelAucPr(), FStar(*self.ids, taus=FINE_TAUS)) for name in ("object", "all")}
        for f, feat, (col, struct), lab in zip(self.frames, self.feature, self.terms(s["blur"]),
                                               self.labels(s["seg"]), strict=True):
            disc = (w["f"] * np.clip(feat * s["gain"], 0, 1) + w["c"] * col + w["s"] * struct) / total
            if self.nominal is not None:  # fitted on the shipped weights' discrepancy (calibrate-analysis)
                disc = self.nominal(f["image"], disc.astype(np.float32))
            conf = conf_map(pool_labels(disc.astype(np.float32), lab))
            for name in ("all", f["category"]):
                if name in groups:
                    groups[name][0].add(conf, f["gt"])
                    groups[name][1].add(conf, f["semantic"])
        out = dict(s)
        for name, (auc, fstar) in groups.items():
            per_tau = fstar.f1_per_tau()
            tau = max(TAUS, key=lambda t: (per_tau[t], -t))  # F*: the official grid, FStar's tie rule
            fine = max(FINE_TAUS, key=lambda t: (per_tau[t], -t))  # best F1 at any τ: mapping-free ranking
            out.update({f"{name}_f": per_tau[tau], f"{name}_tau": tau, f"{name}_fine": per_tau[fine],
                        f"{name}_fine_tau": fine, f"{name}_auc": auc.value() if auc.frames else np.nan})
        return out


def key(row: dict) -> tuple:
    """F* first, AUC-PR must stay >= 0.7, then the all-frames F*."""
    return (row["object_f"], row["object_auc"] >= 0.7, row["all_f"], row["object_auc"])


def fine_key(row: dict) -> tuple:
    """Stages A and B (identity mapping) rank by the best F1 at any τ, so a setting whose best threshold
    falls between or below the F* grid is not lost before stage C maps its confidence."""
    return (row["object_fine"], row["object_auc"] >= 0.7, row["all_fine"], row["object_auc"])


def run_stage(sweep: Sweep, settings: list[dict], name: str, order=key) -> list[dict]:
    rows = sorted((sweep.score(s) for s in settings), key=order, reverse=True)
    print(f"\nstage {name}: {len(rows)} settings, best 5:\n{HEADER}")
    for r in rows[:5]:
        print(fmt(r), flush=True)
    return rows


def fmt(row: dict) -> str:
    return (f"| {row['seg']} | {row['wf']:g} / {row['wc']:g} / {row['ws']:g} | {row['gain']:g} | {row['blur']:g} "
            f"| {row['map']} | {row['object_f']:.3f} | {row['object_tau']} | {row['object_fine']:.3f} "
            f"| {row['object_fine_tau']} | {row['object_auc']:.3f} "
            f"| {row['all_f']:.3f} | {row['all_tau']} | {row['all_auc']:.3f} |")


HEADER = ("| segmenter | weights f / c / s | feature_gain | blur | mapping | object F* | τ | best F1 any τ | at τ "
          "| object AUC-PR | all F* | τ | all AUC-PR |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def shipped_setting() -> dict:
    """The shipped analysis (AnalysisConfig and SlicSegmenter defaults) as a Sweep setting."""
    cfg = AnalysisConfig()
    d = cfg.discrepancy
    return {"seg": f"slic-{SlicSegmenter.n_segments}-c{SlicSegmenter.compactness:g}", "wf": d.weight_feature,
            "wc": d.weight_colour, "ws": d.weight_structure, "gain": d.feature_gain, "blur": d.blur_sigma,
            "map": f"gain{cfg.confidence_gain:g}"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, nargs="+", required=True,
                   help="tuning test splits (bags or image folders of demo datasets), NOT demo_data")
    p.add_argument("--cache", type=Path, default=Path("/tmp/tune_cache"), help="frame cache folder")
    p.add_argument("--synthesizer", type=Path, default=Path("models/latent_dit"))
    p.add_argument("--models", type=Path, default=Path("models"), help="folder holding dcae/ (feature extractor auto)")
    p.add_argument("--max-mask-frames", type=int, default=200, help="as the demo's evaluate (all masked frames)")
    p.add_argument("--keep", type=int, default=8, help="settings carried from one stage to the next")
    p.add_argument("--top", type=int, default=15, help="rows printed")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, help="write every scored setting here")
    p.add_argument("--nominal-stats", default="auto",
                   help="normalise the discrepancy as analysis_node does: auto (<models>/analysis_nominal when "
                        "present) | none | folder. Fitted on the shipped weights, so a weight sweep with it "
                        "is approximate; --current-only is what it is for")
    p.add_argument("--current-only", action="store_true",
                   help="only the shipped setting: its calibrated confidence_gain and its F*")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    refuse_demo_data(args.data)
    frames = [f for d in args.data for f in build_cache(args, d)]
    print(f"{len(frames)} frames ({sum(f['category'] == 'object' for f in frames)} object) from "
          + ", ".join(map(str, args.data)))
    extractor, desc = make_feature_extractor("auto", args.models)
    print(f"features: {desc}")
    ids = {class_ids(d) for d in args.data}
    if len(ids) != 1:
        raise SystemExit(f"the tuning splits disagree on anomaly classes: {ids}")
    from ood_monitor.core.analysis.nominal import load_nominal

    nominal, nominal_desc = load_nominal(args.nominal_stats, args.models)
    print(f"nominal statistics: {nominal_desc}")
    sweep = Sweep(frames, ids.pop(), extractor, nominal=nominal)

    current = shipped_setting()
    if args.current_only:
        ident = sweep.score({**current, "map": "identity"})
        print(f"calibration: the shipped setting's F1 peaks at τ {ident['object_fine_tau']} (identity mapping); "
              f"confidence_gain = 0.5 / τ = {0.5 / ident['object_fine_tau']:.2f}\n" + HEADER + "\n" + fmt(ident)
              + "\n" + fmt(sweep.score(current)))
        return
    base = {**current, "seg": STAGE_A_SEGMENTER, "map": "identity"}
    grid, ratios = [], set()
    for wf, wc, ws, g, b in itertools.product(WEIGHTS_F, WEIGHTS_C, WEIGHTS_S, GAINS, BLURS):
        total = wf + wc + ws
        ratio = tuple(round(w / total, 4) for w in (wf, wc, ws)) + (g if wf else 0, b) if total else None
        if ratio is not None and ratio not in ratios:  # weights are normalised: 1/1/2 is 0.5/0.5/1
            ratios.add(ratio)
            grid.append({**base, "wf": wf, "wc": wc, "ws": ws, "gain": g, "blur": b})
    a = run_stage(sweep, grid, "A (weights, gain, blur)", fine_key)
    b = run_stage(sweep, [{**r0, "seg": seg} for r0 in a[:args.keep] for seg in SEGMENTERS], "B (segmenter)",
                  fine_key)
    keys = ("seg", "wf", "wc", "ws", "gain", "blur")
    seen, best_b = set(), []
    for r in b:
        if tuple(r[k] for k in keys) not in seen:
            seen.add(tuple(r[k] for k in keys))
            best_b.append(r)
    c = run_stage(sweep, [{**{k: r0[k] for k in keys}, "map": m} for r0 in best_b[:args.keep] for m in MAPPINGS],
                  "C (mapping)")
    rows = sorted({tuple(sorted(r.items())): r for r in a + b + c}.values(), key=key, reverse=True)
    best = max(b, key=fine_key)
    print(f"\ncalibration: the best identity setting's F1 peaks at τ {best['object_fine_tau']}; confidence_gain = "
          f"0.5 / τ = {0.5 / best['object_fine_tau']:.2f} puts that decision point at confidence 0.5")
    print("\ncurrent defaults (AnalysisConfig, SlicSegmenter):\n" + HEADER + "\n" + fmt(sweep.score(current)))
    print(f"\ntop {args.top} of {len(rows)}:\n" + HEADER)
    for r in rows[:args.top]:
        print(fmt(r))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=float))


if __name__ == "__main__":
    main()
