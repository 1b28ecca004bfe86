"""Sweep of the synthesizer's sampling settings under the shipped analysis, on TUNING splits (never demo_data).

scripts/tune_analysis.py tuned the analysis on frames synthesized once with the shipped sampling (the
latent_dit config's `sampling`: DDIM steps, guidance scale, start strength, guidance kind). This script
holds the analysis fixed at the shipped settings (AnalysisConfig and SlicSegmenter defaults, the
confidence_gain mapping: tune_analysis.shipped_setting) and varies the sampling instead. The nominal
discrepancy statistics (core/analysis/nominal.py) stay off: they are fitted to one synthesizer's errors,
so each sampling setting would need its own (this sweep was run before they existed). The frames are
tune_analysis's (same selection and preparation, its --cache is reused or built); each sampling setting
re-synthesizes them once into --synth-cache/<dataset>/<setting>/frame_XXXX.npz (tune_analysis's keys; the
synthesis seconds per frame in timing.json next to them), and every setting is scored with Sweep.score:
object and all-frames F* (official τ grid), best F1 at any τ, pixel AUC-PR, mean synthesis seconds/frame.

    python scripts/tune_synthesis.py --data /tmp/tune_data/bags/test /tmp/tune_data12/bags/test \\
        --json /tmp/tune_synth.json
    # the check of chosen settings on other seeds, each seed scored on its own (mean / min / max):
    python scripts/tune_synthesis.py --data /tmp/tuneS2{1..8}/bags/test --per-dataset \\
        --settings 10:8:0.6:gradient

Without --settings, stage 1 is `gradient` guidance at --steps x --strengths x --scales; stage 2 takes the
--keep best of stage 1 (tune_analysis.key on the pooled rows) and tries --steps2 and `gradfree` guidance at
--gradfree-scales, each at the same strength. The shipped sampling is always scored first (the baseline);
its frames should equal tune_analysis's cache (the script compares them; ±1 grey level
where the thread count changed float reductions).
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tune_analysis import Sweep, build_cache, class_ids, key, refuse_demo_data, shipped_setting

from ood_monitor.core.analysis.discrepancy import make_feature_extractor
from ood_monitor.core.diffusion.synthesizer import Synthesizer, read_card


@dataclass(frozen=True)
class Sampling:
    """One synthesizer sampling setting (Synthesizer.from_model_dir's steps, guidance, strength, kind)."""

    steps: int
    scale: float
    strength: float
    kind: str

    @property
    def name(self) -> str:
        return f"steps{self.steps}-scale{self.scale:g}-strength{self.strength:g}-{self.kind}"

    @classmethod
    def parse(cls, text: str) -> Sampling:
        """`steps:scale:strength:kind`, e.g. 10:4:0.5:gradient."""
        steps, scale, strength, kind = text.split(":")
        return cls(int(steps), float(scale), float(strength), kind)

    def synthesizer(self, model_dir: Path) -> Synthesizer:
        return Synthesizer.from_model_dir(model_dir, steps=self.steps, guidance=self.scale,
                                          strength=self.strength, guidance_kind=self.kind)


def shipped_sampling(model_dir: Path) -> Sampling:
    """The sampling the synthesizer uses when nothing overrides it (its config's `sampling`)."""
    synth = Synthesizer.from_model_dir(model_dir)
    g = synth.guidance
    return Sampling(g.steps, g.scale, g.strength, g.kind)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def dataset_name(data: Path) -> str:
    return data.resolve().parent.parent.name  # as tune_analysis.build_cache names its cache folder


def synth_cache(args: argparse.Namespace, data: Path, frames: list[dict], s: Sampling) -> tuple[list[dict], float]:
    """`frames` (tune_analysis's cache of `data`) re-synthesized with `s`, cached per setting; and the mean
    synthesis seconds per frame (as measured when the cache was written)."""
    folder = args.synth_cache / dataset_name(data) / s.name
    folder.mkdir(parents=True, exist_ok=True)
    timing_path = folder / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    synth, out = None, []
    for j, f in enumerate(frames):
        path = folder / f"frame_{j:04d}.npz"
        cached = None
        if path.is_file():
            cached = {k: (str(v) if k == "category" else v) for k, v in np.load(path).items()}
            if not np.array_equal(cached["image"], f["image"]):  # the source cache was rebuilt: stale
                cached = None
        if cached is None:
            if synth is None:
                synth = s.synthesizer(args.synthesizer)
                synth.synthesize(f["image"])  # warm-up, not timed
            t0 = time.perf_counter()
            img = synth.synthesize(f["image"])
            timing[path.name] = time.perf_counter() - t0
            cached = {**{k: f[k] for k in ("image", "semantic", "gt", "category")}, "synth": img}
            np.savez_compressed(path, **cached)
        out.append(cached)
    timing_path.write_text(json.dumps(timing, indent=0))
    secs = [timing[f"frame_{j:04d}.npz"] for j in range(len(frames)) if f"frame_{j:04d}.npz" in timing]
    return out, float(np.mean(secs)) if secs else float("nan")


class SharedLabelSweep(Sweep):
    """A Sweep whose superpixel labels come from (and go to) a dict shared by every synthesis of the same
    frames: the labels depend only on the input images, not on the synthesis."""

    def __init__(self, frames: list[dict], ids, extractor, labels: dict) -> None:
        super().__init__(frames, ids, extractor)
        self._labels = labels


class Evaluator:
    """Source frames, class ids and shared labels of each dataset; scores a sampling setting on each
    dataset and on all of them pooled."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.extractor, desc = make_feature_extractor("auto", args.models)
        log(f"features: {desc}")
        self.sources = {d: build_cache(args, d) for d in args.data}
        self.ids = {d: class_ids(d) for d in args.data}
        if args.pool and len(set(self.ids.values())) != 1:
            raise SystemExit(f"the tuning splits disagree on anomaly classes: {set(self.ids.values())} "
                             "(score them with --per-dataset --no-pool)")
        self.labels = {d: {} for d in args.data}
        self.pooled_labels: dict = {}
        self.rows: list[dict] = []
        for d, frames in self.sources.items():
            log(f"{d}: {len(frames)} frames ({sum(f['category'] == 'object' for f in frames)} object)")

    def _score(self, frames: list[dict], ids, labels: dict) -> dict:
        return SharedLabelSweep(frames, ids, self.extractor, labels).score(shipped_setting())

    def reference(self) -> dict:
        """The shipped analysis on tune_analysis's cache itself (its `current defaults` figure)."""
        frames = [f for d in self.args.data for f in self.sources[d]]
        return self._score(frames, next(iter(self.ids.values())), self.pooled_labels)

    def evaluate(self, s: Sampling, stage: str) -> dict:
        """Scores `s`; returns the pooled row (or, with --no-pool, the first dataset's)."""
        t0 = time.perf_counter()
        per, secs, n = {}, [], []
        for d in self.args.data:
            frames, sec = synth_cache(self.args, d, self.sources[d], s)
            per[d] = frames
            secs.append(sec)
            n.append(len(frames))
        seconds = float(np.average(secs, weights=n)) if not np.isnan(secs).any() else float("nan")
        base = {**asdict(s), "name": s.name, "stage": stage, "seconds": seconds}
        rows = []
        if self.args.per_dataset:
            for d in self.args.data:
                r = {**base, **self._score(per[d], self.ids[d], self.labels[d]), "dataset": dataset_name(d),
                     "seconds": secs[self.args.data.index(d)]}
                rows.append(r)
        if self.args.pool:
            pooled = [f for d in self.args.data for f in per[d]]
            rows.insert(0, {**base, **self._score(pooled, next(iter(self.ids.values())), self.pooled_labels),
                            "dataset": "pooled"})
        self.rows.extend(rows)
        main = rows[0]
        log(f"{stage} {s.name}: object F* {main['object_f']:.3f} AUC-PR {main['object_auc']:.3f}, all F* "
            f"{main['all_f']:.3f}, {seconds:.3f} s/frame ({time.perf_counter() - t0:.0f} s)")
        return main

    def compare_to_source(self, s: Sampling) -> tuple[int, int, int]:
        """(frames of `s`'s cache whose synthesis equals tune_analysis's cache exactly, frames, largest
        |difference| in grey levels): float reductions depend on the thread count, so ±1 can occur."""
        same = total = worst = 0
        for d in self.args.data:
            frames, _ = synth_cache(self.args, d, self.sources[d], s)
            for a, b in zip(frames, self.sources[d], strict=True):
                diff = int(np.abs(a["synth"].astype(np.int16) - b["synth"].astype(np.int16)).max())
                same, total, worst = same + (diff == 0), total + 1, max(worst, diff)
        return same, total, worst


HEADER = ("| steps | scale | strength | kind | object F* | τ | best F1 any τ | at τ | object AUC-PR | all F* | τ "
          "| all AUC-PR | s/frame |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def fmt(row: dict) -> str:
    return (f"| {row['steps']} | {row['scale']:g} | {row['strength']:g} | {row['kind']} | {row['object_f']:.3f} "
            f"| {row['object_tau']} | {row['object_fine']:.3f} | {row['object_fine_tau']} | {row['object_auc']:.3f} "
            f"| {row['all_f']:.3f} | {row['all_tau']} | {row['all_auc']:.3f} | {row['seconds']:.3f} |")


def table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}\n{HEADER}")
    for r in rows:
        print(fmt(r))
    print(flush=True)


def per_dataset_summary(rows: list[dict], order: list[str]) -> None:
    """Object F* of each setting across the datasets scored one by one: mean, min, max."""
    print("\nper dataset (each scored on its own):\n| steps | scale | strength | kind | datasets | object F* mean "
          "| min | max | object AUC-PR mean | all F* mean | s/frame | object F* per dataset |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in order:
        rs = [r for r in rows if r["name"] == name and r["dataset"] != "pooled"]
        if not rs:
            continue
        f = [r["object_f"] for r in rs]
        r0 = rs[0]
        print(f"| {r0['steps']} | {r0['scale']:g} | {r0['strength']:g} | {r0['kind']} | {len(rs)} "
              f"| {statistics.mean(f):.3f} | {min(f):.3f} | {max(f):.3f} "
              f"| {statistics.mean(r['object_auc'] for r in rs):.3f} | {statistics.mean(r['all_f'] for r in rs):.3f} "
              f"| {statistics.mean(r['seconds'] for r in rs):.3f} | " + " ".join(f"{x:.3f}" for x in f) + " |")
    print(flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, nargs="+", required=True,
                   help="tuning test splits (bags or image folders of demo datasets), NOT demo_data")
    p.add_argument("--cache", type=Path, default=Path("/tmp/tune_cache"),
                   help="tune_analysis's frame cache (source frames; built with the shipped sampling if absent)")
    p.add_argument("--synth-cache", type=Path, default=Path("/tmp/tune_synth_cache"), help="per-setting frames")
    p.add_argument("--synthesizer", type=Path, default=Path("models/latent_dit"))
    p.add_argument("--models", type=Path, default=Path("models"), help="folder holding dcae/ (feature extractor auto)")
    p.add_argument("--max-mask-frames", type=int, default=200, help="as tune_analysis")
    p.add_argument("--settings", nargs="+", type=Sampling.parse, metavar="STEPS:SCALE:STRENGTH:KIND",
                   help="score only these (and the baseline) instead of the two stages")
    p.add_argument("--steps", type=int, default=10, help="stage 1 DDIM steps")
    p.add_argument("--strengths", type=float, nargs="+", default=[0.4, 0.5, 0.6, 0.7, 0.8])
    p.add_argument("--scales", type=float, nargs="+", default=[2.0, 4.0, 8.0], help="stage 1 gradient scales")
    p.add_argument("--keep", type=int, default=3, help="stage 1 settings carried to stage 2")
    p.add_argument("--steps2", type=int, default=20, help="stage 2 DDIM steps")
    p.add_argument("--gradfree-scales", type=float, nargs="+", default=[0.3, 0.6, 1.0])
    p.add_argument("--per-dataset", action="store_true", help="also score each --data on its own")
    p.add_argument("--no-pool", dest="pool", action="store_false", help="do not score the datasets pooled")
    p.add_argument("--margin", type=float, default=0.03, help="object F* gain over the baseline that counts")
    p.add_argument("--max-seconds", type=float, default=0.25, help="synthesis budget per frame")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, help="write every scored row here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    refuse_demo_data(args.data)
    if not (args.pool or args.per_dataset):
        raise SystemExit("--no-pool needs --per-dataset")
    if len({dataset_name(d) for d in args.data}) != len(args.data):
        raise SystemExit("two --data share a dataset folder name (the caches are keyed by it)")
    card = read_card(args.synthesizer)
    log(f"synthesizer {args.synthesizer} ({card['type']}), shipped sampling {card.get('sampling')}; "
        f"analysis {shipped_setting()}")

    ev = Evaluator(args)
    baseline = shipped_sampling(args.synthesizer)
    base_row = ev.evaluate(baseline, "baseline")
    same, total, worst = ev.compare_to_source(baseline)
    log(f"baseline synthesis identical to tune_analysis's cache in {same}/{total} frames (largest difference "
        f"{worst} grey levels)")
    if args.pool:
        table("tune_analysis's cache, shipped analysis (its `current defaults` figure):",
              [{**asdict(baseline), **ev.reference(), "seconds": float("nan")}])
    table("baseline (shipped sampling):", [base_row])

    order = [baseline.name]
    if args.settings:
        stages = {"given": [ev.evaluate(s, "given") if s != baseline else base_row for s in args.settings]}
        order += [s.name for s in args.settings]
    else:
        grid = [Sampling(args.steps, sc, st, "gradient") for st, sc in itertools.product(args.strengths, args.scales)]
        stage1 = sorted((base_row if s == baseline else ev.evaluate(s, "stage1") for s in grid), key=key, reverse=True)
        table(f"stage 1: gradient guidance, {args.steps} steps ({len(stage1)} settings, best first):", stage1)
        seen = {baseline} | set(grid)
        stage2 = []
        for r in stage1[:args.keep]:
            for s in [Sampling(args.steps2, r["scale"], r["strength"], r["kind"]),
                      *(Sampling(args.steps, sc, r["strength"], "gradfree") for sc in args.gradfree_scales)]:
                if s not in seen:
                    seen.add(s)
                    stage2.append(ev.evaluate(s, "stage2"))
        stage2.sort(key=key, reverse=True)
        table(f"stage 2: {args.steps2} steps / gradfree guidance for the best {args.keep} of stage 1:", stage2)
        stages = {"stage 1": stage1, "stage 2": stage2}
        order += [r["name"] for rs in stages.values() for r in rs if r["name"] != baseline.name]

    everything = sorted({r["name"]: r for rs in [[base_row], *stages.values()] for r in rs}.values(), key=key,
                        reverse=True)
    table("all settings (pooled, best first):" if args.pool else "all settings (first dataset):", everything)
    good = [r for r in everything if r["object_f"] >= base_row["object_f"] + args.margin
            and r["object_auc"] >= 0.7 and r["seconds"] <= args.max_seconds]
    print(f"beat the baseline's object F* {base_row['object_f']:.3f} by >= {args.margin} with object AUC-PR >= 0.7 "
          f"and <= {args.max_seconds} s/frame: " + (", ".join(r["name"] for r in good) or "none"))
    if args.per_dataset:
        per_dataset_summary(ev.rows, order)
    if args.json:
        args.json.write_text(json.dumps(ev.rows, indent=1, default=float))
        log(f"wrote {len(ev.rows)} rows to {args.json}")


if __name__ == "__main__":
    main()
