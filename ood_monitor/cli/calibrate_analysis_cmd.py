"""`ood-monitor calibrate-analysis`: fit the analysis stage's nominal statistics (core/analysis/nominal.py)
on nominal frames re-synthesized by the deployed synthesizer, with the analysis settings analysis_node
runs (--params), and write them where the node finds them (models/analysis_nominal by default). The
frames are read here; their re-synthesis and discrepancy (the per-frame work) run in this process or,
with `--engine ray`, on actors that load the synthesizer and the analysis once; the fit runs here."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ood_monitor.cli.engine_options import add_engine_options
from ood_monitor.cli.label_options import add_label_options, label_spec

RECOMMENDED_FRAMES = 100


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate-analysis", help="fit the anomaly-mask analysis's nominal discrepancy statistics",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default="demo_data/bags/calibration",
                   help="nominal bag or image folder (a calibration split: not the test data); frames labelled "
                        "OOD or with anomaly pixels are skipped")
    p.add_argument("--synthesizer", default="models/latent_dit", help="the synthesizer the node uses")
    p.add_argument("--params", type=Path, default=Path("config/default.yaml"),
                   help="analysis and sampling settings: this ROS parameter file's analysis_node and "
                        "synthesizer_node sections")
    p.add_argument("--out", default="models/analysis_nominal", help="output folder")
    p.add_argument("--image-topic", default="/camera/image_raw")
    p.add_argument("--every", type=int, default=2, help="use every n-th frame (neighbours are near-duplicates)")
    p.add_argument("--max-frames", type=int, default=300, help="use at most this many frames")
    p.add_argument("--clusters", type=int, default=12, help="appearance clusters (k-means on Lab colour)")
    p.add_argument("--z-scale", type=float, default=23.0,
                   help="standard deviations that map to 1.0; 23 puts the decision point tuned on seeds 11/12 "
                        "(scripts/tune_analysis.py --current-only) at confidence 0.5 with the shipped "
                        "confidence_gain 2.5, the same point as without statistics")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                   help="torch CPU threads (--engine ray: of each actor)")
    add_engine_options(p, "the frames re-synthesized on Ray actors that load the synthesizer once",
                       "synthesis actors")
    add_label_options(p)
    p.set_defaults(func=run)


def nominal_frames(args: argparse.Namespace, size: int):
    """Prepared model-size frames of the nominal part of --data."""
    from itertools import islice

    from ood_monitor.core.model_input import FrameConfig, prepare_frame
    from ood_monitor.data.labeled_frames import iter_frames

    cfg = FrameConfig(size, size)
    frames = (f for f in iter_frames(args.data, image_topic=args.image_topic, labels=label_spec(args))
              if not f.is_ood and (f.mask is None or not f.mask.any()))
    return [prepare_frame(f.image, cfg) for f in islice(frames, 0, args.max_frames * args.every, args.every)]


def load_stage(synthesizer: str, params: Path | None) -> tuple:
    """(synthesizer, analyzer without nominal statistics, features description) as the nodes run them
    with `params`: what this process or each Ray actor loads once."""
    from ood_monitor.cli.evaluate_cmd import mask_analysis, node_parameters
    from ood_monitor.core.diffusion.synthesizer import synthesizer_from_params
    from ood_monitor.core.model_dirs import resolve_model_dir

    analyzer, _, features = mask_analysis(argparse.Namespace(params=params, segmenter=None, sam_checkpoint=None,
                                                             features=None), nominal=False)  # fit on the raw one
    # the synthesizer as synthesizer_node runs it with --params: the statistics describe its errors
    synth = synthesizer_from_params(resolve_model_dir(synthesizer), node_parameters(params, "synthesizer_node"))
    return synth, analyzer, features


def frame_discrepancy(stage: tuple, image):
    """The raw discrepancy of one nominal frame and its re-synthesis (the per-frame work)."""
    synth, analyzer, _ = stage
    return analyzer.discrepancy(image, synth.synthesize(image))


def discrepancies(args: argparse.Namespace, stage: tuple, params: Path | None, images: list) -> list:
    """frame_discrepancy of every image, in order: here, or on --workers Ray actors."""
    import time
    from functools import partial

    if getattr(args, "engine", "local") == "ray":
        from ood_monitor.fleet.ray_engine import map_frames_on_ray

        print(f"  re-synthesizing on {args.workers} Ray actor(s) ...", flush=True)
        return map_frames_on_ray(images, partial(load_stage, args.synthesizer, params), frame_discrepancy,
                                 args.workers, args.address, args.threads)
    start, out = time.perf_counter(), []
    for n, image in enumerate(images, 1):
        out.append(frame_discrepancy(stage, image))
        if n % 50 == 0:
            print(f"  {n}/{len(images)} synthesized ({time.perf_counter() - start:.0f} s)", flush=True)
    return out


def run(args: argparse.Namespace) -> int:
    import torch

    from ood_monitor.core.analysis.nominal import NominalDiscrepancy

    torch.set_num_threads(max(1, args.threads))
    if args.every < 1 or args.max_frames < 2:
        raise ValueError("--every must be >= 1 and --max-frames >= 2")
    params = args.params if args.params.exists() else None
    stage = load_stage(args.synthesizer, params)  # here too with Ray: the frame size and what the stats record
    synth, analyzer, features = stage
    images = nominal_frames(args, synth.image_size)
    if len(images) < 2:
        raise ValueError(f"{args.data}: fewer than 2 nominal frames (frames labelled OOD or masked are skipped)")
    print(f"{len(images)} nominal frames from {args.data}; synthesizer {args.synthesizer}; features {features}",
          flush=True)
    if len(images) < RECOMMENDED_FRAMES:
        print(f"WARNING: {len(images)} frames for per-position statistics and {args.clusters} colour clusters: "
              f"with fewer than {RECOMMENDED_FRAMES} frames the nominal spread is under-estimated and masks get "
              f"noisier (more nominal frames, or a smaller --every, help)", flush=True)
    pairs = list(zip(images, discrepancies(args, stage, params, images), strict=True))
    info = {"data": str(args.data), "synthesizer": str(args.synthesizer), "synthesizer_sha256": synth.model_hash,
            "sampling": {**synth.guidance.to_dict(), "backend": synth.backend},
            "discrepancy": dict(vars(analyzer.cfg.discrepancy)),
            "params": str(params or "node defaults"), "command": "ood-monitor " + " ".join(sys.argv[1:])}
    stats = NominalDiscrepancy.fit(pairs, k=args.clusters, z_scale=args.z_scale, info=info)
    out = stats.save(args.out)
    print(f"wrote {out}: position maps {stats.size[0]}x{stats.size[1]}, {len(stats.centers)} clusters, "
          f"nominal discrepancy mean {float(stats.loc_mean.mean()):.3f}; analysis_node loads it with "
          f"nominal_stats: auto (from <models_dir>/analysis_nominal) or nominal_stats: {out}")
    return 0
