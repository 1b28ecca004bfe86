"""`ood-monitor bench real`: the whole user workflow on real camera footage, per recording.

For each recording that `ood-monitor data real` built, the bench runs what a user runs, through the same
CLI entry (`ood_monitor.cli.main.main`): `train vae` (image, flow), `train dcae` + `train dit` +
`calibrate-analysis` (unless --no-masks), `calibrate` on the calibration split, and `evaluate` on the test
split. It then reads evaluate's report and adds one pass per detector that scores the OOD kinds' alarms
one by one (alarm state restarted at the test split's stamp gaps, as the node restarts it).

Recordings named with --tune are the ones settings may be chosen on; every row says whether it is a
`tune` or a `report` row, and only `report` rows count for the targets (docs/real_footage.md).
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

STAMP_BREAK = 1.5  # a stamp step longer than this many frame periods restarts the stream (as the node)
FULL = {"vae_seconds": None, "dcae_steps": 1500, "dcae_seconds": 240, "dit_steps": 3000, "dit_seconds": 360,
        "analysis_frames": 300, "analysis_clusters": 12, "mask_frames": 80}
QUICK = {"vae_seconds": 15, "vae_epochs": 2, "dcae_steps": 4, "dcae_seconds": 15, "dit_steps": 4,
         "dit_seconds": 15, "analysis_frames": 4, "analysis_clusters": 2, "mask_frames": 2}


def register(stages: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = stages.add_parser("real", help="train, calibrate and evaluate on real footage (ood-monitor data real)")
    p.add_argument("--data", type=Path, default=Path("real_data"), help="output of `ood-monitor data real`")
    p.add_argument("--work", type=Path, default=Path("bench_real"), help="models and reports per recording")
    p.add_argument("--recordings", default="", help="comma-separated recordings to run (default: all)")
    p.add_argument("--tune", default="", help="comma-separated recordings settings may be tuned on; "
                                              "the others are reported (default: none tuned)")
    p.add_argument("--params", type=Path, default=Path("config/default.yaml"),
                   help="ROS parameter file the alarms and the analysis start from (default: the shipped one)")
    p.add_argument("--no-masks", action="store_true", help="skip the DC-AE, DiT and anomaly-mask evaluation")
    p.add_argument("--keep-models", action="store_true",
                   help="reuse the models an earlier run trained in --work (recalibrate and evaluate only)")
    p.add_argument("--tail", choices=("pareto", "none"), default="pareto",
                   help="`calibrate --tail`: p-values past the largest calibration score (default pareto)")
    p.add_argument("--score-tolerance", default="", metavar="K|auto",
                   help="`calibrate --score-tolerance` of both detectors (default: calibrate's)")
    p.add_argument("--extra-calibration", nargs="+", type=Path, default=[], metavar="PATH",
                   help="more nominal recordings of the same camera (other sessions) that `calibrate` reads "
                        "beside the recording's calibration split")
    p.add_argument("--train-to-steps", action="store_true",
                   help=f"train the DC-AE and DiT to their step counts ({FULL['dcae_steps']:,} and "
                        f"{FULL['dit_steps']:,}) instead of stopping at {FULL['dcae_seconds'] // 60} and "
                        f"{FULL['dit_seconds'] // 60} minutes (on a 2-core CPU: about 8 and 13 minutes)")
    p.add_argument("--train-device", default="cpu",
                   help="where the VAEs, DC-AE and DiT train: cpu, cuda or cuda:N (`train vae|dcae|dit --device`; "
                        "calibration and evaluation stay on the CPU) (default cpu)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--tests", default="martingale,cusum", help="alarm tests (default martingale,cusum)")
    p.add_argument("--markdown", type=Path, help="also write the tables as Markdown (docs/real_footage.md's form)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ood_monitor.core.benchmark import format_table, machine_info, write_report
    from ood_monitor.core.devices import training_device

    try:  # a GPU that is not there is refused before an hour of work, not after (every model trains there)
        training_device(args.train_device)
    except ValueError as exc:
        raise ValueError(f"--train-device {args.train_device}: {exc}") from None
    names = recordings(args.data, args.recordings)
    tune = {n.strip() for n in args.tune.split(",") if n.strip()}
    unknown = tune - set(names)
    if unknown:
        raise ValueError(f"--tune names no recording of {args.data}: {sorted(unknown)} (have {names})")
    budget = QUICK if args.quick else FULL
    rows, summaries = [], []
    for name in names:
        role = "tune" if name in tune else "report"
        started = time.perf_counter()
        summary = bench_recording(args, args.data / name, args.work / name, budget)
        summary.update(recording=name, role=role, seconds=time.perf_counter() - started)
        summaries.append(summary)
        rows += [{"recording": name, "role": role, **r} for r in summary.pop("rows")]
    columns = ["recording", "role", "kind", "category", "mad128", "image_auroc", "flow_auroc",
               "martingale", "martingale_delay", "cusum", "cusum_delay"]
    print(format_table(rows, columns))
    print()
    print(format_table(summaries, ["recording", "role", "calibration_frames", "p_reference", "clean_frames",
                                   "vae_image_clean_p_below_0.05", "vae_flow_clean_p_below_0.05",
                                   "vae_image_max_log_martingale", "martingale_threshold",
                                   "fa_per_1000_martingale", "fa_per_1000_cusum", "held_out_frames",
                                   "held_out_fa_per_1000_martingale", "held_out_fa_per_1000_cusum",
                                   "pixel_auc_pr", "f_star", "seconds"]))
    report = write_report(rows, machine_info(torch_threads=args.threads), args.json, recordings=summaries,
                          data=str(args.data), quick=bool(args.quick), budget=budget,
                          train_to_steps=bool(args.train_to_steps), train_device=args.train_device)
    if args.markdown:
        args.markdown.write_text(markdown(report))
        print(f"wrote {args.markdown}")
    if args.json:
        print(f"wrote {args.json}")
    return 0


def recordings(data: Path, only: str) -> list[str]:
    index = data / "real_footage.json"
    if not index.is_file():
        raise FileNotFoundError(f"{index} not found: build the benchmark with `ood-monitor data real --out {data}`")
    names = json.loads(index.read_text())["recordings"]
    chosen = [n.strip() for n in only.split(",") if n.strip()] or names
    missing = [n for n in chosen if n not in names]
    if missing:
        raise ValueError(f"no recording {missing} in {data} (have {names})")
    return chosen


def cli(argv: list[str]) -> None:
    """One `ood-monitor` command, exactly as a user types it; a failure stops the bench with its command."""
    from ood_monitor.cli.main import main

    print("$ ood-monitor " + " ".join(argv), flush=True)
    rc = main(argv)
    if rc != 0:
        raise RuntimeError(f"`ood-monitor {' '.join(argv)}` failed with exit code {rc}")


def diffusion_schedule(budget: dict, model: str, to_steps: bool, device: str = "cpu") -> list[str]:
    """`train dcae` / `train dit` options for the budget: its steps, and its time limit unless `to_steps`
    (the limit keeps a 2-core run under 20 minutes; trained to the steps the models are what a user who
    waits gets), and the device unless the CPU."""
    limit = [] if to_steps else ["--time-limit", str(budget[f"{model}_seconds"])]
    return ["--steps", str(budget[f"{model}_steps"]), *limit, *([] if device == "cpu" else ["--device", device])]


def bench_recording(args: argparse.Namespace, data: Path, work: Path, budget: dict) -> dict:
    """Train, calibrate, evaluate on one recording; returns its kind rows and summary figures."""
    train, calibration, test = data / "train", data / "calibration", data / "test"
    work.mkdir(parents=True, exist_ok=True)
    threads = ["--threads", str(args.threads)]
    vae = ["--time-limit", str(budget["vae_seconds"])] if budget.get("vae_seconds") else []  # full: the CLI defaults
    if "vae_epochs" in budget:
        vae += ["--epochs", str(budget["vae_epochs"])]
    if args.train_device != "cpu":
        vae += ["--device", args.train_device]
    for kind in ("image", "flow"):
        if not kept(args, work / f"vae_{kind}"):
            cli(["train", "vae", "--kind", kind, "--data", str(train), "--out", str(work / f"vae_{kind}"), *vae,
                 *threads])
    params = write_params(args.params, work)
    synthesizer = "none"
    if not args.no_masks:
        if not kept(args, work / "dcae"):
            cli(["train", "dcae", "--data", str(train), "--out", str(work / "dcae"),
                 *diffusion_schedule(budget, "dcae", args.train_to_steps, args.train_device), *threads])
        if not kept(args, work / "latent_dit"):
            cli(["train", "dit", "--data", str(train), "--dcae", str(work / "dcae"), "--out", str(work / "latent_dit"),
                 *diffusion_schedule(budget, "dit", args.train_to_steps, args.train_device), *threads])
        cli(["calibrate-analysis", "--data", str(calibration), "--synthesizer", str(work / "latent_dit"),
             "--params", str(params), "--out", str(work / "analysis_nominal"), "--every", "1",
             "--max-frames", str(budget["analysis_frames"]), "--clusters", str(budget["analysis_clusters"]), *threads])
        synthesizer = str(work / "latent_dit")
    models = [str(work / "vae_image"), str(work / "vae_flow")]
    for model in models:
        cli(["calibrate", "--model", model, "--data", str(calibration), *map(str, args.extra_calibration),
             "--tail", args.tail, *(["--score-tolerance", args.score_tolerance] if args.score_tolerance else []),
             *threads])
    report = work / "eval"
    (report / "masks.json").unlink(missing_ok=True)  # an earlier run's masks must not count for this one
    cli(["evaluate", "--data", str(test), "--models", *models, "--out", str(report), "--params", str(params),
         "--tests", args.tests, "--synthesizer", synthesizer, "--max-mask-frames", str(budget["mask_frames"])])
    tests = [t.strip() for t in args.tests.split(",") if t.strip()]
    return summarize(data, report, models, params, tests)


def kept(args: argparse.Namespace, model: Path) -> bool:
    """--keep-models and an earlier run left this model: say so and reuse it."""
    if args.keep_models and (model / "config.json").is_file():
        print(f"reusing {model} (--keep-models)", flush=True)
        return True
    return False


def write_params(base: Path, work: Path) -> Path:
    """The shipped parameter file with the analysis pointed at this recording's models."""
    import yaml

    data = yaml.safe_load(base.read_text()) if base.is_file() else {}
    section = data.setdefault("/**/analysis_node", {}).setdefault("ros__parameters", {})
    section["models_dir"] = str(work)
    section["nominal_stats"] = str(work / "analysis_nominal")
    out = work / "params.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def summarize(data: Path, report: Path, models: list[str], params: Path, tests: list[str]) -> dict:
    """Kind rows (AUROC from evaluate's report, alarms per kind from `kind_alarms`) and recording figures."""
    evaluation = {Path(r["model"]).name: r for r in json.loads((report / "evaluation.json").read_text())}
    masks_path = report / "masks.json"
    masks = json.loads(masks_path.read_text()) if masks_path.is_file() else None
    dataset = json.loads((data / "dataset.json").read_text())
    checks = {Path(m).name: kind_alarms(Path(m), data / "test", params, tests) for m in models}
    alarms = {name: c["alarms"] for name, c in checks.items()}
    rows = []
    for episode in dataset["episodes"]:
        kind = episode["kind"]
        row = {"kind": kind, "category": episode["category"], "mad128": episode["mad128"],
               "visible": episode["visible"]}
        for r in evaluation.values():
            m = r["frame_metrics"].get(f"kind:{kind}")
            row[f"{r['kind']}_auroc"] = m["auroc"] if m else None
        for test in tests:
            found = {name: a[test].get(f"category:{kind}") for name, a in alarms.items()}
            delays = [a["median_delay"] for a in found.values() if a and a["missed_episodes"] < a["ood_episodes"]]
            row[test] = "detected" if delays else "missed"
            row[f"{test}_delay"] = float(min(delays)) if delays else None
            for name, a in found.items():
                row[f"{name}_{test}_delay"] = a["median_delay"] if a else None
        rows.append(row)
    repeats = repeat_check(data / "test", repeat_limit(params))
    for row in rows:
        row["repeat_check"], row["repeat_check_delay"] = repeats["kinds"].get(row["kind"], ("missed", None))
    first = next(iter(checks.values()))
    summary: dict = {"rows": rows, "calibration_frames": first["calibration_frames"],
                     "p_reference": first["p_reference"],
                     "clean_frames": int(sum(1 for _ in nominal_rows(data / "test")))}
    for test in tests:
        per = {name: a[test]["all"]["false_alarms_per_1000"] for name, a in alarms.items()}
        summary[f"fa_per_1000_{test}"] = max(per.values())
        summary.update({f"{name}_fa_per_1000_{test}": v for name, v in per.items()})
    summary.update({f"{Path(m).name}_shortest_episode": shortest_episode(Path(m)) for m in models})
    for name, c in checks.items():
        summary[f"{name}_clean_p_below_0.05"] = c["coverage"]
        summary[f"{name}_max_log_martingale"] = c["max_log_martingale"]
        summary[f"{name}_score_tolerance"] = c["score_tolerance"]
    summary["fa_per_1000_repeat_check"] = repeats["fa_per_1000"]
    summary["martingale_threshold"] = first["martingale_threshold"]
    summary["evaluate_alarms"] = {name: r["alarms"] for name, r in evaluation.items()}
    summary["evaluate_alarm_settings"] = {name: r["alarm_settings"] for name, r in evaluation.items()}
    if (data / "held_out").is_dir():
        summary.update(held_out_alarms(models, data / "held_out", params, tests))
    if masks is not None:
        group = masks["groups"].get("object") or masks["groups"]["all"]
        summary.update(pixel_auc_pr=group["auc_pr"], f_star=group["f_star"], mask_frames=group["frames"])
    return summary


def shortest_episode(model: Path) -> int | None:
    """The fewest frames far outside the calibration that the model's calibrated martingale needs to alarm
    (`calibrate`'s power figure, stored in the card; None for a model calibrated without alarms)."""
    card = json.loads((model / "config.json").read_text())
    return card.get("alarm", {}).get("power", {}).get("shortest_episode_frames", {}).get("martingale")


def held_out_alarms(models: list[str], held_out: Path, params: Path, tests: list[str]) -> dict:
    """False alarms per 1000 frames over the recording's whole held-out stretch (`data real`'s held_out split:
    one clean run in order, no episodes), per detector and the larger of the two, per test. Why beside the
    test split's: its clean frames are 16 per episode in blocks that restart the alarms, a few hundred in
    all; a rate of 1 per 1000 needs thousands of frames in one stream to be seen at all."""
    checks = {Path(m).name: kind_alarms(Path(m), held_out, params, tests) for m in models}
    out: dict = {"held_out_frames": int(sum(1 for _ in nominal_rows(held_out)))}
    for test in tests:
        per = {name: c["alarms"][test]["all"]["false_alarms_per_1000"] for name, c in checks.items()}
        out[f"held_out_fa_per_1000_{test}"] = max(per.values())
        out.update({f"{name}_held_out_fa_per_1000_{test}": v for name, v in per.items()})
        out.update({f"{name}_held_out_alarms_{test}": c["alarms"][test]["all"]["false_alarm_events"]
                    for name, c in checks.items()})
    out.update({f"{name}_held_out_p_below_0.05": c["coverage"] for name, c in checks.items()})
    return out


def repeat_limit(params: Path) -> int:
    """preprocess_node's `max_repeated_frames` in the parameter file (its default where absent)."""
    from ood_monitor.cli.evaluate_cmd import node_parameters
    from ood_monitor.core.frozen import RepeatCounter

    return int(node_parameters(params, "preprocess_node").get("max_repeated_frames", RepeatCounter.limit))


def repeat_check(test: Path, limit: int) -> dict:
    """preprocess_node's frozen-camera check (core/frozen.py) over the test split's camera frames in
    stream order, one counter throughout as in the node: per OOD kind ("detected", frames from onset to
    the first frozen frame) or ("missed", None), and frozen clean frames per 1000."""
    from ood_monitor.core.frozen import RepeatCounter
    from ood_monitor.data.labeled_frames import iter_frames

    counter, kinds, clean, flagged = RepeatCounter(limit), {}, 0, 0
    for frame in iter_frames(test):
        counter.update(frame.image)
        if not frame.is_ood:
            clean += 1
            flagged += counter.frozen
        elif counter.frozen and frame.kind not in kinds:
            kinds[frame.kind] = ("detected", float(frame.index - frame.onset_frame))
    return {"kinds": kinds, "fa_per_1000": 1000.0 * flagged / max(clean, 1)}


def nominal_rows(test: Path):
    with (test / "labels.csv").open(newline="", encoding="utf-8") as handle:
        yield from (r for r in csv.DictReader(handle) if r["is_ood"] in ("0", "false", "False"))


def stream_sequences(test: Path, index: np.ndarray) -> np.ndarray:
    """Sequence id per frame index: a new sequence wherever the stamps jump (gap or step back)."""
    with (test / "labels.csv").open(newline="", encoding="utf-8") as handle:
        rows = sorted((int(r["frame"]), int(r["stamp_ns"])) for r in csv.DictReader(handle))
    frames = np.array([f for f, _ in rows])
    stamps = np.array([s for _, s in rows], np.int64)
    steps = np.diff(stamps)
    period = float(np.median(steps)) if steps.size else 1.0
    breaks = np.concatenate([[0], np.cumsum((steps <= 0) | (steps > STAMP_BREAK * period))])
    lookup = dict(zip(frames.tolist(), breaks.tolist(), strict=True))
    return np.array([lookup[int(i)] for i in index], np.int64)


def kind_alarms(model: Path, test: Path, params: Path, tests: list[str]) -> dict:
    """One calibrated detector on the test split: alarm metrics per OOD kind ("category:<kind>") and over
    all frames, per test; `coverage`, the share of clean frames with p < 0.05 (about 0.05 when calibration
    covers the nominal variation; scores divided by the score tolerance, as the monitor does); `max_log_martingale`, the highest log martingale the window can reach
    at the conformal floor (with the Pareto tail: at a score twice the largest nominal one), beside the
    threshold."""
    from ood_monitor.cli.evaluate_cmd import alarm_settings
    from ood_monitor.core.alarm_calibration import reference_p
    from ood_monitor.core.conformal import log_mixture_martingale, p_values, tail_index_for
    from ood_monitor.core.detector import score_frameset
    from ood_monitor.core.detector_evaluation import Labels, alarm_table, detector_labels
    from ood_monitor.core.model_input import FrameConfig
    from ood_monitor.core.vae.dataset import load_frames
    from ood_monitor.core.vae.io import load_encoder

    encoder, card = load_encoder(model)
    calibration = card.calibration_scores(model)
    frames = load_frames(test, card.kind, FrameConfig(card.config.width, card.config.height))
    sequence = stream_sequences(test, frames.index)
    scores = score_frameset(encoder, card, frames, sequence=sequence)
    labels = detector_labels(card.kind, Labels(frames.is_ood, frames.ood_kind, frames.ood_kind, frames.episode,
                                               sequence))
    configs, _, _ = alarm_settings(card.kind, lambda: card.alarm_settings(model), params, tests)
    results, _ = alarm_table(calibration, scores, labels, configs)
    cfg = next(iter(configs.values()))
    clean = ~labels.is_ood & labels.counted_mask()
    p = p_values(np.sort(calibration), scores[clean], floor=0.0, tolerance=cfg.score_tolerance)
    # what the window reaches at the conformal floor, or with the tail at a score twice the largest nominal one
    floor = reference_p(len(calibration), tail_index_for(np.sort(calibration), cfg), cfg.p_floor)
    return {"alarms": results, "coverage": float(np.mean(p < 0.05)),
            "calibration_frames": len(calibration), "p_reference": floor,
            "max_log_martingale": log_mixture_martingale(cfg.window * float(np.log(floor)), cfg.window),
            "martingale_threshold": cfg.martingale_threshold, "window": cfg.window,
            "score_tolerance": cfg.score_tolerance}

def _cell(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(report: dict) -> str:
    """Per-kind and per-recording tables of a `bench real` report."""
    lines = ["| recording | role | kind | category | MAD@128 | image AUROC | flow AUROC | martingale (delay) "
             "| CUSUM (delay) | frozen-camera check (delay) |", "|---|---|---|---|---|---|---|---|---|---|"]
    order = {"global": 0, "scene": 1, "object": 2, "motion": 3}
    for r in sorted(report["rows"], key=lambda r: (r["recording"], order.get(r["category"], 9), r["kind"])):
        alarms = [f"{r[t]} ({_cell(r.get(t + '_delay'), 0)})" if r.get(t) == "detected" else r.get(t, "-")
                  for t in ("martingale", "cusum", "repeat_check")]
        mad = _cell(r["mad128"], 1) + ("" if r.get("visible", True) else " (not visible)")
        lines.append(f"| {r['recording']} | {r['role']} | {r['kind']} | {r['category']} | {mad} "
                     f"| {_cell(r.get('image_auroc'))} | {_cell(r.get('flow_auroc'))} | {alarms[0]} | {alarms[1]} "
                     f"| {alarms[2]} |")
    lines += ["", "| recording | role | calibration frames | p-value at 2x the largest nominal score | score tolerance "
              "(image, flow) | clean test frames | clean frames with p < 0.05 (image, flow) | reachable log martingale / threshold "
              "(shortest catchable episode: image, flow) | false alarms / 1000 clean (martingale: "
              "image, flow; CUSUM; frozen-camera check) | held-out run: frames, false alarms / 1000 (martingale: image, flow; CUSUM) "
              "| object pixel AUC-PR | object F* | minutes |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in report["recordings"]:
        lines.append(f"| {s['recording']} | {s['role']} | {s['calibration_frames']} | {s['p_reference']:.2g} "
                     f"| {_cell(s.get('vae_image_score_tolerance'))}, {_cell(s.get('vae_flow_score_tolerance'))} "
                     f"| {s['clean_frames']} | {_cell(s.get('vae_image_clean_p_below_0.05'))}, "
                     f"{_cell(s.get('vae_flow_clean_p_below_0.05'))} | {_cell(s.get('vae_image_max_log_martingale'), 1)}"
                     f" / {_cell(s.get('martingale_threshold'), 0)} ({s.get('vae_image_shortest_episode', '-')}, "
                     f"{s.get('vae_flow_shortest_episode', '-')} frames) "
                     f"| {_cell(s.get('vae_image_fa_per_1000_martingale'), 1)}, "
                     f"{_cell(s.get('vae_flow_fa_per_1000_martingale'), 1)}; {_cell(s.get('fa_per_1000_cusum'), 1)}; "
                     f"{_cell(s.get('fa_per_1000_repeat_check'), 1)} | {held_out_cell(s)} "
                     f"| {_cell(s.get('pixel_auc_pr'))} "
                     f"| {_cell(s.get('f_star'))} | {s['seconds'] / 60:.0f} |")
    return "\n".join(lines) + "\n"


def held_out_cell(s: dict) -> str:
    """The held-out run's cell of the recording table ("-" for a build without the held_out split)."""
    if "held_out_frames" not in s:
        return "-"
    def rate(name: str) -> str:  # per 1000 frames, and the alarms (runs of frames) behind it
        events = s.get(f"{name}_held_out_alarms_martingale")
        return _cell(s.get(f"{name}_held_out_fa_per_1000_martingale"), 1) + (f" ({events} alarms)" if events else "")

    return f"{s['held_out_frames']}: {rate('vae_image')}, {rate('vae_flow')}; {_cell(s.get('held_out_fa_per_1000_cusum'), 1)}"
