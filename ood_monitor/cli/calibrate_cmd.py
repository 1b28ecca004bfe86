"""`ood-monitor calibrate`: score nominal recordings with a trained VAE, store the sorted scores (the
conformal calibration) in its config.json, and choose the alarm thresholds for a false-alarm target on
held-out blocks of the same recordings (core/alarm_calibration.py), so a detector node starts with
settings measured on the camera it watches. The frames are scored by the fleet engines evaluate uses
(`--engine local|ray`); the calibration itself runs here on the gathered scores, whichever engine."""
from __future__ import annotations

import argparse
import os
import sys

from ood_monitor.cli.engine_options import add_engine_options
from ood_monitor.cli.label_options import add_label_options, label_spec
from ood_monitor.cli.train_cmd import SCORES

MIN_FRAMES = 20
TAILS = ("pareto", "none")       # core.conformal.TAILS (kept import-free here)
DEFAULT_TAIL = "pareto"
P_FLOORS = {"pareto": 1e-5, "none": 0.005}
# chosen on the tuning recordings (docs/real_footage.md#score-tolerance): the image detector's false alarms
# per 1000 clean frames fell from 13-584 to 0-24; the flow detector gained nothing from it
DEFAULT_TOLERANCE = {"image": 0.0, "flow": 1.0}  # 0: auto


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="store conformal calibration scores and alarm thresholds in a model's "
                                         "config.json", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="model directory, e.g. models/vae_image")
    p.add_argument("--data", required=True, nargs="+",
                   help="nominal bags or image folders, not the training data; several recordings (other "
                        "places, times, days) make the calibration cover ordinary nominal variation; globs "
                        "are expanded (quote them)")
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
    p.add_argument("--score-tolerance", type=score_tolerance, default=None, metavar="K|auto",
                   help="compare scores with the calibration as score / K: nominal stretches scoring up to K "
                        "times the calibration's are not strange yet. auto: the most a contiguous block's top "
                        "score went past every block before it; 1: none; K >= 1: fixed (default: auto for "
                        "image models, 1 for flow models; docs/methods.md#score-tolerance)")
    p.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1),
                   help="torch CPU threads (--engine ray: of each actor)")
    add_engine_options(p, "a Ray Data pipeline, one read task per recording (or --chunk-frames), actors that "
                          "load the model once", "scoring actors", chunks=True)
    add_label_options(p)
    p.set_defaults(func=run)


def score_tolerance(text: str) -> float:
    """`--score-tolerance`: a factor >= 1, or auto (0: measured between the blocks)."""
    if text == "auto":
        return 0.0
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number >= 1 or auto, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ood_monitor.core.alarm_calibration import AlarmTarget, calibrate_alarms, calibrate_fused
    from ood_monitor.core.model_dirs import resolve_model_dir
    from ood_monitor.core.nonconformity import FUSED
    from ood_monitor.core.vae.io import read_card, write_card
    from ood_monitor.fleet.scoring import ModelScorer

    method = args.score or read_card(resolve_model_dir(args.model)).score
    parts = FUSED.get(method, (method,))
    scorers = [ModelScorer(args.model, part, calibrated=False) for part in parts]  # ValueError now if a part lacks statistics
    card = scorers[0].card
    card.score = method
    target = AlarmTarget(false_alarms_per_1000=args.false_alarms_per_1000, blocks=args.blocks,
                         cusum_delta=args.cusum_delta, tail=args.tail,
                         score_tolerance=DEFAULT_TOLERANCE[card.kind] if args.score_tolerance is None
                         else args.score_tolerance,
                         p_floor=P_FLOORS[args.tail] if args.p_floor is None else args.p_floor)
    columns = []
    for part, scorer in zip(parts, scorers, strict=True):
        scores, sequence, sources, fleet = score_recordings(argparse.Namespace(**{**vars(args), "score": part}), scorer)
        columns.append(scores)
    if len(scores) < MIN_FRAMES:
        raise ValueError(f"only {len(scores)} calibration frames: p-values need at least {MIN_FRAMES} (better 200+)")
    fusion = None
    if len(parts) > 1:  # a fused score: each part on its own scale, then one calibration of the larger
        measured = target.score_tolerance == 0.0
        fusion, scores, target, alarms = calibrate_fused(np.column_stack(columns), sequence, target)
        card.photometric = {**card.photometric, "parts": fusion.to_dict(measured)}
    else:
        alarms = calibrate_alarms(scores, sequence, target)
    order = np.sort(scores)
    card.calibration = {"scores": [float(s) for s in order], "source": sources[0]["path"] if len(sources) == 1 else "",
                        "hash": sources[0]["hash"] if len(sources) == 1 else "", "sources": sources,
                        "frames": len(order), "selected_dims": card.selected_dims, "score": card.score,
                        "command": " ".join(["ood-monitor", *sys.argv[1:]])}
    card.alarm = alarms.to_dict(target)
    write_card(args.model, card)
    if fusion is not None:
        print(f"{method}: parts {', '.join(parts)} on their own scales: tolerances "
              f"{', '.join(f'{k:.2f}' for k in fusion.tolerances)} times their largest calibration scores "
              f"({', '.join(f'{m:.2f}' for m in fusion.maxima)})")
    print_summary(args.model, card, order, alarms, target)
    if fleet.failed:  # the rest is calibrated; the exit status says the calibration lacks those inputs
        print(fleet.failure_note("calibrate"), file=sys.stderr)
        return 1
    return 0


def score_recordings(args: argparse.Namespace, scorer) -> tuple:
    """Nominal scores of every --data recording in stream order, the recording index of each frame, what
    was read from where, and the engine's result (failed inputs). Refuses the model's own training data."""
    import numpy as np

    from ood_monitor.cli.evaluate_cmd import input_paths, run_engine
    from ood_monitor.cli.provenance import note_if_foreign
    from ood_monitor.core.vae.dataset import DEFAULT_IMAGE_TOPIC
    from ood_monitor.fleet.engines import ScoringJob

    card, cfg = scorer.card, scorer.card.config
    paths = input_paths(args)
    for path in paths:
        note_if_foreign(args.model, card.data, path)
    job = ScoringJob([str(scorer.path)], args.image_topic or card.data.get("image_topic", DEFAULT_IMAGE_TOPIC),
                     labels=label_spec(args), score=args.score, limit=args.max_frames,
                     chunk_frames=getattr(args, "chunk_frames", None))
    print(f"scoring {card.kind} frames ({cfg.height}x{cfg.width}) of {len(paths)} recording(s), engine "
          f"{getattr(args, 'engine', 'local')} ...", flush=True)
    fleet = run_engine(args, paths, job, [scorer])
    scores, sequence, sources = [], [], []
    for i, path in enumerate(fleet.sources):
        if path not in fleet.per_source:
            continue
        table = fleet.per_source[path][0]
        if card.data.get("hash") == table.data_hash:
            raise ValueError(f"{path} is the training data of {args.model}: calibrate on a separate recording "
                             f"or the p-values will be too large")
        if table.is_ood.any():
            print(f"ignoring {int(table.is_ood.sum())} frames labelled OOD in {path}", flush=True)
            table = table.subset(~table.is_ood)
        scores.append(table.score)
        sequence.append(np.full(len(table), i))
        sources.append({"path": path, "hash": table.data_hash, "frames": len(table)})
    unhashed = [s["path"] for s in sources if not s["hash"]]
    if unhashed:
        print(f"note: {len(unhashed)} recording(s) read in chunks carry no data hash, so calibrate cannot check "
              f"that they are not the model's training data: {', '.join(unhashed)}", flush=True)
    empty = [np.zeros(0)]  # every input read was empty: the frame count check says so
    return np.concatenate(scores or empty), np.concatenate(sequence or empty), sources, fleet


def print_summary(model: str, card, scores, alarms, target) -> None:
    import numpy as np

    from ood_monitor.core.nonconformity import FUSED

    s = alarms.settings
    q = np.percentile(scores, [50, 95, 99])
    print(f"stored {len(scores)} {card.score} calibration scores in {model}/config.json "
          f"(median {q[0]:.2f}, p95 {q[1]:.2f}, p99 {q[2]:.2f})")
    if s["tail"] == "pareto":
        print(f"p-values past the largest score ({scores[-1]:.2f}) follow a Pareto tail of index {s['tail_index']:.2f}: "
              f"a score twice as large gets p = {alarms.p_min:.2g} (floor {s['p_floor']:g})")
    else:
        print(f"smallest p-value {alarms.p_min:.4f} (1/(n+1) or the floor {s['p_floor']:g})")
    if s["score_tolerance"] > 1.0:
        how = ("measured between the blocks" if target.score_tolerance == 0.0 else
               "the smaller of the parts'" if card.score in FUSED else
               "--score-tolerance")
        print(f"score tolerance {s['score_tolerance']:.2f} ({how}): scores up to {s['score_tolerance'] * scores[-1]:.2f} "
              f"count as within the calibration's range")
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
