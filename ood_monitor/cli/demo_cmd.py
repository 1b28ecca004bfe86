"""`ood-monitor demo`: the main job. Generates the demo bags, runs the node graph live over DDS with
the test bag replayed in real time, records every output to a result bag, evaluates the detectors,
runs the quick benchmarks and writes demo_report/report.md with what was measured."""
from __future__ import annotations

import argparse
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np

OUTPUTS = {  # recorded topics of the live run
    "/ood/image": "sensor_msgs/msg/Image",
    "/ood/flow": "sensor_msgs/msg/Image",
    "/ood/camera_info": "sensor_msgs/msg/CameraInfo",
    "/ood/score/image": "ood_msgs/msg/OODScore",
    "/ood/score/flow": "ood_msgs/msg/OODScore",
    "/ood/synthesis": "ood_msgs/msg/SynthesisResult",
    "/ood/anomaly": "ood_msgs/msg/AnomalyMask",
    "/ood/obstacles": "sensor_msgs/msg/PointCloud2",
    "/ood/costmap": "nav_msgs/msg/OccupancyGrid",
    "/diagnostics": "diagnostic_msgs/msg/DiagnosticArray",
}
LATENCY_TOPICS = {"/ood/image": "Image", "/ood/score/image": "OODScore", "/ood/score/flow": "OODScore",
                  "/ood/anomaly": "AnomalyMask"}
BENCHES = ("preprocess", "vae")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="generate demo data, run the pipeline live on it, write demo_report/")
    p.add_argument("--data", type=Path, default=Path("demo_data"), help="demo dataset folder (default demo_data)")
    p.add_argument("--report", type=Path, default=Path("demo_report"), help="report folder (default demo_report)")
    p.add_argument("--scale", type=float, default=1.0, help="demo dataset scale (default 1)")
    p.add_argument("--seed", type=int, default=0, help="demo dataset seed (default 0)")
    p.add_argument("--rate", type=float, default=1.0, help="replay speed factor (default 1: real time)")
    p.add_argument("--params", type=Path, default=Path("config/default.yaml"), help="node parameters")
    p.add_argument("--stages", default="all", help="pipeline stages to run live (default all)")
    p.set_defaults(func=run)


def step(i: int, n: int, text: str) -> None:
    print(f"\n\033[1m[demo {i}/{n}] {text}\033[0m", flush=True)


def ensure_dataset(out: Path, scale: float, seed: int) -> dict:
    """Generate the demo data unless a dataset with the same parameters is already there."""
    from ood_monitor.data.demo import GENERATOR_VERSION, DemoConfig, generate

    meta = out / "dataset.json"
    if meta.exists():
        existing = json.loads(meta.read_text())
        if (existing.get("seed"), existing.get("scale"), existing.get("generator_version")) == (
                seed, scale, GENERATOR_VERSION):
            print(f"demo data in {out} is up to date (seed {seed}, scale {scale})")
            return existing
        shutil.rmtree(out)
    return generate(DemoConfig(out=out, scale=scale, seed=seed))


def stamp_of(msg) -> int:
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


class LatencyProbe:
    """Camera message published -> each output received, matched by header stamp (wall clock)."""

    def __init__(self) -> None:
        self.sent: dict[int, float] = {}
        self.samples: dict[str, list[float]] = {t: [] for t in LATENCY_TOPICS}

    def on_publish(self, topic: str, msg) -> None:
        if topic == "/camera/image_raw":
            self.sent[stamp_of(msg)] = time.monotonic()

    def callback(self, topic: str):
        def record(msg) -> None:
            t = self.sent.get(stamp_of(msg))
            if t is not None:
                self.samples[topic].append((time.monotonic() - t) * 1e3)
        return record

    def percentiles(self) -> dict[str, dict[str, float]]:
        out = {}
        for topic, values in self.samples.items():
            if values:
                p50, p95, p99 = np.percentile(values, [50, 95, 99])
                out[topic] = {"p50": float(p50), "p95": float(p95), "p99": float(p99), "n": len(values)}
        return out


HEAVY_OUTPUTS = {"/ood/synthesis": "synthesizer_node", "/ood/anomaly": "analysis_node", "/ood/costmap": "nav_bridge_node"}
HEAVY_STAGES = ("synthesize", "analysis", "nav")  # their own process, as on a robot: torch there must
# not starve the camera-rate stages of the GIL


def start_heavy_stages(params: Path, stages: list[str]):
    """`ood-monitor run` for the synthesis/analysis/nav stages in a separate process (None if none)."""
    import os
    import subprocess
    import sys

    heavy = [s for s in stages if s in HEAVY_STAGES]
    if not heavy:
        return None
    return subprocess.Popen([sys.executable, "-m", "ood_monitor.cli.main", "run", "--params", str(params),
                             "--stages", ",".join(heavy)], start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def stop_process(proc) -> None:
    import os
    import signal
    import subprocess

    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def diagnostics_stats(result_bag: Path, names: list[str]) -> dict:
    """Per-node figures of out-of-process nodes: their last /diagnostics status in the result bag."""
    from ood_monitor.data.bags import read_messages

    last = {}
    for _t, _ty, _s, msg in read_messages(result_bag, ["/diagnostics"]):
        for status in msg.status:
            name = status.name.rsplit("/", 1)[-1]
            if name in names:
                last[name] = {kv.key: kv.value for kv in status.values}
    out = {}
    for name, v in last.items():
        num = lambda k, v=v: float(v.get(k, "nan"))  # noqa: E731
        out[name] = {"received": int(num("received")), "processed": int(num("processed")),
                     "dropped_upstream": int(num("dropped_upstream")), "rejected": int(num("rejected")),
                     "input_rate_hz": num("input_rate_hz"),
                     "latency_ms": {"p50": num("latency_p50_ms"), "p95": num("latency_p95_ms"),
                                    "p99": num("latency_p99_ms")}}
    return out


def run_live(test_bag: Path, result_bag: Path, rate: float, params: Path, stages: str) -> dict:
    """Replay the test bag in real time into the node graph over DDS, recording every output. The
    camera-rate stages run in this process, the heavy ones in another (as separate nodes would)."""
    import sensor_msgs.msg
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    import ood_msgs.msg
    from ood_monitor.pipeline import nodes_for
    from ood_monitor.ros.bag_bridge import BagPlayer, BagRecorder, PlaybackConfig
    from ood_monitor.ros.graph import NodeGraph

    if result_bag.exists():
        shutil.rmtree(result_bag)
    probe = LatencyProbe()
    specs = nodes_for(stages)
    heavy = start_heavy_stages(params, list(dict.fromkeys(s.stage for s in specs)))
    heavy_names = [s.name for s in specs if s.stage in HEAVY_STAGES]
    specs = [s for s in specs if s.stage not in HEAVY_STAGES]
    with NodeGraph(specs, params) as graph:
        io = graph.helper_node("ood_demo_io")
        recorder = BagRecorder(io, result_bag, OUTPUTS.items())
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        for topic, kind in LATENCY_TOPICS.items():
            cls = getattr(ood_msgs.msg, kind, None) or getattr(sensor_msgs.msg, kind)
            io.create_subscription(cls, topic, probe.callback(topic), reliable)
        player = BagPlayer(io, test_bag, PlaybackConfig(
            rate=rate, topics=["/camera/image_raw", "/camera/camera_info"], on_publish=probe.on_publish,
            start_delay_s=1.5))
        graph.spin_in_background()
        if heavy is not None:  # wait until the other process's nodes are up (model loading)
            outputs = [t for t, name in HEAVY_OUTPUTS.items() if name in heavy_names]
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not all(io.count_publishers(t) for t in outputs):
                time.sleep(0.5)
            time.sleep(2.0)
        play = threading.Thread(target=player.play, daemon=True)
        t0 = time.monotonic()
        play.start()
        while play.is_alive():
            play.join(timeout=10.0)
            counts = recorder.counts
            print(f"  {time.monotonic() - t0:5.0f} s  replayed {player.published}/{player.total}; "
                  + ", ".join(f"{t.split('/', 2)[-1]} {counts.get(t, 0)}" for t in
                              ("/ood/image", "/ood/score/image", "/ood/score/flow", "/ood/anomaly")), flush=True)
        time.sleep(3.0)  # let the slowest stage finish its last frame
        stop_process(heavy)
        recorder.close()
        nodes = {}
        for name, node in graph.nodes.items():
            stats = getattr(node, "stats", None)
            if stats is not None:
                nodes[name] = {"received": stats.received, "processed": stats.processed,
                               "dropped_upstream": stats.dropped, "rejected": stats.rejected,
                               "input_rate_hz": stats.rate_hz(), "latency_ms": stats.latency_percentiles()}
        nodes.update(diagnostics_stats(result_bag, heavy_names))
        return {"replayed_messages": player.published, "wall_s": time.monotonic() - t0, "nodes": nodes,
                "end_to_end_ms": probe.percentiles(), "recorded": dict(recorder.counts)}


def live_alarms(result_bag: Path, test_bag: Path) -> dict:
    """Alarm metrics of the scores the live nodes published, against the bag's labels."""
    from ood_monitor.core.metrics import alarm_metrics
    from ood_monitor.data.bags import read_messages
    from ood_monitor.data.frames import iter_frames

    labels = {f.stamp_ns: f for f in iter_frames(test_bag)}
    by_detector: dict[str, list] = {}
    for _topic, _type, _t, msg in read_messages(result_bag, ["/ood/score/image", "/ood/score/flow"]):
        by_detector.setdefault(msg.detector, []).append(msg)
    out = {}
    for det, msgs in by_detector.items():
        rows = [(labels[stamp_of(m)], m.is_ood) for m in msgs if stamp_of(m) in labels]
        if not rows:
            continue
        is_ood = np.array([f.is_ood for f, _ in rows])
        alarm = np.array([a for _, a in rows])
        episode = np.array([f.episode for f, _ in rows])
        out[det] = {"frames_scored": len(rows), **alarm_metrics(alarm, is_ood, episode)}
    return out


def run_benches(report_dir: Path) -> dict[str, dict]:
    from ood_monitor.cli.main import main as cli

    out = {}
    for stage in BENCHES:
        path = report_dir / f"bench_{stage}.json"
        if cli(["bench", stage, "--quick", "--json", str(path)]) == 0:
            out[stage] = json.loads(path.read_text())
    return out


def write_report(report_dir: Path, dataset: dict, live: dict, alarms: dict, evaluation: list[dict],
                 benches: dict, eval_md: str) -> Path:
    from ood_monitor.core.benchmark import format_table

    lines = ["# ood_monitor demo report", "", "## Demo dataset", "", "| split | frames |", "|---|---|"]
    lines += [f"| {s} | {info['frames']} |" for s, info in dataset["splits"].items()]
    lines += ["", "## Live run (test bag replayed over Fast DDS in real time; camera-rate nodes in one process, "
              "synthesis, analysis and Nav2 bridge in another)", "",
              f"Replayed {live['replayed_messages']} messages in {live['wall_s']:.0f} s; recorded to "
              f"`result_bag/`: {live['recorded']}.", "",
              "| node | received | processed | dropped upstream | rejected | rate Hz | latency p50 / p95 / p99 ms |",
              "|---|---|---|---|---|---|---|"]
    for name, n in live["nodes"].items():
        lat = n["latency_ms"]
        lines.append(f"| {name} | {n['received']} | {n['processed']} | {n['dropped_upstream']} | {n['rejected']} "
                     f"| {n['input_rate_hz']:.1f} | {lat['p50']:.1f} / {lat['p95']:.1f} / {lat['p99']:.1f} |")
    lines += ["", "Camera message published → output received (end to end, wall clock):", "",
              "| output | frames | p50 ms | p95 ms | p99 ms |", "|---|---|---|---|---|"]
    for topic, e in live["end_to_end_ms"].items():
        lines.append(f"| {topic} | {e['n']} | {e['p50']:.1f} | {e['p95']:.1f} | {e['p99']:.1f} |")
    lines += ["", "Alarms raised live (is_ood of the published OODScores, against the bag's labels):", "",
              "| detector | frames scored | median delay | missed / episodes | false alarms / 1000 ID |",
              "|---|---|---|---|---|"]
    for det, a in alarms.items():
        lines.append(f"| {det} | {a['frames_scored']} | {a['median_delay']:.1f} | {a['missed_episodes']}/"
                     f"{a['ood_episodes']} | {a['false_alarms_per_1000']:.1f} |")
    lines += ["", eval_md.replace("# Detector evaluation", "## Detector evaluation (offline, same bag)"), ""]
    for stage, report in benches.items():
        cols = [c for c in ("variant", "ms_per_frame", "ms_p95", "x_deterministic", "auroc", "aupr_out", "auc_pr",
                            "f_star", "what") if any(c in r for r in report["rows"])]
        lines += [f"## Benchmark: {stage} (quick)", "", "```", format_table(report["rows"], cols), "```", ""]
    machine = next(iter(benches.values()))["machine"] if benches else {}
    lines += [f"Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, torch {machine.get('torch', '?')}."]
    path = report_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(args: argparse.Namespace) -> int:
    from ood_monitor.cli import evaluate_cmd

    n = 5
    t0 = time.monotonic()
    args.report.mkdir(parents=True, exist_ok=True)
    step(1, n, f"demo data -> {args.data}")
    dataset = ensure_dataset(args.data, args.scale, args.seed)
    test_bag = args.data / "bags" / "test"
    step(2, n, f"live: test bag replayed in real time through the node graph ({args.stages})")
    live = run_live(test_bag, args.report / "result_bag", args.rate, args.params, args.stages)
    alarms = live_alarms(args.report / "result_bag", test_bag)
    (args.report / "live.json").write_text(json.dumps({**live, "alarms": alarms}, indent=2, default=float))
    step(3, n, "offline evaluation of the detectors on the test bag")
    evaluate_cmd.run(argparse.Namespace(data=test_bag, models=[Path("models/vae_image"), Path("models/vae_flow")],
                                        out=args.report, image_topic="/camera/image_raw", params=args.params,
                                        tests="martingale,cusum", synthesizer=Path("models/latent_dit"),
                                        segmenter="auto", sam_checkpoint="", features="auto", max_mask_frames=200))
    evaluation = json.loads((args.report / "evaluation.json").read_text())
    step(4, n, "benchmarks (quick)")
    benches = run_benches(args.report)
    step(5, n, "report")
    path = write_report(args.report, dataset, live, alarms, evaluation, benches, (args.report / "report.md").read_text())
    print(f"\nwrote {path} in {time.monotonic() - t0:.0f} s")
    return 0
