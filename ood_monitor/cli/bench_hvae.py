"""`ood-monitor bench hvae`: the latent-allocation sweep of arXiv 2506.10089
(docs/methods.md#hierarchical-vae) on the demo data.

Trains, on the demo train split, a flat β-VAE and two-level HVAEs that split the same latent budget
between levels by ratio r (d1 = r * budget bottom dims, the rest on top), all with the same
architecture, epochs, seed and KL warm-up, at a small input size so the sweep fits a CPU. Scores the
test split with each model's nonconformity (no calibration: AUROC needs none) and prints AUROC per
OOD category next to the flat model, as rows `flat` and `hvae-r<r>`. The paper reports +3.2 AUROC points
at its best ratio r*; this measures what our data shows.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from ood_monitor.cli.train_cmd import SCORES

CATEGORIES = ("global", "motion", "object")
QUICK_RATIOS = "0.25,0.75"
ACTIVE_NATS = 0.05  # a latent dim carrying less mean KL than this on training data has collapsed


@dataclass(frozen=True)
class SweepConfig:
    """One sweep: every model gets the same input size, latent budget, epochs and training seed."""

    kind: str = "image"
    size: int = 64
    latent: int = 30
    beta: float = 1.4
    epochs: int = 12
    select_k: int = 8
    score: str = "kl"
    kl_warmup: float = 2.0
    seed: int = 0


def register(stages: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = stages.add_parser("hvae", help="AUROC of two-level HVAEs per latent allocation ratio r vs a flat β-VAE")
    p.add_argument("--data", type=Path, default=Path("demo_data/bags"), help="folder with train/ and test/ bags")
    p.add_argument("--kind", choices=("image", "flow"), default="image", help="what the VAEs encode")
    p.add_argument("--ratios", default="0.1,0.25,0.5,0.75,0.9",
                   help=f"bottom-level shares of the latent budget (--quick: {QUICK_RATIOS})")
    p.add_argument("--size", type=int, default=64, help="square input size (default 64: a CPU-sized sweep)")
    p.add_argument("--latent", type=int, default=30, help="total latent budget of every model")
    p.add_argument("--epochs", type=int, default=12, help="epochs per model (--quick: 2)")
    p.add_argument("--select-k", type=int, default=8, help="latent dims the score uses")
    p.add_argument("--score", choices=SCORES, default="kl", help="nonconformity score")
    p.add_argument("--kl-warmup", type=float, default=2.0, help="KL warm-up epochs")
    p.add_argument("--max-frames", type=int, default=None, help="training frames (--quick: 300)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.set_defaults(func=run)
    return p


def parse_ratios(text: str) -> list[float]:
    ratios = [float(r) for r in text.split(",") if r.strip()]
    if not ratios or not all(0.0 < r < 1.0 for r in ratios):
        raise ValueError(f"--ratios must be numbers in (0, 1), got {text!r}")
    return ratios


def variant_name(ratio: float | None) -> str:
    return "flat" if ratio is None else f"hvae-r{ratio:g}"


def train_and_score(ratio: float | None, sweep: SweepConfig, train, test, flow_scale: float) -> dict:
    """Train one model (flat when ratio is None) and return its row of test AUROCs."""
    import torch

    from ood_monitor.cli.train_cmd import default_widths
    from ood_monitor.core.detector_evaluation import Labels, frame_table
    from ood_monitor.core.nonconformity import Nonconformity, encode
    from ood_monitor.core.vae import HvaeConfig, VaeConfig, build_model
    from ood_monitor.core.vae.train import TrainConfig, choose_dims, train_vae

    common = dict(kind=sweep.kind, height=sweep.size, width=sweep.size, latent=sweep.latent, beta=sweep.beta,
                  widths=default_widths(sweep.size))
    cfg = VaeConfig(**common) if ratio is None else HvaeConfig(**common, ratio=ratio)
    torch.manual_seed(sweep.seed)
    model = build_model("beta_vae" if ratio is None else "hvae", cfg)
    tcfg = TrainConfig(epochs=sweep.epochs, patience=sweep.epochs, seed=sweep.seed, kl_warmup=sweep.kl_warmup)
    t0 = time.monotonic()
    train_vae(model, train, flow_scale, tcfg, log=lambda _m: None)
    seconds = time.monotonic() - t0
    dims, usage, stats, term = choose_dims(model.encoder, train, flow_scale, sweep.select_k)
    mu, logvar = encode(model.encoder, lambda s: test.inputs(s, flow_scale), len(test))
    score = Nonconformity.from_stats(sweep.score, dims, stats, texture=term, motion=term)  # the method picks
    scores = score(mu, logvar, score.frame_features(test.raw))
    table = frame_table(scores, Labels(test.is_ood, test.category, test.ood_kind, test.episode))
    levels = "flat" if ratio is None else "/".join(str(d) for d in cfg.level_dims)
    row = {"variant": variant_name(ratio), "ratio": ratio, "levels": levels, "train_s": seconds,
           "active_dims": int((usage > ACTIVE_NATS).sum())}
    for cat in CATEGORIES:
        if f"category:{cat}" in table:
            row[f"auroc_{cat}"] = table[f"category:{cat}"]["auroc"]
    row["auroc_all"] = table["all"]["auroc"]
    row["aupr_out"] = table["all"]["aupr_out"]
    row["auroc"] = row.get(f"auroc_{'global' if sweep.kind == 'image' else 'motion'}", row["auroc_all"])
    return row


def run(args: argparse.Namespace) -> int:
    import torch

    from ood_monitor.core.benchmark import format_table, machine_info, write_report
    from ood_monitor.core.model_input import FrameConfig
    from ood_monitor.core.vae.dataset import auto_flow_scale, load_frames

    torch.set_num_threads(max(1, args.threads))
    ratios = parse_ratios(QUICK_RATIOS if args.quick else args.ratios)
    sweep = SweepConfig(kind=args.kind, size=args.size, latent=args.latent, epochs=2 if args.quick else args.epochs,
                        select_k=args.select_k, score=args.score, kl_warmup=args.kl_warmup, seed=args.seed)
    limit = args.max_frames or (300 if args.quick else None)
    frame_cfg = FrameConfig(args.size, args.size)
    train = load_frames(args.data / "train", args.kind, frame_cfg, limit=limit)
    train = train.subset(~train.is_ood)
    test = load_frames(args.data / "test", args.kind, frame_cfg)
    flow_scale = auto_flow_scale(train.raw) if args.kind == "flow" else 1.0
    print(f"hvae sweep: {args.kind} {args.size}x{args.size}, latent budget {args.latent}, {sweep.epochs} epochs, "
          f"{len(train)} train / {len(test)} test frames, score {args.score}", flush=True)
    rows = []
    for ratio in [None, *ratios]:
        rows.append(train_and_score(ratio, sweep, train, test, flow_scale))
        print(f"  {rows[-1]['variant']}: AUROC {rows[-1]['auroc']:.3f} ({rows[-1]['train_s']:.0f} s)", flush=True)
    flat = rows[0]["auroc"]
    for row in rows:
        row["delta_points"] = 100.0 * (row["auroc"] - flat)
    columns = ["variant", "levels", *(f"auroc_{c}" for c in CATEGORIES if f"auroc_{c}" in rows[0]),
               "auroc_all", "delta_points", "active_dims", "train_s"]
    print(format_table(rows, columns))
    best = max(rows[1:], key=lambda r: r["auroc"])
    print(f"best ratio r* = {best['ratio']:g}: {best['delta_points']:+.1f} AUROC points vs flat "
          f"(arXiv 2506.10089 reports +3.2)")
    write_report(rows, machine_info(torch_threads=args.threads), args.json,
                 sweep={**vars(sweep), "ratios": ratios, "data": str(args.data), "train_frames": len(train)})
    if args.json:
        print(f"wrote {args.json}")
    return 0
