"""`ood-monitor compress`: int8 / fp16 / pruned / distilled variants of a trained VAE detector, each
written as its own model folder (models/<name>-<variant>) with its measured metrics, its own
calibration scores (re-scored on the calibration split by the variant itself) and the quantization guard
(arXiv 2602.01459, docs/methods.md#quantization-guard) verdict against the fp32 parent, which the detector
node enforces."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compress", help="int8/fp16/pruned/distilled variants with an OOD guard",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="fp32 parent model folder, e.g. models/vae_image")
    p.add_argument("--methods", default="int8,fp16,prune,kd", help="comma list of int8, fp16, prune, kd")
    p.add_argument("--data-train", required=True, help="training split (fine-tuning, int8 ranges)")
    p.add_argument("--data-eval", required=True, help="labelled split the guard compares parent and variant on")
    p.add_argument("--data-cal", default=None, help="calibration split (default: the parent's calibration source)")
    p.add_argument("--out-root", default="models", help="variants go to <out-root>/<model name>-<variant>")
    p.add_argument("--tolerance", type=float, default=2.0, help="guard: max AUPR-out loss in points")
    p.add_argument("--ratios", type=floats, default=(0.3, 0.5), help="pruning ratios (conv channels)")
    p.add_argument("--kd-ratio", type=float, default=None,
                   help="pruning ratio the kd student starts from (default: core.compress.KD_RATIO, 0.7)")
    p.add_argument("--steps", type=int, default=3000, help="distillation steps per pruned/kd model")
    p.add_argument("--time-limit", type=float, default=180.0, help="seconds per distillation run")
    p.add_argument("--max-frames", type=int, default=None, help="read at most this many frames per split")
    p.add_argument("--threads", type=int, default=2, help="torch / onnxruntime CPU threads")
    p.set_defaults(func=run)


def load_split(path: str, card, limit: int | None):
    from ood_monitor.core.model_input import FrameConfig
    from ood_monitor.core.vae.dataset import DEFAULT_IMAGE_TOPIC, load_frames

    cfg = card.config
    topic = card.data.get("image_topic", DEFAULT_IMAGE_TOPIC)
    print(f"reading {card.kind} frames from {path} ...", flush=True)
    return load_frames(path, card.kind, FrameConfig(cfg.width, cfg.height), topic, limit=limit)


def calibration_source(args: argparse.Namespace, card) -> str:
    source = args.data_cal or (card.calibration or {}).get("source")
    if not source:
        raise ValueError(f"{args.model} has no calibration source: pass --data-cal DIR/bags/calibration")
    return source


def run(args: argparse.Namespace) -> int:
    import torch

    from ood_monitor.core.benchmark import format_table
    from ood_monitor.core.compress import (
        KD_RATIO,
        CompressConfig,
        DistillConfig,
        build_variants,
        frame_scores,
        save_variant,
        variant_card,
    )
    from ood_monitor.core.compress.guard import evaluate_variant
    from ood_monitor.core.detector_metrics import frame_metrics
    from ood_monitor.core.model_dirs import resolve_model_dir
    from ood_monitor.core.vae.io import load_encoder

    torch.set_num_threads(max(1, args.threads))
    model_dir = resolve_model_dir(args.model)
    encoder, card = load_encoder(model_dir)
    cfg = CompressConfig(methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
                         ratios=args.ratios, kd_ratio=args.kd_ratio or KD_RATIO, tolerance=args.tolerance,
                         distill=DistillConfig(steps=args.steps, time_limit_s=args.time_limit),
                         threads=args.threads)
    train = load_split(args.data_train, card, args.max_frames)
    evalset = load_split(args.data_eval, card, args.max_frames)
    cal = load_split(calibration_source(args, card), card, args.max_frames)
    variants = build_variants(encoder, train, card.flow_scale, cfg, log=lambda m: print(m, flush=True))
    parent_scores = frame_scores(variants[0].encoder_fn(args.threads), evalset, card)
    command = " ".join(["ood-monitor", *sys.argv[1:]])
    rows = []
    for variant in variants[1:]:
        vcard = variant_card(card, variant, cal, train, args.threads, command)
        scores = frame_scores(variant.encoder_fn(args.threads), evalset, vcard)  # as its folder will score
        verdict = evaluate_variant(parent_scores, scores, evalset.is_ood, args.tolerance, evalset.source)
        metrics = {**frame_metrics(scores, evalset.is_ood), "eval_data": evalset.source, "eval_hash": evalset.data_hash}
        out = save_variant(Path(args.out_root) / f"{model_dir.name}-{variant.name}", variant, vcard, model_dir,
                           card, verdict, metrics)
        rows.append({"variant": variant.name, "folder": str(out), "size_mb": variant.size_mb,
                     "auroc": verdict.auroc, "aupr_out": verdict.aupr_out, "d_aupr_out_pts": verdict.delta_aupr_out,
                     "guard": "FLAGGED" if verdict.flagged else "ok"})
    print(format_table(rows, ["variant", "folder", "size_mb", "auroc", "aupr_out", "d_aupr_out_pts", "guard"]))
    return 0
