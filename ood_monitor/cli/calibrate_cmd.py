"""`ood-monitor calibrate`: score nominal recordings with a trained VAE, store the sorted scores (the
conformal calibration) in its config.json, and choose the alarm thresholds for a false-alarm target on
held-out blocks of the same recordings (core/alarm_calibration.py), so a detector node starts with
settings measured on the camera it watches."""
from __future__ import annotations

import argparse
import os
import sys

from ood_monitor.cli.label_options import add_label_options, label_spec
from ood_monitor.cli.train_cmd import SCORES

MIN_FRAMES = 20
TAILS = ("pareto", "none")       # core.conformal.TAILS (kept import-free here)
DEFAULT_TAIL = "pareto"
P_FLOORS = {"pareto": 1e-6, "none": 0.005}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="store conformal calibration scores and alarm thresholds in a model's "
                                         "config.json", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="model directory, e.g. models/vae_image")
    p.add_argument("--data", required=True, nargs="+",
                   help="nominal bags or image folders, not the training data; several recordings (other "
                        "places, times, days) make the calibration cover ordinary nominal variation")
    p.add_argument("--image-topic", default=None, help="image topic (default: the one used in training)")
    p.add_argument("--score", choices=SCORES, default=None,
                   help="switch the model's nonconformity score before calibrating (default: keep it)")
    p.add_argument("--max-frames", type=int, default=None, help="use at most this many frames per recording")
    p.add_argument("--false-alarms-per-1000", type=float, default=1.0,
                   help="alarm target: alarmed nominal frames per 1000 that the thresholds allow")
    p.add_argument("--blocks", type=int, default=5,
                   help="contiguous blocks the nominal frames are cut into: each block's alarms are traced "
                        "with the other blocks as calibration")
    p.add_argument("--cusum-delta", type=float, default=2.0, help="CUSUM drift per frame (> 1)")
    p.add_argument("--tail", choices=TAILS, default=DEFAULT_TAIL,
                   help="p-values of scores beyond the largest calibration score: pareto keeps them falling "
                        "along the calibration's Pareto tail (a frame far past every nominal one gets a far "
                        "smaller p-value than one just past), none stops them at 1/(n+1)")
    p.add_argument("--p-floor", type=float, default=None,
                   help=f"smallest p-value a frame can get (default {P_FLOORS['pareto']:g} with the pareto tail, "
                        f"{P_FLOORS['none']:g} without)")
    p.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1), help="torch CPU threads")
    add_label_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ood_monitor.core.alarm_calibration import AlarmTarget, calibrate_alarms
    from ood_monitor.core.vae.io import load_encoder, write_card

    torch.set_num_threads(max(1, args.threads))
    encoder, card = load_encoder(args.model)
    if args.score:
        card.score = args.score
        card.nonconformity  # noqa: B018 -- ValueError now if the card lacks the training statistics
    target = AlarmTarget(false_alarms_per_1000=args.false_alarms_per_1000, blocks=args.blocks,
                         cusum_delta=args.cusum_delta, tail=args.tail,
                         p_floor=P_FLOORS[args.tail] if args.p_floor is None else args.p_floor)
    scores, sequence, sources = score_recordings(args, encoder, card)
    if len(scores) < MIN_FRAMES:
        raise ValueError(f"only {len(scores)} calibration frames: p-values need at least {MIN_FRAMES} (better 200+)")
    alarms = calibrate_alarms(scores, sequence, target)
    order = np.sort(scores)
    card.calibration = {"scores": [float(s) for s in order], "source": sources[0]["path"] if len(sources) == 1 else "",
                        "hash": sources[0]["hash"] if len(sources) == 1 else "", "sources": sources,
                        "frames": len(order), "selected_dims": card.selected_dims, "score": card.score,
                        "command": " ".join(["ood-monitor", *sys.argv[1:]])}
    card.alarm = alarms.to_dict(target)
    write_card(args.model, card)
    print_summary(args.model, card, order, alarms, target)
    return 0


def score_recordings(args: argparse.Namespace, encoder, card) -> tuple:
    """Nominal scores of every --data recording in stream order, the recording index of each frame, and
    what was read from where. Refuses the model's own training data."""
    import numpy as np

    from ood_monitor.cli.provenance import note_if_foreign
    from ood_monitor.core.detector import score_frameset
    from ood_monitor.core.model_input import FrameConfig
    from ood_monitor.core.vae.dataset import DEFAULT_IMAGE_TOPIC, load_frames

    topic = args.image_topic or card.data.get("image_topic", DEFAULT_IMAGE_TOPIC)
    cfg = card.config
    scores, sequence, sources = [], [], []
    for i, data in enumerate(args.data):
        note_if_foreign(args.model, card.data, data)
        print(f"reading {card.kind} frames from {data} ({cfg.height}x{cfg.width}) ...", flush=True)
        frames = load_frames(data, card.kind, FrameConfig(cfg.width, cfg.height), topic, limit=args.max_frames,
                             progress=lambda m: print(m, flush=True), labels=label_spec(args))
        if card.data.get("hash") == frames.data_hash:
            raise ValueError(f"{data} is the training data of {args.model}: calibrate on a separate recording "
                             f"or the p-values will be too large")
        if frames.is_ood.any():
            print(f"ignoring {int(frames.is_ood.sum())} frames labelled OOD in {data}", flush=True)
            frames = frames.subset(~frames.is_ood)
        scores.append(score_frameset(encoder, card, frames))
        sequence.append(np.full(len(frames), i))
        sources.append({"path": str(data), "hash": frames.data_hash, "frames": len(frames)})
    return np.concatenate(scores), np.concatenate(sequence), sources


def print_summary(model: str, card, scores, alarms, target) -> None:
    import numpy as np

    s = alarms.settings
    q = np.percentile(scores, [50, 95, 99])
    print(f"stored {len(scores)} {card.score} calibration scores in {model}/config.json "
          f"(median {q[0]:.2f}, p95 {q[1]:.2f}, p99 {q[2]:.2f})")
    if s["tail"] == "pareto":
        print(f"p-values past the largest score ({scores[-1]:.2f}) follow a Pareto tail of index {s['tail_index']:.2f}: "
              f"a score twice as large gets p = {alarms.p_min:.2g} (floor {s['p_floor']:g})")
    else:
        print(f"smallest p-value {alarms.p_min:.4f} (1/(n+1) or the floor {s['p_floor']:g})")
    print(f"coverage: {alarms.coverage:.1%} of held-out nominal frames have p < 0.05 (5% when the calibration "
          f"covers the footage); per block {', '.join(f'{c:.0%}' for c in alarms.block_coverage)}")
    print(f"alarms for {target.false_alarms_per_1000:g} false alarms per 1000 frames: martingale window "
          f"{s['window']}, threshold {s['martingale_threshold']:.2f} (reachable {alarms.reachable_log_martingale:.2f}; "
          f"shortest episode caught {alarms.shortest_episode['martingale']} frames); CUSUM delta "
          f"{s['cusum_delta']:g}, threshold {s['cusum_threshold']:.2f} (shortest episode "
          f"{alarms.shortest_episode['cusum']} frames); held-out false alarms per 1000: "
          f"martingale {alarms.heldout_false_alarms_per_1000['martingale']:.1f}, "
          f"CUSUM {alarms.heldout_false_alarms_per_1000['cusum']:.1f}")
    for warning in alarms.warnings:
        print(f"WARNING: {warning}")
