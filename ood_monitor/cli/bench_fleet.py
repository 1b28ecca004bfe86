"""`ood-monitor bench fleet`: frames/s of evaluate's scoring (no masks) over many recordings with the
local engine and with Ray at 1 and 2 workers, side by side in one run, plus each Ray row's per-worker
throughput (frames per second of a worker's scoring time) and overhead per task (worker time not spent
reading and scoring: actor start-up, model loading, scheduling, transfers). `--memory` also measures
evaluate's peak memory on one recording and on the same recording made 4x longer.

The recordings are `--copies` links to the `--data` recording(s), so every task has the same work and
the rows differ only by engine. Ray starts once before the rows (its start-up is reported, not counted)."""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def register(stages: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = stages.add_parser("fleet", help="evaluate frames/s: local engine vs Ray at 1 and 2 workers; peak memory")
    p.add_argument("--data", type=Path, nargs="+", default=[Path("demo_data/bags/test")],
                   help="recording(s) to copy (default demo_data/bags/test)")
    p.add_argument("--copies", type=int, default=32,
                   help="links to each recording (tasks; default 32: about 37,000 frames of the demo test bag, so "
                        "that Ray's start-up, paid once per run, weighs on the ratio about as little as on a "
                        "fleet's hours of bags; the report gives the start-up and the rate past it)")
    p.add_argument("--models", type=Path, nargs="+", default=[Path("models/vae_image"), Path("models/vae_flow")])
    p.add_argument("--threads", type=int, default=1, help="torch threads of the local engine and of each actor")
    p.add_argument("--rounds", type=int, default=1,
                   help="run local, ray-1, ray-2 this many times in turn (Ray restarted each round, down while the "
                        "local engine runs) and report each row's median: on a shared machine one round's rows "
                        "can differ by a third from the next's")
    p.add_argument("--memory", type=Path, nargs="?", const=Path("demo_data/images/test"), default=None,
                   metavar="FOLDER", help="also measure evaluate's peak RSS on this labelled image folder and on "
                                          "it repeated 4x as one recording (default demo_data/images/test)")
    p.set_defaults(func=run)
    return p


def linked_copies(data: list[Path], copies: int, root: Path) -> list[Path]:
    """`copies` symlinks to each recording under `root` (the engines see as many recordings)."""
    out = []
    for k in range(copies):
        for i, src in enumerate(data):
            link = root / f"rec{k:03d}_{i}_{src.name}"
            link.symlink_to(src.resolve(), target_is_directory=src.is_dir())
            out.append(link)
    return out


def repeated_folder(folder: Path, times: int, out: Path) -> Path:
    """An image folder with `folder`'s frames `times` over as one continuous recording (links to the
    PNGs, labels.csv renumbered with stamps running on)."""
    from ood_monitor.data.labeled_frames import DEFAULT_FPS

    frames_dir = folder / "frames" if (folder / "frames").is_dir() else folder
    images = sorted(p for p in frames_dir.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not images:
        raise ValueError(f"no images in {frames_dir}")
    labels = {}
    if (folder / "labels.csv").is_file():
        with (folder / "labels.csv").open(newline="") as handle:
            labels = {int(r["frame"]): r for r in csv.DictReader(handle)}
    (out / "frames").mkdir(parents=True)
    period = int(round(1e9 / DEFAULT_FPS))
    rows = []
    for n in range(times * len(images)):
        src = images[n % len(images)]
        (out / "frames" / f"{n:07d}{src.suffix}").symlink_to(src.resolve())
        row = labels.get(int(src.stem)) if src.stem.isdigit() else None
        episode = int(row["episode"]) + (n // len(images)) * 1000 if row and int(row["episode"]) else 0
        rows.append({"frame": n, "stamp_ns": 1_700_000_000_000_000_000 + n * period,
                     "kind": row["kind"] if row else "nominal", "category": row["category"] if row else "in_distribution",
                     "episode": episode, "onset_frame": n - (n % len(images)) + int(row["onset_frame"]) if row else 0,
                     "is_ood": row["is_ood"] if row else "0"})
    with (out / "labels.csv").open("w", newline="") as handle:
        w = csv.DictWriter(handle, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out


PEAK_SCRIPT = ("import resource, sys\nfrom ood_monitor.cli.main import main\nrc = main(sys.argv[1:])\n"
               "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nsys.exit(rc)\n")


def peak_rss_mb(data: Path, models: list[Path], out: Path) -> tuple[float, float]:
    """(peak RSS MB, seconds) of `ood-monitor evaluate` (local, no masks) in a fresh process."""
    cmd = [sys.executable, "-c", PEAK_SCRIPT, "evaluate", "--data", str(data), "--models", *map(str, models),
           "--out", str(out), "--synthesizer", "none"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    seconds = time.perf_counter() - t0
    peak = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("PEAK_RSS_KB")]
    if done.returncode != 0 or not peak:
        raise RuntimeError(f"evaluate on {data} failed ({done.returncode}): {done.stderr[-2000:]}")
    return int(peak[0]) / 1024.0, seconds


def engine_row(name: str, fleet, workers: int) -> dict:
    """frames/s over the whole run, and past the start-up (up to the first read: for Ray the workers'
    processes and models, a fixed cost that a fleet's hours of bags amortise and a short benchmark
    does not); Ray's overhead split into that start-up and the rest per task."""
    frames = fleet.frames
    running = fleet.seconds - fleet.startup_s
    row = {"variant": name, "workers": workers, "tasks": len(fleet.sources), "frames": frames,
           "seconds": fleet.seconds, "frames_per_s": frames / fleet.seconds, "startup_s": fleet.startup_s,
           "after_startup_frames_per_s": frames / running}
    if fleet.engine == "ray":
        row["per_worker_frames_per_s"] = frames / fleet.work_s if fleet.work_s else float("nan")
        row["overhead_s_per_task"] = max(0.0, workers * running - fleet.work_s) / len(fleet.sources)
    else:
        row["per_worker_frames_per_s"] = row["frames_per_s"]
        row["overhead_s_per_task"] = 0.0
    return row


def one_round(sources: list[Path], job, threads: int) -> list[dict]:
    """local (Ray down), then Ray started and ray-1, ray-2 (Ray shut down after, unless someone else
    started it); the last row carries this round's Ray start-up seconds."""
    import ray

    from ood_monitor.fleet.engines import score_local
    from ood_monitor.fleet.ray_engine import ensure_ray, score_on_ray

    # the local row loads its models inside its timer, as `evaluate` does and as each Ray actor does
    rows = [engine_row("local", score_local(sources, job, progress=None), 1)]
    print(f"  local: {rows[-1]['frames_per_s']:.1f} frames/s", flush=True)
    started = not ray.is_initialized()  # a Ray someone else started stays up
    t0 = time.perf_counter()
    ensure_ray(num_cpus=max(2, os.cpu_count() or 1))
    ray_start = time.perf_counter() - t0
    for workers in (1, 2):
        fleet = score_on_ray(sources, job, workers=workers, progress=None, threads=threads)
        if fleet.failed:
            raise RuntimeError(f"ray-{workers}: {fleet.failed}")
        rows.append(engine_row(f"ray-{workers}", fleet, workers))
        print(f"  ray-{workers}: {rows[-1]['frames_per_s']:.1f} frames/s", flush=True)
    if started:
        ray.shutdown()
    rows[-1]["ray_start_s"] = ray_start
    return rows


def median_row(runs: list[dict]) -> dict:
    """One variant over the rounds: the run with the median frames/s (its other columns with it), plus
    every round's frames/s."""
    ordered = sorted(runs, key=lambda r: r["frames_per_s"])
    row = {k: v for k, v in ordered[(len(ordered) - 1) // 2].items() if k != "ray_start_s"}
    row["rounds_frames_per_s"] = [round(r["frames_per_s"], 1) for r in runs]
    return row


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ood_monitor.core.benchmark import format_table, machine_info, write_report
    from ood_monitor.fleet.engines import ScoringJob
    from ood_monitor.fleet.inputs import expand_inputs
    from ood_monitor.fleet.scoring import ModelScorer

    data = expand_inputs(args.data)
    copies = 2 if args.quick else args.copies
    scorers = [ModelScorer(m) for m in args.models]
    job = ScoringJob([str(s.path) for s in scorers])
    with tempfile.TemporaryDirectory(prefix="bench_fleet_") as tmp:
        sources = linked_copies(data, copies, Path(tmp))
        print(f"{len(sources)} recordings ({copies} x {', '.join(map(str, data))}), models "
              f"{', '.join(s.name for s in scorers)}, {os.cpu_count()} cores", flush=True)
        torch.set_num_threads(args.threads)
        rounds = [one_round(sources, job, args.threads) for _ in range(max(1, args.rounds))]
        rows = [median_row([r[i] for r in rounds]) for i in range(len(rounds[0]))]
        ray_start = float(np.median([r[-1]["ray_start_s"] for r in rounds]))
        base = rows[0]["frames_per_s"]
        for i, r in enumerate(rows):
            r["x_local"] = r["frames_per_s"] / base
            r["rounds_x_local"] = [round(one[i]["frames_per_s"] / one[0]["frames_per_s"], 3) for one in rounds]
            r["after_startup_x_local"] = r["after_startup_frames_per_s"] / rows[0]["after_startup_frames_per_s"]
            r["rounds_after_startup_x_local"] = [round(one[i]["after_startup_frames_per_s"]
                                                       / one[0]["after_startup_frames_per_s"], 3) for one in rounds]
        memory = {}
        if args.memory is not None:
            folder = repeated_folder(args.memory, 4, Path(tmp) / "x4")
            for label, path in (("1x", args.memory), ("4x", folder)):
                mb, seconds = peak_rss_mb(path, args.models, Path(tmp) / f"eval_{label}")
                memory[label] = {"data": str(args.memory) + ("" if label == "1x" else " repeated 4x"),
                                 "peak_rss_mb": mb, "seconds": seconds}
                print(f"  evaluate peak RSS {label}: {mb:.0f} MB ({seconds:.0f} s)", flush=True)
            memory["ratio_4x_1x"] = memory["4x"]["peak_rss_mb"] / memory["1x"]["peak_rss_mb"]
    print(format_table(rows, ["variant", "workers", "tasks", "frames", "seconds", "frames_per_s", "x_local",
                              "startup_s", "after_startup_x_local", "per_worker_frames_per_s",
                              "overhead_s_per_task"]))
    if len(rounds) > 1:
        for r in rows[1:]:
            print(f"{r['variant']} / local per round: {', '.join(f'{x:.2f}' for x in r['rounds_x_local'])}; "
                  f"past the start-up: {', '.join(f'{x:.2f}' for x in r['rounds_after_startup_x_local'])}")
    if memory:
        print(f"peak memory 4x / 1x: {memory['ratio_4x_1x']:.3f}")
    write_report(rows, machine_info(torch_threads=args.threads, load_average=os.getloadavg()), args.json,
                 data=[str(d) for d in data], copies=copies, models=[str(s.path) for s in scorers],
                 ray_start_s=ray_start, memory=memory)
    if args.json:
        print(f"wrote {args.json}")
    return 0
