"""`ood-monitor bench analysis`: ms per frame of discrepancy + segment pooling + mask, with pixel AUC-PR
and F* on the demo test split's object-anomaly frames, for every segmenter available.

`--synthesis real` (the default when models/latent_dit exists) runs the pipeline as deployed: each frame
prepared to the synthesizer's size (as ood/image), re-synthesized by the shipped synthesizer (its config's
sampling settings), then analysed and scored at that size, so auc_pr / f_star are the product's.
`--synthesis oracle` replaces the synthesizer by an ORACLE STAND-IN at camera resolution: the input with its
ground-truth anomaly region inpainted (cv2.inpaint) plus mild blur and noise everywhere; figures measured
with it show what the analysis step does with a perfect synthesis, not what the product does.
"""
from __future__ import annotations

import argparse
from itertools import islice
from pathlib import Path

import cv2
import numpy as np

from ood_monitor.core.analysis import AnalysisConfig, Analyzer
from ood_monitor.core.analysis.discrepancy import DiscrepancyConfig, FrameFeatures, make_feature_extractor
from ood_monitor.core.analysis.nominal import load_nominal
from ood_monitor.core.analysis.segmenters import (
    AutoMaskConfig,
    FelzenszwalbSegmenter,
    SamArchitecture,
    SamOnnxSegmenter,
    SamSegmenter,
    SlicSegmenter,
    build_sam,
    make_segmenter,
)
from ood_monitor.core.benchmark import format_table, machine_info, summarize_ms, write_report
from ood_monitor.core.mask_metrics import FStar, PixelAucPr
from ood_monitor.ros.threads import limit_threads

DEFAULT_DATA = "demo_data/images/test"
ORACLE = "oracle stand-in: ground-truth region inpainted (cv2.inpaint) + blur 0.7 px + noise sigma 2"
STAGE_COLUMNS = [f"stage_{k}_ms" for k in ("features", "colour", "structure", "weighting", "nominal", "segmentation",
                                            "segmentation_wait", "pooling", "mask")]
TINY_SAM = SamArchitecture(64, 2, 2, (1,), image_size=256, prompt_embed_dim=64, window_size=8,
                           decoder_mlp_dim=128, decoder_heads=2, iou_head_hidden_dim=64)


def register(stages: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = stages.add_parser("analysis", help="ms per frame + AUC-PR/F*: discrepancy, segment pooling, mask")
    p.add_argument("--data", default=DEFAULT_DATA, help=f"demo test split, image folder or bag (default {DEFAULT_DATA})")
    p.add_argument("--frames", type=int, default=80, help="object-anomaly frames used (default 80: all)")
    p.add_argument("--synthesis", default="auto", choices=("auto", "real", "oracle"),
                   help="real: the shipped synthesizer at model size (auto: when <models>/latent_dit exists); "
                        "oracle: ground-truth inpainting stand-in at camera resolution")
    p.add_argument("--params", type=Path, default=Path("config/default.yaml"),
                   help="--synthesis real: sample as synthesizer_node with this parameter file's section")
    p.add_argument("--features", default="auto",
                   help="feature extractor of every row: auto (as the node: dcae when present) | random | vae | dcae | none")
    p.add_argument("--models", default="models", help="folder holding vae_image / dcae / analysis_nominal")
    p.add_argument("--nominal-stats", default="auto",
                   help="as the node's nominal_stats: auto | none | folder (a `raw` row without is always added)")
    p.add_argument("--sam-checkpoint", default="", help="also time SAM (torch) with this checkpoint")
    p.add_argument("--sam-model-type", default="vit_b", help="vit_b | vit_l | vit_h")
    p.add_argument("--sam-onnx-dir", default="", help="also time SAM on ONNX Runtime from this export")
    p.add_argument("--sam-tiny", action="store_true",
                   help="time a tiny RANDOM SAM (torch + ONNX) only to prove the path (its masks are meaningless)")
    p.add_argument("--compare", action="store_true", help="add rows for feature-term alternatives and no pooling")
    p.add_argument("--threads", type=int, default=1,
                   help="torch/OpenCV threads (default 1, as the node runs: spinning threads on a shared CPU cost more than they give)")
    p.set_defaults(func=run)
    return p


def oracle_synthesis(image: np.ndarray, mask: np.ndarray | None, seed: int = 0) -> np.ndarray:
    """The oracle stand-in for a synthesizer: anomaly removed by inpainting the ground-truth region
    (dilated 2 px), then mild blur and Gaussian noise over the whole frame, as a real re-synthesis would
    never reproduce the input exactly."""
    out = image
    if mask is not None and mask.any():
        region = cv2.dilate((mask > 0).astype(np.uint8) * 255, np.ones((5, 5), np.uint8))
        out = cv2.inpaint(image, region, 5, cv2.INPAINT_TELEA)
    out = cv2.GaussianBlur(out, (0, 0), 0.7).astype(np.float32)
    out += np.random.default_rng(seed).normal(0.0, 2.0, out.shape).astype(np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


def synthesize(args: argparse.Namespace, frames: list) -> tuple[list, list[np.ndarray], str, list]:
    """(frames as analysed, their syntheses, what made them) for --synthesis."""
    model = Path(args.models) / "latent_dit"
    kind = args.synthesis if args.synthesis != "auto" else ("real" if (model / "config.json").is_file() else "oracle")
    if kind == "oracle":
        return frames, [oracle_synthesis(f.image, f.mask, seed=i) for i, f in enumerate(frames)], ORACLE, []
    from ood_monitor.cli.evaluate_cmd import node_parameters
    from ood_monitor.core.diffusion.synthesizer import synthesizer_from_params
    from ood_monitor.core.model_input import FrameConfig

    params = args.params if args.params.exists() else None
    synth = synthesizer_from_params(model, {**node_parameters(params, "synthesizer_node"), "threads": args.threads})
    cfg = FrameConfig(synth.image_size, synth.image_size)
    prepared = [f for f in prepared_frames(frames, cfg) if f.mask.any()]
    g = synth.guidance
    what = (f"real: {model}, {synth.backend}, {g.steps} DDIM steps, {g.kind} guidance {g.scale:g}, strength "
            f"{g.strength:g}, at {cfg.width}x{cfg.height}")
    images, features = [], []
    for f in prepared:  # with the encoder features synthesizer_node hands the analysis
        images.append(synth.synthesize(f.image))
        features.append(FrameFeatures(synth.last_features, synth.feature_source) if synth.feature_source else None)
    return prepared, images, what, features


def prepared_frames(frames: list, cfg) -> list:
    """Frames through ood/image's crop and resize (`cfg`: a FrameConfig), their mask and semantic labels
    through the same crop, resized nearest-neighbour."""
    from dataclasses import replace

    from ood_monitor.core.analysis.mask_evaluation import prepare_label
    from ood_monitor.core.model_input import prepare_frame

    return [replace(f, image=prepare_frame(f.image, cfg), mask=prepare_label(f.mask, cfg),
                    semantic=None if f.semantic is None else prepare_label(f.semantic, cfg)) for f in frames]


def object_frames(path: str, limit: int) -> list:
    """Frames of the 'object' category that carry a ground-truth mask and a semantic image."""
    from ood_monitor.data.labeled_frames import iter_frames

    frames = (f for f in iter_frames(path) if f.category == "object" and f.mask is not None
              and f.semantic is not None and f.mask.any())
    return list(islice(frames, limit))


def anomaly_class_ids(path: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(anomalous class ids, ignored ids: the 'unknown' class) from the dataset's classes.json."""
    from ood_monitor.data.labeled_frames import load_classes

    classes = load_classes(path)
    return (tuple(c.id for c in classes.values() if c.anomaly),
            tuple(c.id for c in classes.values() if c.name in ("unknown", "void")))


def evaluate(analyzer: Analyzer, frames: list, synth: list, anomaly_ids, ignore_ids,
             features: list | None = None) -> dict:
    """Time analyze() per frame and score its pooled confidence. `features`: the synthesizer's encoder
    features per frame (handed over as synthesizer_node does; used where they fit the analyzer's encoder)."""
    auc, fstar, times, stages = PixelAucPr(), FStar(anomaly_ids, ignore_ids), [], {}
    features = features or [None] * len(frames)
    analyzer.analyze(frames[0].image, synth[0], features[0])  # warm-up (lazy imports, allocator)
    for f, s, handed in zip(frames, synth, features, strict=True):
        result = analyzer.analyze(f.image, s, handed)
        times.append(result.elapsed_ms)
        for k, v in result.timings_ms.items():
            stages.setdefault(k, []).append(v)
        auc.add(result.confidence, f.mask)
        fstar.add(result.confidence, f.semantic)
    best, tau = fstar.value()
    profile = {f"stage_{k}_ms": float(np.median(v)) for k, v in stages.items()}  # per-stage medians
    return {**summarize_ms(np.asarray(times)), "auc_pr": auc.value(), "f_star": best, "f_star_tau": tau, **profile}


def run(args: argparse.Namespace) -> int:
    import torch

    limit_threads(args.threads, opencv=True)  # as analysis_node does with its torch_threads
    frames = object_frames(args.data, 16 if args.quick else args.frames)
    if not frames:
        print(f"no object-anomaly frames with masks in {args.data} (generate: ood-monitor data demo)")
        return 1
    frames, synth, synthesis, handed = synthesize(args, frames)
    ids = anomaly_class_ids(args.data)
    extractor, feat_desc = make_feature_extractor(args.features, args.models)
    cfg = AnalysisConfig()
    fallback = make_segmenter("auto")
    variants = {"fallback": fallback.segmenter, "slic": SlicSegmenter(), "felzenszwalb": FelzenszwalbSegmenter()}
    if args.sam_checkpoint:
        variants["sam"] = SamSegmenter(args.sam_checkpoint, args.sam_model_type)
    if args.sam_onnx_dir:
        variants["sam_onnx"] = SamOnnxSegmenter(args.sam_onnx_dir)
    nominal, nominal_desc = load_nominal(args.nominal_stats, args.models)
    if synthesis == ORACLE and nominal is not None:  # the statistics describe the real synthesizer's errors
        nominal, nominal_desc = None, "off: oracle synthesis"
    rows = []
    for name, seg in variants.items():
        rows.append({"variant": name, "segmenter": seg.name, "features": feat_desc,
                     **evaluate(Analyzer(cfg, seg, extractor, nominal), frames, synth, *ids, handed)})
    if nominal is not None:
        rows.append({"variant": "fallback-raw", "segmenter": fallback.segmenter.name, "features": feat_desc,
                     **evaluate(Analyzer(cfg, fallback.segmenter, extractor), frames, synth, *ids, handed)})
    if args.sam_tiny:
        rows += tiny_sam_rows(frames[:4], synth[:4], ids, extractor, cfg)
    if args.compare:
        rows += comparison_rows(frames, synth, ids, args.models, fallback.segmenter)
    cols = ["variant", "segmenter", "features", "ms_per_frame", "ms_p95", "auc_pr", "f_star", "f_star_tau", "frames"]
    print(format_table(rows, cols))
    stage_cols = [c for c in STAGE_COLUMNS if any(c in r for r in rows)]
    print("per-stage median ms (" + ", ".join(c[6:-3] for c in stage_cols) + "):")
    print(format_table(rows, ["variant"] + stage_cols))
    print(f"synthesis: {synthesis}\nnominal statistics: {nominal_desc} (fallback-raw: without)")
    write_report(rows, machine_info(torch_threads=torch.get_num_threads()), args.json, synthesis=synthesis,
                 data=str(args.data), fallback_reason=fallback.reason, nominal_stats=nominal_desc)
    if args.json:
        print(f"wrote {args.json}")
    return 0


def comparison_rows(frames, synth, ids, models_dir: str, segmenter) -> list[dict]:
    """The alternatives behind the default: each feature term, colour/structure only, no pooling."""
    rows = []
    kinds = ["none", "random"] + (["vae"] if (Path(models_dir) / "vae_image" / "config.json").is_file() else [])
    for kind in kinds:
        extractor, desc = make_feature_extractor(kind, models_dir)
        rows.append({"variant": f"features-{kind}", "segmenter": segmenter.name, "features": desc,
                     **evaluate(Analyzer(AnalysisConfig(), segmenter, extractor), frames, synth, *ids)})
    only = {"feature-only": DiscrepancyConfig(weight_colour=0.0, weight_structure=0.0),
            "colour-only": DiscrepancyConfig(weight_feature=0.0, weight_structure=0.0),
            "structure-only": DiscrepancyConfig(weight_feature=0.0, weight_colour=0.0)}
    extractor, desc = make_feature_extractor("random")
    for name, dcfg in only.items():
        rows.append({"variant": name, "segmenter": segmenter.name, "features": desc,
                     **evaluate(Analyzer(AnalysisConfig(dcfg), segmenter, extractor), frames, synth, *ids)})
    rows.append({"variant": "no-pooling", "segmenter": "none", "features": desc,
                 **evaluate(Analyzer(AnalysisConfig(), None, extractor), frames, synth, *ids)})
    return rows


def tiny_sam_rows(frames, synth, ids, extractor, cfg) -> list[dict]:
    """A tiny randomly initialised SAM through the torch and ONNX paths: timings prove the path only."""
    import tempfile

    import torch

    from ood_monitor.core.analysis.sam_export import export_sam

    torch.manual_seed(0)
    sam = build_sam(TINY_SAM).eval()
    auto = AutoMaskConfig(points_per_side=8)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        export_sam(sam, tmp, "tiny-random")
        for name, seg in (("sam-tiny-random", SamSegmenter("", TINY_SAM, sam=sam, auto=auto)),
                          ("sam_onnx-tiny-random", SamOnnxSegmenter(tmp, auto))):
            result = evaluate(Analyzer(cfg, seg, extractor), frames, synth, *ids)
            rows.append({"variant": name, "segmenter": seg.name, "features": "tiny RANDOM SAM, 8x8 points",
                         **result, "auc_pr": float("nan"), "f_star": float("nan"), "f_star_tau": float("nan")})
    return rows
