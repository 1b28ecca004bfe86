"""`ood-monitor data demo --out DIR`: generate the labelled off-road demo dataset (bags and PNG folders)."""
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
