"""`ood-monitor evaluate --data BAG_OR_FOLDER`: score a labelled recording with the VAE detectors and
report AUROC / AUPR-in / AUPR-out / FPR@95 per OOD kind and category, alarm detection delays and false
alarms per 1000 in-distribution frames, as Markdown + JSON + ROC/PR curves and score timelines (PNG)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ALARM_FIELDS = ("martingale", "epsilon", "window", "martingale_threshold", "cusum_delta", "cusum_threshold",
                "pvalue_threshold", "p_floor")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="metrics, curves and timelines of the detectors on a labelled bag/folder")
    p.add_argument("--data", type=Path, required=True, help="rosbag2 bag (MCAP/sqlite3) or image folder with labels")
    p.add_argument("--models", type=Path, nargs="+", default=[Path("models/vae_image"), Path("models/vae_flow")],
                   help="model folders to evaluate (default models/vae_image models/vae_flow)")
    p.add_argument("--out", type=Path, default=Path("eval_report"), help="report folder (default eval_report)")
    p.add_argument("--image-topic", default="/camera/image_raw", help="image topic in a bag")
    p.add_argument("--params", type=Path, help="take alarm settings from this ROS parameter file's detector sections")
    p.add_argument("--tests", default="martingale,cusum", help="alarm tests to run (default martingale,cusum)")
    p.set_defaults(func=run)


def alarm_configs(params: Path | None, kind: str, tests: list[str]) -> dict:
    from ood_monitor.core.conformal import AlarmConfig

    settings = {}
    if params is not None:
        import yaml

        data = yaml.safe_load(params.read_text()) or {}
        section = data.get(f"/**/vae_{kind}_detector", {}).get("ros__parameters", {})
        settings = {k: section[k] for k in ALARM_FIELDS if k in section}
    return {t: AlarmConfig(test=t, **settings) for t in tests}


def evaluate_model(model: Path, data: Path, out: Path, image_topic: str, params: Path | None, tests: list[str],
                   cache: dict) -> dict:
    import torch

    from ood_monitor.core import plots
    from ood_monitor.core.conformal import score_threshold
    from ood_monitor.core.detector import score_frameset
    from ood_monitor.core.evaluation import Labels, alarm_table, frame_table, group_masks
    from ood_monitor.core.frames import FrameConfig
    from ood_monitor.core.model_dirs import resolve_model_dir
    from ood_monitor.core.vae.dataset import load_frames
    from ood_monitor.core.vae.io import load_encoder

    torch.set_num_threads(max(1, torch.get_num_threads()))
    path = resolve_model_dir(model)
    encoder, card = load_encoder(path)
    calibration = card.calibration_scores(path)
    key = (card.kind, card.config.height, card.config.width)
    if key not in cache:
        print(f"  reading {data} as {card.kind} frames {card.config.height}x{card.config.width} ...", flush=True)
        cache[key] = load_frames(data, card.kind, FrameConfig(card.config.width, card.config.height), image_topic)
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


def run(args: argparse.Namespace) -> int:
    if not args.data.exists():
        raise FileNotFoundError(f"data not found: {args.data}")
    args.out.mkdir(parents=True, exist_ok=True)
    tests = [t.strip() for t in args.tests.split(",") if t.strip()]
    cache: dict = {}
    results = []
    for model in args.models:
        print(f"evaluating {model} on {args.data}", flush=True)
        results.append(evaluate_model(model, args.data, args.out, args.image_topic, args.params, tests, cache))
    (args.out / "evaluation.json").write_text(json.dumps(results, indent=2, default=float))
    report = args.out / "report.md"
    report.write_text(markdown(results, args.data))
    for r in results:
        best = {g: m["auroc"] for g, m in r["frame_metrics"].items() if g.startswith("category:")}
        print(f"  {Path(r['model']).name}: AUROC " + ", ".join(f"{g[9:]} {v:.3f}" for g, v in best.items()))
    print(f"wrote {report}")
    return 0


