"""`ood-monitor calibrate`: score a calibration split with a trained VAE and store the sorted scores in
its config.json, so a detector node starts without recomputing them."""
from __future__ import annotations

import argparse
import os
import sys

from ood_monitor.cli.label_options import add_label_options, label_spec
from ood_monitor.cli.train_cmd import SCORES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="store conformal calibration scores in a model's config.json",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="model directory, e.g. models/vae_image")
    p.add_argument("--data", required=True, help="calibration bag or image folder (not the training data)")
    p.add_argument("--image-topic", default=None, help="image topic (default: the one used in training)")
    p.add_argument("--score", choices=SCORES, default=None,
                   help="switch the model's nonconformity score before calibrating (default: keep it)")
    p.add_argument("--max-frames", type=int, default=None, help="use at most this many frames")
    p.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1), help="torch CPU threads")
    add_label_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ood_monitor.core.detector import score_frameset
    from ood_monitor.core.model_input import FrameConfig
    from ood_monitor.core.vae.dataset import DEFAULT_IMAGE_TOPIC, load_frames
    from ood_monitor.core.vae.io import load_encoder, write_card

    torch.set_num_threads(max(1, args.threads))
    encoder, card = load_encoder(args.model)
    if args.score:
        card.score = args.score
        card.nonconformity  # noqa: B018 -- ValueError now if the card lacks the training statistics
    topic = args.image_topic or card.data.get("image_topic", DEFAULT_IMAGE_TOPIC)
    cfg = card.config
    print(f"reading {card.kind} frames from {args.data} ({cfg.height}x{cfg.width}) ...", flush=True)
    frames = load_frames(args.data, card.kind, FrameConfig(cfg.width, cfg.height), topic,
                         limit=args.max_frames, progress=lambda m: print(m, flush=True), labels=label_spec(args))
    if card.data.get("hash") == frames.data_hash:
        raise ValueError(f"{args.data} is the training data of {args.model}: calibrate on a separate split "
                         f"or the p-values will be too large")
    if frames.is_ood.any():
        print(f"ignoring {int(frames.is_ood.sum())} frames labelled OOD", flush=True)
        frames = frames.subset(~frames.is_ood)
    scores = np.sort(score_frameset(encoder, card, frames))
    if len(scores) < 20:
        raise ValueError(f"only {len(scores)} calibration frames: p-values need at least 20 (better 200+)")
    card.calibration = {"scores": [float(s) for s in scores], "source": str(args.data),
                        "hash": frames.data_hash, "frames": len(scores), "selected_dims": card.selected_dims,
                        "score": card.score, "command": " ".join(["ood-monitor", *sys.argv[1:]])}
    write_card(args.model, card)
    q = np.percentile(scores, [50, 95, 99])
    print(f"stored {len(scores)} {card.score} calibration scores in {args.model}/config.json "
          f"(median {q[0]:.2f}, p95 {q[1]:.2f}, p99 {q[2]:.2f}; smallest p-value {1 / (len(scores) + 1):.4f})")
    return 0
