"""`ood-monitor bench vae`: per-frame cost of the detector stage with the shipped models, side by side
in one run: one deterministic encoder pass, 30 MC-dropout samples with the cached trunk (`mc30`) and
without (`mc30-uncached`, 30 full passes as one batch: the cost in arXiv 2403.01076), and the whole per-frame
`pipeline` (640x480 frame -> preprocess + DIS flow -> image and flow encoders -> conformal alarms); and one
flow frame scored as the flow model's card says (`flow`) beside the motion term's statistics alone
(`flow-motion-term`, what `posterior_motion` adds to `posterior_deviation`)."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def register(stages: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = stages.add_parser("vae", help="ms per frame: encoders, MC dropout (cached vs not), whole pipeline")
    p.add_argument("--image-model", type=Path, default=Path("models/vae_image"))
    p.add_argument("--flow-model", type=Path, default=Path("models/vae_flow"))
    p.add_argument("--frames", type=int, default=200, help="frames per row (default 200)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2: the whole CPU here)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="the encoders' device (the detector nodes' `device` with backend torch)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import cv2
    import torch

    from ood_monitor.cli.bench_preprocess import camera_frames
    from ood_monitor.core.benchmark import format_table, machine_info, summarize_ms, time_ms, write_report
    from ood_monitor.core.detector import VaeDetector
    from ood_monitor.core.model_dirs import resolve_model_dir
    from ood_monitor.core.model_input import FrameConfig
    from ood_monitor.core.motion import motion_residual_features
    from ood_monitor.core.preprocess import PreprocessConfig, Preprocessor
    from ood_monitor.core.uncertainty import full_pass_scores
    from ood_monitor.core.vae.dataset import model_input

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    n = 30 if args.quick else args.frames
    image_dir, flow_dir = resolve_model_dir(args.image_model), resolve_model_dir(args.flow_model)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but torch finds no CUDA GPU here")
    image_det = VaeDetector.from_model_dir(image_dir, kind="image", device=args.device)
    flow_det = VaeDetector.from_model_dir(flow_dir, kind="flow", device=args.device)
    mc_det = VaeDetector.from_model_dir(image_dir, kind="image", mc_samples=30, device=args.device)
    h, w = image_det.card.config.height, image_det.card.config.width
    frames = camera_frames(n + 4)
    pre = Preprocessor(PreprocessConfig(frame=FrameConfig(w, h)))
    prepared = [pre.process(f, i * 66_666_667) for i, f in enumerate(frames)]
    images = [r.image for r in prepared]
    flows = [r.flow for r in prepared if r.flow is not None]
    x = torch.from_numpy(model_input(images[1][None], "image", 1.0)).to(args.device)
    texture = mc_det.score.frame_features(images[1][None])

    def pipeline(i: int) -> None:
        r = pipe_pre.process(frames[i % len(frames)], (1000 + i) * 66_666_667)
        image_det.score_frame(r.image)
        if r.flow is not None:
            flow_det.score_frame(r.flow)

    pipe_pre = Preprocessor(PreprocessConfig(frame=FrameConfig(w, h)))
    timings = {
        "deterministic": time_ms(lambda i: image_det.score_frame(images[i % len(images)]), n),
        "mc30": time_ms(lambda i: mc_det.score_frame(images[i % len(images)]), n),
        "mc30-uncached": time_ms(lambda i: full_pass_scores(mc_det.encoder, x, mc_det.score, 30, texture), n),
        "pipeline": time_ms(pipeline, n),
        "flow": time_ms(lambda i: flow_det.score_frame(flows[i % len(flows)]), n),
        "flow-motion-term": time_ms(lambda i: motion_residual_features(flows[i % len(flows)][None]), n),
    }
    base = float(np.mean(timings["deterministic"]))
    notes = {"deterministic": "image encoder once + conformal", "mc30": "trunk once, dropout tail x30 (batch)",
             "mc30-uncached": "30 full encoder passes (batch)", "pipeline": "preprocess+flow+both encoders+alarms",
             "flow": f"flow encoder once + {flow_det.card.score} + conformal",
             "flow-motion-term": "motion and warp-residual statistics alone"}
    rows = [{"variant": k, **summarize_ms(v), "x_deterministic": float(np.mean(v)) / base, "what": notes[k]}
            for k, v in timings.items()]
    print(format_table(rows, ["variant", "ms_per_frame", "ms_p95", "x_deterministic", "what"]))
    write_report(rows, machine_info(torch_threads=args.threads, device=args.device), args.json,
                 models={"image": str(image_dir), "flow": str(flow_dir)})
    if args.json:
        print(f"wrote {args.json}")
    return 0
