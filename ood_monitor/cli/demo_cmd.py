"""`ood-monitor demo`: the main job. Generates the demo bags, runs the node graph live over DDS with
the test bag replayed in real time, records every output to a result bag, evaluates the detectors,
runs the quick benchmarks and writes demo_report/report.md with what was measured."""
from __future__ import annotations

import argparse
import array
import json
import shutil
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


def without_handed_features(msg):
    """The synthesis as recorded (a BagRecorder edit): without the encoder features handed to the analysis
    (0.9 MB a message, two thirds of the bag); an analysis replaying the bag computes them itself."""
    msg.input_features, msg.feature_shapes, msg.feature_source = array.array("f"), array.array("I"), ""
    return msg


RECORD_EDITS = {"/ood/synthesis": without_handed_features}
BENCHES = {  # bench -> the report's columns
    "preprocess": ("variant", "ms_per_frame", "ms_p95", "with_residual_ms", "without_ms", "ratio"),
    "vae": ("variant", "ms_per_frame", "ms_p95", "x_deterministic"),
    "compress": ("variant", "size_mb", "ms_per_frame", "x_fp32", "auroc", "aupr_out", "d_auroc", "d_aupr_out_pts",
                 "runtime"),
    "synth": ("variant", "frames", "s_per_image", "speedup", "peak_mem_mb", "mem_ratio", "model_size_mb", "auc_pr",
              "auc_pr_ratio", "f_star", "auc_pr_rgb"),
}
BENCH_NOTES = {
    "compress": "Every variant against its fp32 parent on the same frames (quick: 400 test frames and 15 s of "
                "distillation, so the pruned rows lose more AUROC than `ood-monitor bench compress`'s 3 minutes).",
    "synth": "Quick: the DDPM-1000 baseline on 1 object frame, every other row on 2 object + 1 nominal frames; "
             "`ood-monitor bench synth` runs the full table.",
}
REUSABLE = {"synth": ("models/latent_dit", "models/dcae", "models/pixel_ddpm", "config/default.yaml",
                      str(Path(__file__).with_name("bench_synth.py")))}  # minutes on a CPU: measured again
# only when these models, the analysis settings, the benchmark (or the machine) change: a second run stays short


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="generate demo data, run the pipeline live on it, write demo_report/")
    p.add_argument("--data", type=Path, default=Path("demo_data"), help="demo dataset folder (default demo_data)")
    p.add_argument("--report", type=Path, default=Path("demo_report"), help="report folder (default demo_report)")
    p.add_argument("--scale", type=float, default=1.0, help="demo dataset scale (default 1)")
    p.add_argument("--seed", type=int, default=0, help="demo dataset seed (default 0)")
    p.add_argument("--rate", type=float, default=1.0, help="replay speed factor (default 1: real time)")
    p.add_argument("--params", type=Path, default=Path("config/default.yaml"), help="node parameters")
    p.add_argument("--stages", default="all", help="pipeline stages to run live (default all)")
    p.add_argument("--fresh-benches", action="store_true",
                   help="measure the synthesis table again even if its models are unchanged since the last run")
    p.set_defaults(func=run)


def step(i: int, n: int, text: str) -> None:
    print(f"\n\033[1m[demo {i}/{n}] {text}\033[0m", flush=True)


def ensure_dataset(out: Path, scale: float, seed: int) -> dict:
    """Generate the demo data unless a dataset with the same parameters is already there."""
    from ood_monitor.demo_world.generator import GENERATOR_VERSION, DemoConfig, generate

    meta = out / "dataset.json"
    if meta.exists():
        existing = json.loads(meta.read_text())
        if (existing.get("seed"), existing.get("scale"), existing.get("generator_version")) == (
                seed, scale, GENERATOR_VERSION):
            print(f"demo data in {out} is up to date (seed {seed}, scale {scale})")
            return existing
        shutil.rmtree(out)
    return generate(DemoConfig(out=out, scale=scale, seed=seed))


def run_live(test_bag: Path, result_bag: Path, rate: float, params: Path, stages: str) -> dict:
    """Replay the test bag in real time into the node graph over DDS, recording every output. This
    process stands in for the camera driver; the camera-rate stages and the heavy ones each run in a
    process of their own, as on a robot (and a lone in-process graph can starve its best-effort inputs)."""
    from ood_monitor.ros.bag_bridge import BagRecorder, PlaybackConfig
    from ood_monitor.ros.live import LiveGraph, latency_topic_classes

    if result_bag.exists():
        shutil.rmtree(result_bag)
    playback = PlaybackConfig(rate=rate, topics=["/camera/image_raw", "/camera/camera_info"], start_delay_s=1.5)
    with LiveGraph(params, stages, test_bag, playback, latency_topic_classes(), "ood_demo_io",
                   camera_in_process=False) as lg:
        recorder = BagRecorder(lg.io, result_bag, OUTPUTS.items(), edits=RECORD_EDITS)
        play = lg.play()
        t0 = time.monotonic()
        while play.is_alive():
            play.join(timeout=10.0)
            counts = recorder.counts
            print(f"  {time.monotonic() - t0:5.0f} s  replayed {lg.player.published}/{lg.player.total}; "
                  + ", ".join(f"{t.split('/', 2)[-1]} {counts.get(t, 0)}" for t in
                              ("/ood/image", "/ood/score/image", "/ood/score/flow", "/ood/anomaly")), flush=True)
        time.sleep(3.0)  # let the slowest stage finish its last frame
        lg.stop_processes()
        recorder.close()
        nodes = lg.node_figures()
        return {"replayed_messages": lg.player.published, "wall_s": time.monotonic() - t0, "nodes": nodes,
                "end_to_end_ms": lg.probe.percentiles(), "recorded": dict(recorder.counts)}


def live_alarms(result_bag: Path, test_bag: Path) -> dict:
    """Alarm metrics of the scores the live nodes published, against the bag's labels (the flow detector's
    as `evaluate` counts them: not the frame whose flow pairs an episode's last frame with a clean one)."""
    from ood_monitor.core.detector_evaluation import Labels, counted_alarm_metrics, detector_labels
    from ood_monitor.data.bags import read_messages
    from ood_monitor.data.labeled_frames import iter_frames
    from ood_monitor.ros.live import stamp_of

    labels = {f.stamp_ns: f for f in iter_frames(test_bag)}
    by_detector: dict[str, list] = {}
    for _topic, _type, _t, msg in read_messages(result_bag, ["/ood/score/image", "/ood/score/flow"]):
        by_detector.setdefault(msg.detector, []).append(msg)
    out = {}
    for det, msgs in by_detector.items():
        rows = sorted(((stamp_of(m), labels[stamp_of(m)], m.is_ood) for m in msgs if stamp_of(m) in labels),
                      key=lambda r: r[0])
        if not rows:
            continue
        is_ood = np.array([f.is_ood for _, f, _ in rows], bool)
        episode = np.array([f.episode for _, f, _ in rows])
        labels_of = detector_labels(det, Labels(is_ood, episode, episode, episode))
        out[det] = {"frames_scored": len(rows), **counted_alarm_metrics(np.array([a for _, _, a in rows]), labels_of)}
    return out


def models_fingerprint(folders: tuple[str, ...]) -> str:
    """Content hash of the model folders (and files) a benchmark measures, plus the CPU it measured them on."""
    import hashlib

    from ood_monitor.core.benchmark import cpu_model

    digest = hashlib.sha256(cpu_model().encode())
    for folder in folders:
        paths = [Path(folder)] if Path(folder).is_file() else sorted(Path(folder).glob("*"))
        for path in paths:
            if path.is_file():
                digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def run_benches(report_dir: Path, fresh: bool = False, stages: tuple[str, ...] = tuple(BENCHES)) -> dict[str, dict]:
    """The quick benchmarks; a synthesis table measured by an earlier run on the same models and CPU is
    kept (and says when it was measured) unless `fresh`."""
    from ood_monitor.cli.main import main as cli

    out = {}
    for stage in stages:
        path = report_dir / f"bench_{stage}.json"
        fingerprint = models_fingerprint(REUSABLE[stage]) if stage in REUSABLE else None
        if fingerprint and not fresh and path.exists():
            old = json.loads(path.read_text())
            if old.get("demo_fingerprint") == fingerprint:
                print(f"bench {stage}: models unchanged since {old.get('measured_at', '?')}, keeping that table "
                      "(--fresh-benches measures again)", flush=True)
                out[stage] = old
                continue
        if cli(["bench", stage, "--quick", "--json", str(path)]) == 0:
            report = json.loads(path.read_text())
            report.update(measured_at=time.strftime("%Y-%m-%d %H:%M:%S"), demo_fingerprint=fingerprint)
            path.write_text(json.dumps(report, indent=2))
            out[stage] = report
    return out


def write_report(report_dir: Path, dataset: dict, live: dict, alarms: dict, evaluation: list[dict],
                 benches: dict, eval_md: str) -> Path:
    from ood_monitor.core.benchmark import format_table

    lines = ["# ood_monitor demo report", "", "## Demo dataset", "", "| split | frames |", "|---|---|"]
    lines += [f"| {s} | {info['frames']} |" for s, info in dataset["splits"].items()]
    lines += ["", "## Live run (test bag replayed over Fast DDS in real time by the demo process, standing in for "
              "the camera driver; camera-rate nodes in one process, synthesis, analysis and Nav2 bridge in another)", "",
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
        cols = [c for c in BENCHES[stage] if any(c in r for r in report["rows"])]
        lines += [f"## Benchmark: {stage} (`ood-monitor bench {stage} --quick`, measured {report['measured_at']})", "",
                  "```", format_table(report["rows"], cols), "```", ""]
        lines += [BENCH_NOTES[stage], ""] if stage in BENCH_NOTES else []
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
    benches = run_benches(args.report, args.fresh_benches)
    step(5, n, "report")
    path = write_report(args.report, dataset, live, alarms, evaluation, benches, (args.report / "report.md").read_text())
    print(f"\nwrote {path} in {time.monotonic() - t0:.0f} s")
    return 0
