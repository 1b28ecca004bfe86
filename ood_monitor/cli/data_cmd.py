"""`ood-monitor data demo --out DIR`: generate the labelled off-road demo dataset (bags and PNG folders).
`ood-monitor data real --recording VIDEO ... --out DIR`: build the real-footage benchmark from local copies
of public recordings (docs/real_footage.md names them)."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="datasets: generate the demo data")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    demo = data_sub.add_parser("demo", help="generate the labelled off-road demo dataset (train/calibration/test)")
    demo.add_argument("--out", type=Path, default=Path("demo_data"), help="output folder (default: demo_data)")
    demo.add_argument("--scale", type=float, default=1.0, help="multiply all frame counts (0.1 = tiny test set)")
    demo.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives identical images")
    demo.add_argument("--width", type=int, default=320, help="image width in pixels (default 320)")
    demo.add_argument("--height", type=int, default=240, help="image height in pixels (default 240)")
    demo.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap", help="rosbag2 storage (default mcap)")
    demo.add_argument("--jobs", type=int, default=2, help="splits generated in parallel processes (default 2)")
    demo.set_defaults(func=run_demo)
    register_real(data_sub)


def register_real(data_sub: argparse._SubParsersAction) -> None:
    from ood_monitor.real_world.benchmark import MOTION_KINDS
    from ood_monitor.real_world.corruptions import DEFAULT_CORRUPTIONS

    real = data_sub.add_parser(
        "real", help="build the real-footage benchmark (train/calibration/test folders) from camera recordings",
        description="Split each recording into train (first seconds), calibration (next seconds) and held-out "
                    "frames, and write a labelled test split of held-out blocks with corruptions "
                    "(imagecorruptions, albumentations), a change of scene (another recording), pasted real "
                    "objects with exact masks and motion anomalies made from the sequence. "
                    "docs/real_footage.md names the public recordings used and how to get them.")
    real.add_argument("--recording", type=Path, action="append", required=True, metavar="PATH",
                      help="a video file (.mp4/.avi/...) or a folder of images of one camera drive; repeat for more")
    real.add_argument("--scene", type=Path, action="append", default=[], metavar="PATH",
                      help="other footage for the change-of-scene episodes (default: the next --recording)")
    real.add_argument("--out", type=Path, default=Path("real_data"), help="output folder (default: real_data)")
    real.add_argument("--width", type=int, default=320, help="frame width in pixels (default 320; aspect kept)")
    real.add_argument("--fps", type=float, default=None, help="frame rate (default: the video's; folders 15)")
    real.add_argument("--train-seconds", type=float, default=5.0, help="first seconds: training (default 5)")
    real.add_argument("--calibration-seconds", type=float, default=2.0,
                      help="next seconds: calibration (default 2); the rest is held out for the test split")
    real.add_argument("--episode-frames", type=int, default=8, help="frames per OOD episode (default 8)")
    real.add_argument("--gap-frames", type=int, default=8, help="clean frames before and after each episode (default 8)")
    real.add_argument("--corruptions", default=",".join(DEFAULT_CORRUPTIONS),
                      help="comma-separated corruption names (imagecorruptions and albumentations)")
    real.add_argument("--severity", type=int, default=3, help="corruption severity 1-5 (default 3)")
    real.add_argument("--motion", default=",".join(MOTION_KINDS), help="motion anomalies (default: all)")
    real.add_argument("--seed", type=int, default=0, help="random seed (placement, order, corruption noise)")
    real.set_defaults(func=run_real)


def run_demo(args: argparse.Namespace) -> int:
    from ood_monitor.demo_world.generator import DemoConfig, generate

    config = DemoConfig(
        out=args.out, scale=args.scale, seed=args.seed, width=args.width, height=args.height,
        storage=args.storage, jobs=max(1, args.jobs),
    )
    dataset = generate(config)
    for split, info in dataset["splits"].items():
        print(f"  {split}: {info['frames']} frames -> {args.out / info['bag']}, {args.out / info['images']}")
    return 0


def run_real(args: argparse.Namespace) -> int:
    from ood_monitor.real_world.benchmark import RealFootageConfig, generate

    config = RealFootageConfig(
        out=args.out, recordings=tuple(args.recording), scene_sources=tuple(args.scene), width=args.width,
        fps=args.fps, train_seconds=args.train_seconds, calibration_seconds=args.calibration_seconds,
        episode_frames=args.episode_frames, gap_frames=args.gap_frames,
        corruptions=tuple(c.strip() for c in args.corruptions.split(",") if c.strip()), severity=args.severity,
        motion=tuple(m.strip() for m in args.motion.split(",") if m.strip()), seed=args.seed,
    )
    print(f"real-footage benchmark -> {args.out}")
    for summary in generate(config):
        hidden = [e.kind for e in summary.episodes if not e.visible]
        print(f"  {summary.name}: {args.out / summary.name}/{{train,calibration,test,held_out}}"
              + (f"; not visible at 128 px (< 3 grey levels): {', '.join(hidden)}" if hidden else ""))
    return 0
