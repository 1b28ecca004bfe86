"""`ood-monitor bench pipeline [--stress]`: the whole node graph live at camera rate (default 30 Hz: the
demo test bag looped and restamped, so time runs forward as from a camera) for minutes, sampling each
process's resident memory and each output's end-to-end latency per window. The summary says whether
memory stays flat (no leak) and latency stays flat (no backlog), with the slopes and ratios behind it."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

CAMERA_TOPICS = ["/camera/image_raw", "/camera/camera_info"]


def register(stages: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = stages.add_parser("pipeline", help="live graph at camera rate: memory and latency over time")
    p.add_argument("--data", type=Path, default=Path("demo_data/bags/test"), help="camera bag to loop")
    p.add_argument("--params", type=Path, default=Path("config/default.yaml"), help="node parameters")
    p.add_argument("--stages", default="all", help="stages to run (default all)")
    p.add_argument("--rate-hz", type=float, default=30.0, help="camera rate to drive the graph at (default 30)")
    p.add_argument("--stress", action="store_true", help="a long run (default 300 s) to expose leaks and backlogs")
    p.add_argument("--seconds", type=float, default=None, help="run time (default 60; --stress 300; --quick 60)")
    p.add_argument("--interval", type=float, default=10.0, help="sampling window in seconds (default 10)")
    p.add_argument("--heavy-process-per-stage", action="store_true",
                   help="synthesis and analysis in a process each, as ros2 launch runs every node (default: one "
                        "process for both, which was faster on 2 cores)")
    p.add_argument("--plot", type=Path, default=None, help="memory/latency plot PNG (default: next to --json; none without either)")
    p.set_defaults(func=run)
    return p


def bag_rate_hz(bag: Path, topic: str) -> float:
    """Recorded rate of `topic`: messages over the bag's duration."""
    from ood_monitor.ros.bag_bridge import open_reader

    reader = open_reader(bag)
    try:
        count = sum(c.msgcount for c in reader.connections if c.topic == topic)
        span_s = reader.duration * 1e-9
    finally:
        reader.close()
    if count < 2 or span_s <= 0:
        raise ValueError(f"{bag}: {topic} has too few messages to set a rate")
    return (count - 1) / span_s


def window_row(lg, t0: float, t1: float, published: int, rss: dict[str, float]) -> dict:
    """One sampling window: input rate, each output's rate and latency percentiles, memory."""
    span = t1 - t0
    row = {"variant": f"{t1:.0f}s", "t_s": round(t1, 1), "camera_hz": published / span}
    for topic in lg.latency_topics:
        name = topic.removeprefix("/ood/").replace("/", "_")
        ms = lg.probe.latencies(topic, t0, t1)
        row[f"{name}_hz"] = ms.size / span
        row[f"{name}_p50_ms"] = float(np.percentile(ms, 50)) if ms.size else float("nan")
        row[f"{name}_p95_ms"] = float(np.percentile(ms, 95)) if ms.size else float("nan")
    row.update({f"rss_{k}_mb": v for k, v in rss.items()})
    return row


SUMMARY_NAMES = {"anomaly": "anomaly_mask"}  # topic name -> summary row name where they differ


def summary_rows(lg, t0: float, t1: float, published: int) -> list[dict]:
    """One row per output over [t0, t1] (the run after its first window, which holds the model loading):
    `rate_hz` (outputs per second), `camera_hz` (camera frames per second), camera->output `p50_ms` /
    `p95_ms`, `frames` (outputs measured)."""
    span = max(t1 - t0, 1e-9)
    rows = []
    for topic in lg.latency_topics:
        name = topic.removeprefix("/ood/").replace("/", "_")
        ms = lg.probe.latencies(topic, t0, t1)
        rows.append({"variant": SUMMARY_NAMES.get(name, name), "topic": topic, "rate_hz": ms.size / span,
                     "camera_hz": published / span, "frames": int(ms.size),
                     "p50_ms": float(np.percentile(ms, 50)) if ms.size else float("nan"),
                     "p95_ms": float(np.percentile(ms, 95)) if ms.size else float("nan"),
                     "from_s": round(t0, 1), "to_s": round(t1, 1)})
    return rows


def live_stages(diagnostics) -> dict[str, dict[str, float]]:
    """node -> {stage: ms}: the per-stage moving averages (`stage_<name>_ms`) of each node's last /diagnostics
    status that has them (synthesizer_node: encode, dit, guidance, decode, conversion; analysis_node:
    decode_msg, the analysis stages, encode_msg)."""
    out: dict[str, dict[str, float]] = {}
    for msg in diagnostics:
        for status in msg.status:
            stages = {kv.key[6:-3]: float(kv.value) for kv in status.values
                      if kv.key.startswith("stage_") and kv.key.endswith("_ms")}
            if stages:
                out[status.name.rsplit("/", 1)[-1]] = stages
    return out


FRAME_COUNTS = ("received", "triggered", "superseded", "skipped_stale")


def synthesizer_counts(diagnostics) -> dict[str, int]:
    """The synthesizer_node's frame counts from its last /diagnostics status: received, synthesized
    (`triggered`), replaced while waiting (`superseded`), dropped for waiting over max_wait_ms (`skipped_stale`)."""
    out: dict[str, int] = {}
    for msg in diagnostics:
        for status in msg.status:
            if status.name.rsplit("/", 1)[-1] == "synthesizer_node":
                out.update({kv.key: int(kv.value) for kv in status.values if kv.key in FRAME_COUNTS})
    return out


def sample(lg, seconds: float, interval: float) -> list[dict]:
    """Windows until `seconds` have passed, printing each as it closes."""
    rows: list[dict] = []
    start = time.monotonic()
    last_t, last_pub = 0.0, 0
    while (elapsed := time.monotonic() - start) < seconds:
        time.sleep(min(interval, seconds - elapsed))
        t = time.monotonic() - lg.probe.t0
        pub = lg.player.published // len(CAMERA_TOPICS)
        rss = lg.rss_mb()
        row = window_row(lg, last_t, t, pub - last_pub, rss)
        row["published"] = pub
        rows.append(row)
        print(f"  {t:5.0f} s  camera {row['camera_hz']:.1f} Hz  score/image {row['score_image_hz']:.1f} Hz "
              f"p95 {row['score_image_p95_ms']:.1f} ms  anomaly {row['anomaly_hz']:.1f} Hz "
              f"p95 {row['anomaly_p95_ms']:.0f} ms  RSS " + " / ".join(f"{v:.0f}" for v in rss.values()) + " MB",
              flush=True)
        last_t, last_pub = t, pub
    return rows


def summarize(rows: list[dict]) -> dict:
    from ood_monitor.core.trend import FlatnessConfig, latency_trend, memory_trend

    cfg = FlatnessConfig()
    t = np.array([r["t_s"] for r in rows])
    memory = {k[4:-3]: memory_trend(t, np.array([r[k] for r in rows]), cfg) for k in rows[0] if k.startswith("rss_")}
    latency = {k[:-7]: latency_trend(np.array([r[k] for r in rows]), cfg) for k in rows[0] if k.endswith("_p95_ms")}
    latency = {k: v for k, v in latency.items() if np.isfinite(v["late_p95_ms"])}
    return {"memory": memory, "latency": latency, "criteria": vars(cfg),
            "no_leak": all(m["flat"] for m in memory.values()), "no_backlog": all(v["flat"] for v in latency.values())}


def plot(path: Path, rows: list[dict]) -> Path:
    from ood_monitor.core.plots import over_time

    t = np.array([r["t_s"] for r in rows])
    col = lambda k: np.array([r[k] for r in rows], float)  # noqa: E731
    return over_time(path, t, {
        "RSS MB": {k[4:-3]: col(k) for k in rows[0] if k.startswith("rss_")},
        "p95 latency ms": {k[:-7]: col(k) for k in rows[0] if k.endswith("_p95_ms")},
        "rate Hz": {k[:-3]: col(k) for k in rows[0] if k.endswith("_hz")},
    }, "bench pipeline: the live graph over time")


def run(args: argparse.Namespace) -> int:
    from ood_monitor.core.benchmark import format_table, machine_info, write_report
    from ood_monitor.ros.bag_bridge import PlaybackConfig
    from ood_monitor.ros.live import LiveGraph, latency_topic_classes

    seconds = args.seconds or (60.0 if args.quick else 300.0 if args.stress else 60.0)
    interval = min(args.interval, seconds / 3)
    factor = args.rate_hz / bag_rate_hz(args.data, CAMERA_TOPICS[0])
    playback = PlaybackConfig(rate=factor, loop=True, restamp=True, topics=CAMERA_TOPICS)
    print(f"bench pipeline: {args.data} looped at {args.rate_hz:g} Hz ({factor:.2f}x) through stages "
          f"'{args.stages}' for {seconds:.0f} s, {interval:.0f} s windows", flush=True)
    with LiveGraph(args.params, args.stages, args.data, playback, latency_topic_classes(), "ood_bench_io",
                   camera_in_process=False,
                   heavy_per_stage=args.heavy_process_per_stage) as lg:
        lg.play()
        rows = sample(lg, seconds, interval)
        steady = summary_rows(lg, rows[0]["t_s"], rows[-1]["t_s"], rows[-1]["published"] - rows[0]["published"])
        nodes = lg.node_figures()
        stages = live_stages(list(lg.diagnostics))
        counts = synthesizer_counts(list(lg.diagnostics))
    summary = summarize(rows)
    cols = ["variant", "camera_hz"] + [c for c in rows[0] if c.endswith(("_hz", "_p95_ms")) and c != "camera_hz"]
    cols += [c for c in rows[0] if c.startswith("rss_")]
    print(format_table(rows, cols))
    for name, m in summary["memory"].items():
        print(f"memory {name}: {m['start_mb']:.0f} -> {m['end_mb']:.0f} MB, {m['mb_per_min']:+.2f} MB/min "
              f"({'flat' if m['flat'] else 'GROWING'})")
    for name, v in summary["latency"].items():
        print(f"latency {name}: p95 {v['early_p95_ms']:.1f} -> {v['late_p95_ms']:.1f} ms "
              f"({'flat' if v['flat'] else 'GROWING'})")
    print(f"whole run after the first window ({steady[0]['from_s']:.0f}-{steady[0]['to_s']:.0f} s), camera->output:")
    print(format_table(steady, ["variant", "rate_hz", "camera_hz", "p50_ms", "p95_ms", "frames"]))
    for node, ms in stages.items():
        print(f"{node} per stage, ms (moving average, live): " + ", ".join(f"{k} {v:.1f}" for k, v in ms.items()))
    if counts:
        print("synthesizer_node frames: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    # The plot goes where the report goes (or where --plot says), never into the working directory.
    plot_path = args.plot or (Path(args.json).with_suffix(".png") if args.json else None)
    if plot_path is not None:
        plot_path.parent.mkdir(parents=True, exist_ok=True)
        plot(plot_path, rows)
    write_report(steady + rows, machine_info(), args.json, rate_hz=args.rate_hz, seconds=seconds, stages=args.stages,
                 summary=summary, nodes=nodes, stages_ms=stages, synthesizer_counts=counts, plot=str(plot_path) if plot_path else None)
    print(f"no leak: {summary['no_leak']}, no backlog: {summary['no_backlog']}; "
          + (f"plot {plot_path}" if plot_path else "no plot (give --json or --plot)"))
    return 0
