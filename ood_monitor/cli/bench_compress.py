"""`ood-monitor bench compress`: the compression table of arXiv 2409.00880 (docs/methods.md#compression) on
our data, every row measured in one run: size, CPU ms/frame (batch 1, same threads for all, rows timed in
interleaved rounds so a busy shared CPU slows every row alike), GPU ms/frame when CUDA exists, AUROC and
AUPR-out on the labelled eval split and the delta to fp32. All float and int8 rows run on ONNX Runtime;
`fp32-torch` (today's node) and `int8-torchao` (the int8 path not chosen, see core/compress/detector_quantization.py) and
`int8-all-layers` (the first conv block quantized too) are there for comparison. Threads default to 1, the
detector node's `inference_threads` in config/default.yaml."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def register(stages: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from ood_monitor.cli.compress_cmd import floats

    p = stages.add_parser("compress", help="int8/fp16/prune/kd variants: size, CPU/GPU ms, AUROC, AUPR-out")
    p.add_argument("--model", type=Path, default=Path("models/vae_image"))
    p.add_argument("--data-train", default="demo_data/bags/train")
    p.add_argument("--data-eval", default="demo_data/bags/test")
    p.add_argument("--ratios", type=floats, default=(0.3, 0.5))
    p.add_argument("--frames", type=int, default=200, help="timed frames per row (default 200)")
    p.add_argument("--kd-ratio", type=float, default=None,
                   help="pruning ratio the kd student starts from (default: core.compress.KD_RATIO, 0.7)")
    p.add_argument("--steps", type=int, default=3000, help="distillation steps per pruned/kd model")
    p.add_argument("--time-limit", type=float, default=180.0, help="seconds per distillation run")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for every row (default 1: the detector node's inference_threads)")
    p.set_defaults(func=run)
    return p


def interleaved_ms(fns: dict[str, object], x: np.ndarray, frames: int, rounds: int = 10) -> dict[str, float]:
    """Median batch-1 ms per row, rows alternating in `rounds` rounds."""
    from ood_monitor.core.benchmark import time_ms

    per = max(1, frames // rounds)
    samples: dict[str, list[np.ndarray]] = {k: [] for k in fns}
    for r in range(rounds):
        for name, fn in fns.items():
            samples[name].append(time_ms(lambda i, f=fn, r=r: f(x[(r * per + i) % len(x)][None]), per, warmup=2))
    return {k: float(np.median(np.concatenate(v))) for k, v in samples.items()}


def gpu_ms(variants: list, x: np.ndarray, frames: int) -> dict[str, float]:
    """Batch-1 ms on CUDA (torch; fp16 rows in half precision) for float variants; {} without CUDA."""
    import copy

    import torch

    from ood_monitor.core.runtime import torch_callables

    if not torch.cuda.is_available():
        return {}
    fns = {}
    for v in variants:
        if v.encoder is not None:
            trunk, tail = torch_callables(copy.deepcopy(v.encoder).float(), "cuda", "fp16" if v.precision == "fp16" else "fp32")
            fns[v.name] = lambda b, t=trunk, s=tail: s(t(b))
    return interleaved_ms(fns, x, frames)


def run(args: argparse.Namespace) -> int:
    import torch

    from ood_monitor.cli.compress_cmd import load_split
    from ood_monitor.core.benchmark import format_table, machine_info, write_report
    from ood_monitor.core.compress import (
        KD_RATIO,
        CompressConfig,
        DistillConfig,
        build_variants,
        calibration_frames,
        frame_scores,
        int8_variant,
        scoring_card,
    )
    from ood_monitor.core.compress.detector_quantization import quantize_torch_fx
    from ood_monitor.core.detector_metrics import aupr_out, auroc
    from ood_monitor.core.model_dirs import resolve_model_dir
    from ood_monitor.core.vae.io import load_encoder

    torch.set_num_threads(args.threads)
    limit, steps = (300, 40) if args.quick else (None, args.steps)
    frames = 60 if args.quick else args.frames
    encoder, card = load_encoder(resolve_model_dir(args.model))
    train = load_split(args.data_train, card, limit)
    evalset = load_split(args.data_eval, card, 400 if args.quick else None)
    cfg = CompressConfig(ratios=args.ratios, kd_ratio=args.kd_ratio or KD_RATIO, threads=args.threads,
                         distill=DistillConfig(steps=steps, time_limit_s=15.0 if args.quick else args.time_limit))
    variants = build_variants(encoder, train, card.flow_scale, cfg, log=lambda m: print(m, flush=True))
    x = evalset.inputs(slice(0, 64), card.flow_scale)
    fx = quantize_torch_fx(encoder.trunk, train.inputs(slice(0, 64), card.flow_scale))

    @torch.inference_mode()
    def torch_fp32(b: np.ndarray) -> object:
        return encoder(torch.from_numpy(b))

    @torch.inference_mode()
    def torchao_int8(b: np.ndarray) -> object:
        return encoder.tail(fx(torch.from_numpy(b)))

    all_layers = int8_variant(variants[0], calibration_frames(train, card.flow_scale, cfg.calib_frames),
                              keep_first=False, name="int8-all-layers")
    cpu_rows = [v for v in variants if v.precision != "fp16"]
    fns = {v.name: v.encoder_fn(args.threads) for v in cpu_rows}
    cpu = interleaved_ms({**fns, "int8-all-layers": all_layers.encoder_fn(args.threads), "fp32-torch": torch_fp32,
                          "int8-torchao": torchao_int8}, x, frames)
    gpu = gpu_ms(variants, x, frames)
    scores = {v.name: frame_scores(v.encoder_fn(args.threads), evalset, scoring_card(card, v, train, args.threads))
              for v in variants}  # each variant with its own latent statistics, as its folder scores
    y = evalset.is_ood
    base_auroc, base_aupr = auroc(scores["fp32"], y), aupr_out(scores["fp32"], y)
    rows = []
    for v in variants:
        a, p = auroc(scores[v.name], y), aupr_out(scores[v.name], y)
        rows.append({"variant": v.name, "size_mb": v.size_mb, "ms_per_frame": cpu.get(v.name),
                     "x_fp32": cpu["fp32"] / cpu[v.name] if v.name in cpu else None, "gpu_ms_per_frame": gpu.get(v.name),
                     "auroc": a, "aupr_out": p, "d_auroc": a - base_auroc, "d_aupr_out_pts": 100 * (p - base_aupr),
                     "params": v.info.get("params"), "widths": v.info.get("widths"),
                     "runtime": "torch half (CPU: scores only)" if v.precision == "fp16" else "onnxruntime"})
    for name, what in (("int8-all-layers", "onnxruntime int8, first conv block quantized too"),
                       ("fp32-torch", "torch fp32 (node today)"), ("int8-torchao", "torch.ao FX int8 trunk")):
        rows.append({"variant": name, "ms_per_frame": cpu[name], "x_fp32": cpu["fp32"] / cpu[name], "runtime": what})
    print(format_table(rows, ["variant", "size_mb", "ms_per_frame", "x_fp32", "gpu_ms_per_frame", "auroc",
                              "aupr_out", "d_auroc", "d_aupr_out_pts", "runtime"]))
    write_report(rows, machine_info(torch_threads=args.threads, onnxruntime_threads=args.threads), args.json,
                 model=str(args.model), eval_data=evalset.source, eval_frames=len(evalset), train_frames=len(train),
                 distill_steps=steps, distill_time_limit_s=cfg.distill.time_limit_s)
    if args.json:
        print(f"wrote {args.json}")
    return 0
