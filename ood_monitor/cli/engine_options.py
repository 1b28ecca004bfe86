"""`--engine local|ray`, `--workers`, `--address` (and `--chunk-frames` where a recording's frames can be
split), shared by `train`, `evaluate`, `calibrate` and `calibrate-analysis`, so every command that runs
on Ray is asked for it the same way."""
from __future__ import annotations

import argparse


def add_engine_options(p: argparse.ArgumentParser, ray_help: str, workers_help: str, chunks: bool = False) -> None:
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help=f"local: this process; ray: {ray_help} (ray.init() in this process, or --address)")
    p.add_argument("--workers", type=int, default=2, help=f"--engine ray: {workers_help}")
    p.add_argument("--address", default=None, help="--engine ray: Ray cluster to attach to ('auto' after "
                                                   "`ray start --head`); default: start Ray in this process")
    if chunks:
        p.add_argument("--chunk-frames", type=int, default=None, metavar="N",
                       help="--engine ray: one read task per N frames of a recording (each also reads the frame "
                            "before it, for the flow), so one long bag is scored by several workers; default: "
                            "one task per recording. Scores and alarms equal an unchunked run's")
