"""`ood-monitor bench preprocess`: decode + resize + DIS flow per frame, 640x480 camera -> 128 and 256,
on one core (the node's own work, through the node's own functions)."""
from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from ood_monitor.core.benchmark import format_table, machine_info, summarize_ms, write_report
from ood_monitor.core.flow import FlowConfig
from ood_monitor.core.model_input import FrameConfig
from ood_monitor.core.preprocess import PreprocessConfig, Preprocessor

VARIANTS = {"128px": (128, "raw"), "256px": (256, "raw"), "128px-jpeg": (128, "jpeg")}


def register(stages: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = stages.add_parser("preprocess", help="ms per frame: decode + resize + DIS flow, 640x480 -> 128/256")
    p.add_argument("--frames", type=int, default=290,
                   help="frames per variant (default 290; the demo calibration drives it renders have 300)")
    p.add_argument("--preset", default="ultrafast", help="DIS preset (default ultrafast)")
    p.add_argument("--threads", type=int, default=1, help="OpenCV threads (default 1: one core)")
    p.set_defaults(func=run)
    return p


def camera_frames(n: int, width: int = 640, height: int = 480, seed: int = 0) -> list[np.ndarray]:
    """The first n frames of the demo world's nominal calibration drives, rendered at camera size."""
    from itertools import chain, islice
    from pathlib import Path

    from ood_monitor.demo_world.generator import DemoConfig, plan_splits, render_drive

    cfg = DemoConfig(out=Path("."), seed=seed, width=width, height=height)
    drives = (render_drive(spec, cfg.camera, cfg.fps) for spec in plan_splits(cfg)["calibration"])
    frames = [f.image for f in islice(chain.from_iterable(drives), n)]
    if len(frames) < n:
        raise ValueError(f"the demo calibration drives have only {len(frames)} frames, {n} asked for")
    return frames


def residual_cost(frames: list[np.ndarray], size: int, preset: str) -> dict:
    """What the warp residual (ood/flow's third channel) adds to resize + flow: two preprocessors, with
    and without it, fed the same frames, alternating which runs first."""
    runs = {on: Preprocessor(PreprocessConfig(frame=FrameConfig(size, size), flow=FlowConfig(preset=preset, residual=on)))
            for on in (True, False)}
    ms: dict[bool, list[float]] = {True: [], False: []}
    for i, rgb in enumerate(frames):
        for on in ((True, False) if i % 2 else (False, True)):
            t0 = time.perf_counter()
            runs[on].process(rgb, i * 66_666_667)
            if i >= 3:
                ms[on].append((time.perf_counter() - t0) * 1e3)
    with_ms, without = float(np.median(ms[True])), float(np.median(ms[False]))
    return {"variant": f"flow-residual-{size}", "output": f"{size}x{size}", "with_residual_ms": with_ms,
            "without_ms": without, "residual_ms": with_ms - without, "ratio": with_ms / without}


def run(args: argparse.Namespace) -> int:
    from ood_monitor.ros.image import (
        array_to_compressed,
        array_to_image,
        compressed_to_array,
        image_to_array,
        to_rgb8,
    )

    cv2.setNumThreads(args.threads)
    n = 40 if args.quick else args.frames
    frames = camera_frames(n + 3)
    msgs = [array_to_image(f, "rgb8") for f in frames]
    jpegs = [array_to_compressed(f, fmt="jpeg") for f in frames]
    rows = []
    for name, (size, transport) in VARIANTS.items():
        pre = Preprocessor(PreprocessConfig(frame=FrameConfig(size, size), flow=FlowConfig(preset=args.preset)))
        parts = {"decode": [], "prepare_flow": []}
        for i in range(n + 3):
            t0 = time.perf_counter()
            if transport == "raw":
                rgb = to_rgb8(image_to_array(msgs[i]), msgs[i].encoding)
            else:
                rgb = compressed_to_array(jpegs[i], desired="rgb8")
            t1 = time.perf_counter()
            pre.process(rgb, i * 66_666_667)
            t2 = time.perf_counter()
            if i >= 3:  # first frames warm caches and have no flow
                parts["decode"].append((t1 - t0) * 1e3)
                parts["prepare_flow"].append((t2 - t1) * 1e3)
        total = np.add(parts["decode"], parts["prepare_flow"])
        rows.append({"variant": name, "input": "640x480 " + transport, "output": f"{size}x{size}",
                     **summarize_ms(total), "decode_ms": float(np.mean(parts["decode"])),
                     "resize_flow_ms": float(np.mean(parts["prepare_flow"]))})
    print(format_table(rows, ["variant", "input", "output", "ms_per_frame", "ms_p95", "decode_ms", "resize_flow_ms"]))
    residual = [residual_cost(frames, size, args.preset) for size in (128, 256)]
    print(format_table(residual, ["variant", "output", "with_residual_ms", "without_ms", "residual_ms", "ratio"]))
    write_report(rows + residual, machine_info(opencv_threads=args.threads, dis_preset=args.preset), args.json)
    if args.json:
        print(f"wrote {args.json}")
    return 0
