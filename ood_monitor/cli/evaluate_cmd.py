"""`ood-monitor evaluate --data BAG_OR_FOLDER [MORE ...]`: score labelled recordings with the VAE detectors
and report AUROC / AUPR-in / AUPR-out / FPR@95 per OOD kind and category, alarm detection delays and false
alarms per 1000 in-distribution frames, as Markdown + JSON + ROC/PR curves, score timelines (PNG) and the
per-frame scores (CSV); with several recordings, per-recording results and a ranking by alarmed time.

The alarms run as vae_detector_node runs them: the same settings (`alarm_settings`) and the alarm state
restarted where the node restarts it (stamp gaps over `max_gap_s`, stamps jumping back, a new recording)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ood_monitor.cli.engine_options import add_engine_options
from ood_monitor.cli.label_options import add_label_options, label_spec

if TYPE_CHECKING:
    from ood_monitor.data.labels import LabelSpec

MASK_TOPIC = "/ood/gt/mask"  # data.labeled_frames.DEFAULT_MASK_TOPIC (kept import-free here)
ALARM_FIELDS = ("martingale", "epsilon", "window", "martingale_threshold", "cusum_delta", "cusum_threshold",
                "pvalue_threshold", "p_floor", "tail", "tail_index", "score_tolerance", "frame_p_max")
SHIPPED_PARAMS = "config/default.yaml"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="metrics, curves and timelines of the detectors on a labelled bag/folder")
    p.add_argument("--data", nargs="+", required=True, metavar="PATH",
                   help="rosbag2 bags (MCAP/sqlite3) and/or image folders with labels; globs are expanded "
                        "(quote them: 'fleet/*/' 'robot3/2026-11-*')")
    p.add_argument("--models", type=Path, nargs="+", default=[Path("models/vae_image"), Path("models/vae_flow")],
                   help="model folders to evaluate (default models/vae_image models/vae_flow)")
    p.add_argument("--out", type=Path, default=Path("eval_report"), help="report folder (default eval_report)")
    p.add_argument("--image-topic", default="/camera/image_raw", help="image topic in a bag")
    p.add_argument("--mask-topic", default=MASK_TOPIC,
                   help="ground-truth mask topic in a bag (mono8, 255 = anomalous; without a label topic a "
                        "frame is OOD when its mask has any pixel)")
    p.add_argument("--params", type=Path,
                   help="take alarm settings (and max_gap_s) from this ROS parameter file's detector sections and "
                        "the anomaly-mask analysis settings from its analysis_node section; they override the "
                        "model's stored alarm settings (without it: the shipped config/default.yaml, then the "
                        "model's stored settings)")
    p.add_argument("--tests", default="martingale,cusum", help="alarm tests to run (default martingale,cusum)")
    p.add_argument("--synthesizer", type=Path, default=Path("models/latent_dit"),
                   help="anomaly masks: synthesizer model (default models/latent_dit); 'none' skips masks")
    p.add_argument("--segmenter", help="anomaly masks: auto | sam | sam_onnx | slic | felzenszwalb "
                                       "(default: the --params analysis_node segmenter, else auto)")
    p.add_argument("--sam-checkpoint", help="anomaly masks: SAM checkpoint for --segmenter sam "
                                            "(default: the --params analysis_node sam_checkpoint)")
    p.add_argument("--features", help="anomaly masks: discrepancy feature extractor "
                                      "(default: the --params analysis_node feature_extractor, else auto)")
    p.add_argument("--max-mask-frames", type=int, default=80, help="anomaly masks: frames evaluated at most")
    add_engine_options(p, "a Ray Data pipeline, one read task per recording (or --chunk-frames), actors that "
                          "load each model once", "scoring actors", chunks=True)
    p.add_argument("--batch", type=int, default=64, help="frames scored per batch (memory is this many frames)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of the local engine and of each Ray actor (default 1, as the shipped "
                        "inference_threads: on a busy CPU a second thread mostly waits)")
    add_label_options(p)
    p.set_defaults(func=run)


def node_parameters(params: Path | None, node: str) -> dict:
    """The ros__parameters of `/**/<node>` in a ROS parameter file ({} without a file or section)."""
    if params is None:
        return {}
    import yaml

    data = yaml.safe_load(params.read_text()) or {}
    return dict((data.get(f"/**/{node}") or {}).get("ros__parameters") or {})


def shipped_params() -> Path | None:
    """config/default.yaml as installed (working dir, share/ood_monitor, source tree), None if absent."""
    from ood_monitor.core.model_dirs import candidates

    return next((c for c in candidates(SHIPPED_PARAMS) if c.is_file()), None)


def alarm_settings(kind: str, stored, params: Path | None, tests: list[str]) -> tuple[dict, float, dict[str, str]]:
    """The alarm settings the detector node would run: the parameter file's explicit values (`params`, or
    without it the shipped config/default.yaml that `ood-monitor run` and the launch files load), and for
    the settings it leaves calibrated (0, "" or absent) the model's stored ones (`stored()`: the card's
    `alarm_settings`, ModelFileError when it has none). Returns ({test: AlarmConfig}, max_gap_s,
    {name: where it came from})."""
    from ood_monitor.core.alarm_calibration import UNCALIBRATED, resolve_alarm
    from ood_monitor.core.conformal import AlarmConfig
    from ood_monitor.fleet.scoring import NODE_MAX_GAP_S

    source = params if params is not None else shipped_params()
    section = node_parameters(source, f"vae_{kind}_detector") if source is not None else {}
    explicit = {k: section[k] for k in ALARM_FIELDS if section.get(k) not in (None, "", 0)}
    origin = {k: (str(source) if k in explicit else "model config.json alarm") for k in ALARM_FIELDS}
    max_gap_s = float(section.get("max_gap_s", NODE_MAX_GAP_S))
    origin["max_gap_s"] = str(source) if "max_gap_s" in section else "node default"
    if max_gap_s <= 0:
        raise ValueError(f"max_gap_s must be positive, got {max_gap_s} (from {origin['max_gap_s']})")
    for name in UNCALIBRATED:  # not calibrated: the node's default
        if name not in explicit:
            explicit[name], origin[name] = getattr(AlarmConfig, name), "node default"
    try:
        configs = {t: resolve_alarm(t, explicit, stored) for t in tests}
    except (TypeError, ValueError) as exc:
        raise ValueError(f"alarm settings for the {kind} detector ({origin}): {exc}") from exc
    return configs, max_gap_s, origin


def mask_analysis(args: argparse.Namespace, nominal: bool = True):
    """(Analyzer, SegmenterChoice, features description) as analysis_node runs them with the --params file's
    analysis_node section (the node's defaults, which are the dataclasses', without one); --segmenter,
    --sam-checkpoint and --features override the file. `nominal=False` leaves the nominal statistics out
    (not even read: fitting new ones must work when the old ones are broken)."""
    from ood_monitor.core.analysis import Analyzer, analysis_config
    from ood_monitor.core.analysis.discrepancy import make_feature_extractor
    from ood_monitor.core.analysis.nominal import load_nominal
    from ood_monitor.core.analysis.segmenters import AutoMaskConfig, SlicSegmenter, make_segmenter
    from ood_monitor.core.model_dirs import resolve_model_dir

    p = node_parameters(args.params, "analysis_node")  # absent names: the node's defaults (the dataclasses')
    for key, value in (("segmenter", args.segmenter), ("sam_checkpoint", args.sam_checkpoint),
                       ("feature_extractor", args.features)):
        if value is not None:
            p[key] = value
    dflt = AutoMaskConfig()
    auto = AutoMaskConfig(p.get("sam_points_per_side", dflt.points_per_side),
                          p.get("sam_pred_iou_thresh", dflt.pred_iou_thresh),
                          p.get("sam_stability_score_thresh", dflt.stability_score_thresh))
    choice = make_segmenter(p.get("segmenter", "auto"), p.get("sam_checkpoint", ""), p.get("sam_model_type", "vit_b"),
                            p.get("sam_onnx_dir", ""), fallback=p.get("fallback_segmenter", "slic"), auto=auto,
                            slic=SlicSegmenter(n_segments=p.get("slic_segments", SlicSegmenter.n_segments),
                                               iterations=p.get("slic_iterations", SlicSegmenter.iterations)))
    extractor, features = make_feature_extractor(p.get("feature_extractor", "auto"),
                                                 resolve_model_dir(p.get("models_dir", "models")))
    if not nominal:
        return Analyzer(analysis_config(p), choice.segmenter, extractor), choice, f"{features}; nominal statistics off"
    stats, nominal_desc = load_nominal(p.get("nominal_stats", "auto"), p.get("models_dir", "models"))
    return (Analyzer(analysis_config(p), choice.segmenter, extractor, stats), choice,
            f"{features}; nominal statistics {nominal_desc}")


def frame_sources(args: argparse.Namespace) -> dict:
    """Where the frames and their ground truth are: keyword arguments of `iter_frames`/`load_frames`."""
    return {"image_topic": args.image_topic, "mask_topic": getattr(args, "mask_topic", MASK_TOPIC),
            "labels": label_spec(args)}


def input_paths(args: argparse.Namespace) -> list[Path]:
    """--data as recordings (a single Path, as demo passes it, or a list of paths and globs)."""
    from ood_monitor.fleet.inputs import expand_inputs

    data = args.data if isinstance(args.data, list | tuple) else [args.data]
    return expand_inputs(data)


def run_engine(args: argparse.Namespace, paths: list[Path], job, scorers: list):
    """Score `paths` with `job` on --engine (evaluate, calibrate): the local engine with the `scorers`
    already loaded here, Ray with --workers actors; ValueError when no input could be read."""
    from ood_monitor.fleet.engines import score_sources

    fleet = score_sources(paths, job, getattr(args, "engine", "local"), getattr(args, "workers", 2),
                          getattr(args, "address", None), lambda m: print(m, flush=True),
                          threads=getattr(args, "threads", 1), scorers=scorers)
    fleet.require_some()
    return fleet


def evaluate_model(scorer, table, out: Path, title: str, params: Path | None, tests: list[str]) -> dict:
    """Metrics, alarms, plots and the per-frame CSV of one detector over `table` (its frames of every
    recording, in order)."""
    from ood_monitor.core import plots
    from ood_monitor.core.conformal import ConformalMonitor
    from ood_monitor.core.detector_evaluation import (
        alarm_table,
        detector_labels,
        frame_table,
        group_masks,
        stream_labels,
    )

    name, card = scorer.name, scorer.card
    configs, max_gap_s, origin = alarm_settings(card.kind, lambda: card.alarm_settings(scorer.path), params,
                                                 tests)
    labels = detector_labels(card.kind, stream_labels(table.is_ood, table.category, table.kind, table.episode,
                                                      table.stamp_ns, max_gap_s, table.source))
    scores = table.score
    alarms, traces = alarm_table(scorer.calibration, scores, labels, configs)
    metrics = frame_table(scores, labels)
    plots_written = []
    if metrics:
        groups = {k: v for k, v in group_masks(labels).items() if k.startswith("category:")}
        plots_written.append(plots.curves(out / f"curves_{name}.png", scores, labels.is_ood, groups, name).name)
    threshold = ConformalMonitor(scorer.calibration, next(iter(configs.values()))).score_threshold
    plots_written.append(plots.timeline(out / f"timeline_{name}.png", scores, labels, traces, configs, threshold,
                                        card.score, f"{name} on {title}").name)
    csv_path = write_scores_csv(out / f"scores_{name}.csv", table, labels, traces)
    return {"model": str(scorer.path), "kind": card.kind, "score": card.score_description, "frames": len(table),
            "nominal_frames": int((~labels.is_ood & labels.counted_mask()).sum()), "ood_frames": int(labels.is_ood.sum()),
            "sequences": int(labels.sequence.max() + 1) if len(table) else 0,
            "frame_metrics": metrics, "frame_metrics_note": frame_metrics_note(labels), "alarms": alarms,
            "alarm_settings": {t: vars(c) for t, c in configs.items()}, "max_gap_s": max_gap_s,
            "alarm_settings_from": origin, "plots": plots_written, "scores_csv": csv_path.name,
            "per_source": per_source_results(table, labels, traces, configs)}


def frame_metrics_note(labels) -> str:
    """Why frame metrics are missing ("" when they are not)."""
    if not labels.is_ood.any():
        return ("no frame is labelled OOD (labels.csv is_ood, masks/, a FrameLabel or mask topic, or --labels): "
                "AUROC needs OOD frames; false alarms are reported")
    if labels.is_ood.all():
        return "every frame is labelled OOD: AUROC needs in-distribution frames too"
    return ""


def per_source_results(table, labels, traces: dict, configs: dict) -> list[dict]:
    """Per recording: frames, alarmed frames and time under each test, labelled OOD frames, episodes
    missed (what a fleet report ranks by)."""
    import numpy as np

    from ood_monitor.core.detector_evaluation import counted_alarm_metrics

    rows = []
    for src in dict.fromkeys(table.source.tolist()):
        sel = table.source == src
        stamps = table.stamp_ns[sel]
        period = float(np.median(np.diff(stamps))) * 1e-9 if stamps.size > 1 else 0.0
        row = {"source": src, "frames": int(sel.sum()), "ood_frames": int(labels.is_ood[sel].sum()),
               "frame_period_s": period, "alarms": {}}
        for test, trace in traces.items():
            alarmed = trace["is_ood"][sel].astype(bool)
            m = counted_alarm_metrics(alarmed, labels.subset(sel))
            row["alarms"][test] = {"alarm_frames": int(alarmed.sum()), "alarm_s": float(alarmed.sum() * period),
                                   "alarm_fraction": float(alarmed.mean()) if alarmed.size else 0.0,
                                   "missed_episodes": m["missed_episodes"], "ood_episodes": m["ood_episodes"],
                                   "false_alarms_per_1000": m["false_alarms_per_1000"]}
        rows.append(row)
    return rows


def write_scores_csv(path: Path, table, labels, traces: dict) -> Path:
    """One row per scored frame: where it came from, its ground truth, the node's sequence, the score,
    p-value, martingale and CUSUM statistics and each test's alarm."""
    import csv

    first = next(iter(traces.values()))
    tests = list(traces)
    with path.open("w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["source", "frame", "stamp_ns", "sequence", "episode", "kind", "category", "is_ood", "score",
                    "p_value", "log_martingale", "cusum", *(f"alarm_{t}" for t in tests)])
        for i in range(len(table)):
            w.writerow([table.source[i], int(table.frame[i]), int(table.stamp_ns[i]), int(labels.sequence[i]),
                        int(labels.episode[i]), table.kind[i], table.category[i], int(labels.is_ood[i]),
                        repr(float(table.score[i])), repr(float(first["p_value"][i])),
                        repr(float(first["log_martingale"][i])), repr(float(first["cusum"][i])),
                        *(int(traces[t]["is_ood"][i]) for t in tests)])
    return path


def class_ids(data: Path, labels: LabelSpec | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(anomaly ids, ignored ids) of the semantic labels: from the class colour file and anomaly names
    the user gave, else from the dataset's classes.json (none: F* has no objects to score)."""
    from ood_monitor.data.labeled_frames import load_classes

    if labels is not None:
        label_set = labels.resolve(data)
        return label_set.anomaly_ids, label_set.ignore_ids
    try:
        classes = load_classes(data)
    except (FileNotFoundError, ValueError):
        classes = {}
    return (tuple(c.id for c in classes.values() if c.anomaly),
            tuple(c.id for c in classes.values() if c.name in ("unknown", "void")))


def fstar_note(data: str, anomaly_ids: tuple[int, ...], semantic_frames: int) -> str:
    """Why F* cannot be computed ("" when it can): it scores ground-truth objects, which come from
    semantic class images and the names of the anomaly classes."""
    if not anomaly_ids:
        return (f"F* not computed: no anomaly classes are known for {data} (a classes.json in or above the data "
                "folder with \"anomaly\": true classes, or --colormap/--anomaly-classes); pixel AUC-PR only")
    if semantic_frames == 0:
        return (f"F* not computed: the frames with masks in {data} have no semantic class images (semantic/ "
                "next to masks/, a /ood/gt/semantic topic, or --labels colour PNGs); pixel AUC-PR only")
    return ""


def mask_frames(paths: list[Path], sources: dict, skip: dict[str, str], seen: dict[str, int]):
    """Frames with a non-empty ground-truth mask, recording after recording (unreadable ones skipped:
    the scoring pass reported them); counts those with a semantic class image in seen["semantic"]."""
    from ood_monitor.data.labeled_frames import iter_frames

    for path in paths:
        if str(path) in skip:
            continue
        try:
            for f in iter_frames(path, **sources):
                if f.mask is not None and f.mask.any():
                    seen["semantic"] = seen.get("semantic", 0) + (f.semantic is not None)
                    yield f
        except (FileNotFoundError, ValueError, OSError) as exc:
            print(f"  anomaly masks: skipped {path}: {exc}", flush=True)


def evaluate_masks(args: argparse.Namespace, paths: list[Path] | None = None, skip: dict | None = None) -> dict | None:
    """Pixel AUC-PR and F* of the synthesizer + analysis pipeline on the frames with ground-truth masks,
    with overlay PNGs; None when no synthesizer is configured or the data has no masks."""
    from dataclasses import asdict
    from itertools import islice

    from ood_monitor.core import plots
    from ood_monitor.core.analysis.mask_evaluation import MaskEvaluation, evaluate_masks, heat, overlay
    from ood_monitor.core.diffusion.synthesizer import synthesizer_from_params
    from ood_monitor.core.model_dirs import resolve_model_dir
    from ood_monitor.core.model_input import FrameConfig

    if str(args.synthesizer) == "none":
        return None
    paths = paths if paths is not None else input_paths(args)
    # sampling as synthesizer_node runs with --params (its `sampling` preset and explicit values)
    synth = synthesizer_from_params(resolve_model_dir(args.synthesizer), node_parameters(args.params, "synthesizer_node"))
    sources = frame_sources(args)
    anomaly_ids, ignore_ids = class_ids(paths[0], sources["labels"])
    analyzer, choice, features = mask_analysis(args)
    cfg = FrameConfig(synth.image_size, synth.image_size)
    where = ", ".join(str(p) for p in paths[:3]) + (f" (+ {len(paths) - 3} more)" if len(paths) > 3 else "")
    print(f"anomaly masks: {synth.name} ({synth.backend}) + {choice.segmenter.name} on {where} ...", flush=True)
    seen: dict[str, int] = {}
    evs = evaluate_masks(islice(mask_frames(paths, sources, skip or {}, seen), args.max_mask_frames), synth.synthesize,
                         analyzer, cfg, {name: MaskEvaluation(anomaly_ids, ignore_ids) for name in ("object", "all")})
    evs = {name: ev for name, ev in evs.items() if ev.auc.frames}
    if not evs:
        return None
    main = evs.get("object", evs["all"])
    rows = [[img, syn, heat(conf), overlay(img, mask, gt)] for img, syn, conf, mask, gt in main.samples]
    png = plots.image_grid(args.out / "masks_overlay.png", rows,
                           ["input | synthesized | confidence | mask (red) vs ground truth (green)"] + [""] * (len(rows) - 1))
    groups = {}
    for name, ev in evs.items():
        r = ev.result()
        note = fstar_note(where, anomaly_ids, seen.get("semantic", 0))
        if note:
            r.update(f_star=None, f_star_tau=None)
        groups[name] = {**r, "f_star_note": note}
    return {"groups": groups, "synthesizer": synth.name,
            "segmenter": choice.segmenter.name, "segmenter_reason": choice.reason, "features": features,
            "analysis": asdict(analyzer.cfg), "plot": png.name}


def fmt(value, spec: str = ".3f") -> str:
    """A number for the tables; "n/a" for None/NaN (e.g. F* without semantic labels, no delay)."""
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    return format(value, spec)


def ranking(results: list[dict], test: str = "martingale") -> list[dict]:
    """Recordings by alarmed time under `test` (the node's default test), most first; all detectors'
    alarmed time summed per recording, so the fleet report's top rows are the recordings to look at."""
    totals: dict[str, dict] = {}
    for r in results:
        for row in r["per_source"]:
            a = row["alarms"].get(test) or next(iter(row["alarms"].values()))
            t = totals.setdefault(row["source"], {"source": row["source"], "frames": row["frames"],
                                                  "ood_frames": row["ood_frames"], "alarm_s": 0.0, "by_model": {}})
            t["alarm_s"] += a["alarm_s"]
            t["by_model"][Path(r["model"]).name] = {"alarm_frames": a["alarm_frames"], "alarm_s": a["alarm_s"],
                                                    "alarm_fraction": a["alarm_fraction"]}
    return sorted(totals.values(), key=lambda t: (-t["alarm_s"], t["source"]))


def markdown(results: list[dict], data: str, failed: dict[str, str] | None = None,
             ranked: list[dict] | None = None) -> str:
    lines = [f"# Detector evaluation on `{data}`", ""]
    if failed:
        lines += [f"**{len(failed)} input(s) could not be read and were skipped:**", ""]
        lines += [f"- `{path}`: {why}" for path, why in failed.items()] + [""]
    for r in results:
        settings = next(iter(r["alarm_settings"].values()), {})
        lines += [f"## {Path(r['model']).name} ({r['kind']}, score {r['score']})", "",
                  f"{r['frames']} frames, {r['nominal_frames']} in distribution, {r['sequences']} sequence(s) "
                  f"(the alarm state restarts at stamp gaps over {r['max_gap_s']:g} s, stamps jumping back and each "
                  f"recording). Alarm settings: window {settings.get('window')}, martingale threshold "
                  f"{settings.get('martingale_threshold')}, CUSUM threshold {settings.get('cusum_threshold')} "
                  f"(from {', '.join(sorted(set(r['alarm_settings_from'].values())))}). Per-frame scores: "
                  f"`{r['scores_csv']}`.", ""]
        if r["frame_metrics_note"]:
            lines += [f"Frame metrics: {r['frame_metrics_note']}.", ""]
        else:
            lines += ["| OOD group | frames | AUROC | AUPR-in | AUPR-out | FPR@95TPR |", "|---|---|---|---|---|---|"]
            for group, m in r["frame_metrics"].items():
                lines.append(f"| {group} | {m['frames']} | {m['auroc']:.3f} | {m['aupr_in']:.3f} | "
                             f"{m['aupr_out']:.3f} | {m['fpr95']:.3f} |")
            lines.append("")
        lines += ["| alarm test | group | median delay (frames) | missed / episodes | false alarms / 1000 ID |",
                  "|---|---|---|---|---|"]
        for test, rows in r["alarms"].items():
            for group, a in rows.items():
                lines.append(f"| {test} | {group} | {fmt(a['median_delay'], '.1f')} | "
                             f"{a['missed_episodes']}/{a['ood_episodes']} | {a['false_alarms_per_1000']:.1f} |")
        lines += [""] + [f"![{p}]({p})" for p in r["plots"]] + [""]
    if ranked and len(ranked) > 1:
        lines += ["## Recordings by alarmed time (martingale, all detectors)", "",
                  "| rank | recording | frames | labelled OOD frames | alarmed s | "
                  + " | ".join(f"{m} alarmed" for m in ranked[0]["by_model"]) + " |",
                  "|---|---|---|---|---|" + "---|" * len(ranked[0]["by_model"])]
        for k, t in enumerate(ranked, 1):
            cells = " | ".join(f"{v['alarm_fraction']:.1%}" for v in t["by_model"].values())
            lines.append(f"| {k} | `{t['source']}` | {t['frames']} | {t['ood_frames']} | {t['alarm_s']:.1f} | {cells} |")
        lines.append("")
    return "\n".join(lines)


def masks_markdown(m: dict) -> str:
    lines = ["## Anomaly masks (synthesizer + analysis)", "",
             f"Synthesizer `{m['synthesizer']}`, segmenter `{m['segmenter']}` ({m['segmenter_reason']}), "
             f"features {m['features']}. `object`: frames with object anomalies (the setting of Jiang et al., "
             "\"Efficient Anomaly Detection using Diffusion Models\"); `all`: every frame with a ground-truth mask "
             "(lens dirt too).", "",
             "| frames | count | pixel AUC-PR | F* | best τ | ms per frame (synthesis + analysis) |",
             "|---|---|---|---|---|---|"]
    for name, r in m["groups"].items():
        lines.append(f"| {name} | {r['frames']} | {fmt(r['auc_pr'])} | {fmt(r['f_star'])} | {fmt(r['f_star_tau'], '')} "
                     f"| {r['ms_per_frame']:.0f} |")
    notes = sorted({r["f_star_note"] for r in m["groups"].values() if r.get("f_star_note")})
    return "\n".join(lines + [""] + notes + ["", f"![{m['plot']}]({m['plot']})", ""])


def run(args: argparse.Namespace) -> int:
    from ood_monitor.cli.provenance import note_if_foreign
    from ood_monitor.fleet.engines import ScoringJob
    from ood_monitor.fleet.inputs import describe
    from ood_monitor.fleet.scoring import ModelScorer

    paths = input_paths(args)
    args.out.mkdir(parents=True, exist_ok=True)
    tests = [t.strip() for t in args.tests.split(",") if t.strip()]
    scorers = [ModelScorer(m) for m in args.models]
    for scorer in scorers:
        for path in paths:
            note_if_foreign(scorer.path, scorer.card.data, path)  # prints once per model and origin
    sources = frame_sources(args)
    job = ScoringJob([str(s.path) for s in scorers], sources["image_topic"], sources["mask_topic"],
                     sources["labels"], getattr(args, "batch", 64), chunk_frames=getattr(args, "chunk_frames", None))
    engine = getattr(args, "engine", "local")
    title = describe(paths)
    print(f"evaluating {', '.join(s.name for s in scorers)} on {title} ({len(paths)} recording(s), engine {engine})",
          flush=True)
    fleet = run_engine(args, paths, job, scorers)
    results = []
    for i, scorer in enumerate(scorers):
        table = fleet.table(i)
        if not len(table):
            raise ValueError(f"no {scorer.kind} frames for {scorer.name} in {title}"
                             + (" (flow needs at least two consecutive frames)" if scorer.kind == "flow" else ""))
        results.append(evaluate_model(scorer, table, args.out, title, args.params, tests))
    ranked = ranking(results)
    masks = evaluate_masks(args, paths, fleet.failed)
    (args.out / "evaluation.json").write_text(json.dumps(results, indent=2, default=float))
    summary = {"inputs": [str(p) for p in paths], "failed": fleet.failed, "engine": fleet.engine,
               "workers": fleet.workers, "tasks": fleet.tasks, "chunk_frames": job.chunk_frames,
               "frames": fleet.frames, "scoring_s": fleet.seconds, "ranking": ranked}
    (args.out / "fleet.json").write_text(json.dumps(summary, indent=2, default=float))
    text = markdown(results, title, fleet.failed, ranked)
    if masks is not None:
        (args.out / "masks.json").write_text(json.dumps(masks, indent=2, default=float))
        text += "\n" + masks_markdown(masks)
        for name, r in masks["groups"].items():
            print(f"  anomaly masks ({name}): pixel AUC-PR {fmt(r['auc_pr'])}, F* {fmt(r['f_star'])} "
                  f"({r['frames']} frames)" + (f"; {r['f_star_note']}" if r["f_star_note"] else ""))
    report = args.out / "report.md"
    report.write_text(text)
    for r in results:
        if r["frame_metrics_note"]:
            print(f"  {Path(r['model']).name}: {r['frame_metrics_note']}")
        else:
            best = {g: m["auroc"] for g, m in r["frame_metrics"].items() if g.startswith("category:")}
            print(f"  {Path(r['model']).name}: AUROC " + ", ".join(f"{g[9:]} {v:.3f}" for g, v in best.items()))
        for test, rows in r["alarms"].items():
            a = rows["all"]
            print(f"    {test}: {a['missed_episodes']}/{a['ood_episodes']} episodes missed, median delay "
                  f"{fmt(a['median_delay'], '.1f')}, {a['false_alarms_per_1000']:.1f} false alarms / 1000 ID frames"
                  + (f" ({a['false_alarm_frames']} frames in {a['false_alarm_events']} alarm(s))"
                     if a.get("false_alarm_frames") else ""))
    print(f"wrote {report} and {', '.join(r['scores_csv'] for r in results)} ({fleet.frames} frames scored in "
          f"{fleet.seconds:.1f} s)")
    if fleet.failed:
        print(fleet.failure_note("evaluate"), file=sys.stderr)
        return 1
    return 0
