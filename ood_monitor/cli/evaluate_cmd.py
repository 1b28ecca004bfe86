"""`ood-monitor evaluate --data BAG_OR_FOLDER`: score a labelled recording with the VAE detectors and
report AUROC / AUPR-in / AUPR-out / FPR@95 per OOD kind and category, alarm detection delays and false
alarms per 1000 in-distribution frames, as Markdown + JSON + ROC/PR curves and score timelines (PNG)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from ood_monitor.cli.label_options import add_label_options, label_spec

if TYPE_CHECKING:
    from ood_monitor.data.labels import LabelSpec

MASK_TOPIC = "/ood/gt/mask"  # data.frames.DEFAULT_MASK_TOPIC (kept import-free here)
ALARM_FIELDS = ("martingale", "epsilon", "window", "martingale_threshold", "cusum_delta", "cusum_threshold",
                "pvalue_threshold", "p_floor")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="metrics, curves and timelines of the detectors on a labelled bag/folder")
    p.add_argument("--data", type=Path, required=True, help="rosbag2 bag (MCAP/sqlite3) or image folder with labels")
    p.add_argument("--models", type=Path, nargs="+", default=[Path("models/vae_image"), Path("models/vae_flow")],
                   help="model folders to evaluate (default models/vae_image models/vae_flow)")
    p.add_argument("--out", type=Path, default=Path("eval_report"), help="report folder (default eval_report)")
    p.add_argument("--image-topic", default="/camera/image_raw", help="image topic in a bag")
    p.add_argument("--mask-topic", default=MASK_TOPIC,
                   help="ground-truth mask topic in a bag (mono8, 255 = anomalous; without a label topic a "
                        "frame is OOD when its mask has any pixel)")
    p.add_argument("--params", type=Path,
                   help="take alarm settings from this ROS parameter file's detector sections and the anomaly-mask "
                        "analysis settings from its analysis_node section (without it: the shipped defaults)")
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
    add_label_options(p)
    p.set_defaults(func=run)


def node_parameters(params: Path | None, node: str) -> dict:
    """The ros__parameters of `/**/<node>` in a ROS parameter file ({} without a file or section)."""
    if params is None:
        return {}
    import yaml

    data = yaml.safe_load(params.read_text()) or {}
    return dict((data.get(f"/**/{node}") or {}).get("ros__parameters") or {})


def alarm_configs(params: Path | None, kind: str, tests: list[str]) -> dict:
    from ood_monitor.core.conformal import AlarmConfig

    section = node_parameters(params, f"vae_{kind}_detector")
    settings = {k: section[k] for k in ALARM_FIELDS if k in section}
    return {t: AlarmConfig(test=t, **settings) for t in tests}


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
                            n_segments=p.get("slic_segments", SlicSegmenter.n_segments))
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


def evaluate_model(model: Path, data: Path, out: Path, sources: dict, params: Path | None, tests: list[str],
                   cache: dict) -> dict:
    import torch

    from ood_monitor.core import plots
    from ood_monitor.core.conformal import score_threshold
    from ood_monitor.core.detector import score_frameset
    from ood_monitor.core.detector_evaluation import Labels, alarm_table, frame_table, group_masks
    from ood_monitor.core.model_dirs import resolve_model_dir
    from ood_monitor.core.model_input import FrameConfig
    from ood_monitor.core.vae.dataset import load_frames
    from ood_monitor.core.vae.io import load_encoder

    torch.set_num_threads(max(1, torch.get_num_threads()))
    path = resolve_model_dir(model)
    encoder, card = load_encoder(path)
    calibration = card.calibration_scores(path)
    key = (card.kind, card.config.height, card.config.width)
    if key not in cache:
        print(f"  reading {data} as {card.kind} frames {card.config.height}x{card.config.width} ...", flush=True)
        cache[key] = load_frames(data, card.kind, FrameConfig(card.config.width, card.config.height), **sources)
    frames = cache[key]
    scores = score_frameset(encoder, card, frames)
    labels = Labels(frames.is_ood, frames.category, frames.ood_kind, frames.episode)
    configs = alarm_configs(params, card.kind, tests)
    alarms, traces = alarm_table(calibration, scores, labels, configs)
    name = path.name
    groups = {k: v for k, v in group_masks(labels).items() if k.startswith("category:")}
    curves = plots.curves(out / f"curves_{name}.png", scores, frames.is_ood, groups, name)
    threshold = score_threshold(calibration, next(iter(configs.values())).pvalue_threshold)
    timeline = plots.timeline(out / f"timeline_{name}.png", scores, frames.is_ood, frames.ood_kind, traces,
                              threshold, f"{name} on {data.name}")
    return {"model": str(path), "kind": card.kind, "frames": len(frames), "nominal_frames": int((~frames.is_ood).sum()),
            "frame_metrics": frame_table(scores, labels), "alarms": alarms,
            "alarm_settings": {t: vars(c) for t, c in configs.items()},
            "plots": [curves.name, timeline.name]}


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


def evaluate_masks(args: argparse.Namespace) -> dict | None:
    """Pixel AUC-PR and F* of the synthesizer + analysis pipeline on the frames with ground-truth masks,
    with overlay PNGs; None when no synthesizer is configured or the data has no masks."""
    from dataclasses import asdict
    from itertools import islice

    from ood_monitor.core import plots
    from ood_monitor.core.analysis.mask_evaluation import MaskEvaluation, evaluate_masks, heat, overlay
    from ood_monitor.core.diffusion.synthesizer import Synthesizer
    from ood_monitor.core.model_dirs import resolve_model_dir
    from ood_monitor.core.model_input import FrameConfig
    from ood_monitor.data.labeled_frames import iter_frames

    if str(args.synthesizer) == "none":
        return None
    synth = Synthesizer.from_model_dir(resolve_model_dir(args.synthesizer))
    sources = frame_sources(args)
    anomaly_ids, ignore_ids = class_ids(args.data, sources["labels"])
    analyzer, choice, features = mask_analysis(args)
    cfg = FrameConfig(synth.image_size, synth.image_size)
    frames = (f for f in iter_frames(args.data, **sources) if f.mask is not None and f.mask.any())
    print(f"anomaly masks: {synth.name} ({synth.backend}) + {choice.segmenter.name} on {args.data} ...", flush=True)
    evs = evaluate_masks(islice(frames, args.max_mask_frames), synth.synthesize, analyzer, cfg,
                         {name: MaskEvaluation(anomaly_ids, ignore_ids) for name in ("object", "all")})
    evs = {name: ev for name, ev in evs.items() if ev.auc.frames}
    if not evs:
        return None
    main = evs.get("object", evs["all"])
    rows = [[img, syn, heat(conf), overlay(img, mask, gt)] for img, syn, conf, mask, gt in main.samples]
    png = plots.image_grid(args.out / "masks_overlay.png", rows,
                           ["input | synthesized | confidence | mask (red) vs ground truth (green)"] + [""] * (len(rows) - 1))
    return {"groups": {name: ev.result() for name, ev in evs.items()}, "synthesizer": synth.name,
            "segmenter": choice.segmenter.name, "segmenter_reason": choice.reason, "features": features,
            "analysis": asdict(analyzer.cfg), "plot": png.name}


def markdown(results: list[dict], data: Path) -> str:
    lines = [f"# Detector evaluation on `{data}`", ""]
    for r in results:
        lines += [f"## {Path(r['model']).name} ({r['kind']})", "",
                  f"{r['frames']} frames, {r['nominal_frames']} in distribution.", "",
                  "| OOD group | frames | AUROC | AUPR-in | AUPR-out | FPR@95TPR |", "|---|---|---|---|---|---|"]
        for group, m in r["frame_metrics"].items():
            lines.append(f"| {group} | {m['frames']} | {m['auroc']:.3f} | {m['aupr_in']:.3f} | {m['aupr_out']:.3f} "
                         f"| {m['fpr95']:.3f} |")
        lines += ["", "| alarm test | group | median delay (frames) | missed / episodes | false alarms / 1000 ID |",
                  "|---|---|---|---|---|"]
        for test, rows in r["alarms"].items():
            for group, a in rows.items():
                lines.append(f"| {test} | {group} | {a['median_delay']:.1f} | {a['missed_episodes']}/{a['ood_episodes']} "
                             f"| {a['false_alarms_per_1000']:.1f} |")
        lines += [""] + [f"![{p}]({p})" for p in r["plots"]] + [""]
    return "\n".join(lines)


def masks_markdown(m: dict) -> str:
    lines = ["## Anomaly masks (synthesizer + analysis)", "",
             f"Synthesizer `{m['synthesizer']}`, segmenter `{m['segmenter']}` ({m['segmenter_reason']}), "
             f"features {m['features']}. `object`: frames with object anomalies (the setting of anomalies by "
             "synthesis); `all`: every "
             "frame with a ground-truth mask (lens dirt too).", "",
             "| frames | count | pixel AUC-PR | F* | best τ | ms per frame (synthesis + analysis) |",
             "|---|---|---|---|---|---|"]
    for name, r in m["groups"].items():
        lines.append(f"| {name} | {r['frames']} | {r['auc_pr']:.3f} | {r['f_star']:.3f} | {r['f_star_tau']} "
                     f"| {r['ms_per_frame']:.0f} |")
    return "\n".join(lines + ["", f"![{m['plot']}]({m['plot']})", ""])


def run(args: argparse.Namespace) -> int:
    if not args.data.exists():
        raise FileNotFoundError(f"data not found: {args.data}")
    args.out.mkdir(parents=True, exist_ok=True)
    tests = [t.strip() for t in args.tests.split(",") if t.strip()]
    cache: dict = {}
    results = []
    for model in args.models:
        print(f"evaluating {model} on {args.data}", flush=True)
        results.append(evaluate_model(model, args.data, args.out, frame_sources(args), args.params, tests, cache))
    masks = evaluate_masks(args)
    (args.out / "evaluation.json").write_text(json.dumps(results, indent=2, default=float))
    text = markdown(results, args.data)
    if masks is not None:
        (args.out / "masks.json").write_text(json.dumps(masks, indent=2, default=float))
        text += "\n" + masks_markdown(masks)
        for name, r in masks["groups"].items():
            print(f"  anomaly masks ({name}): pixel AUC-PR {r['auc_pr']:.3f}, F* {r['f_star']:.3f} ({r['frames']} frames)")
    report = args.out / "report.md"
    report.write_text(text)
    for r in results:
        best = {g: m["auroc"] for g, m in r["frame_metrics"].items() if g.startswith("category:")}
        print(f"  {Path(r['model']).name}: AUROC " + ", ".join(f"{g[9:]} {v:.3f}" for g, v in best.items()))
    print(f"wrote {report}")
    return 0


