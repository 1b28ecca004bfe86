"""`ood-monitor bench synth`: Table 1 of the efficient anomalies-by-synthesis report
(docs/methods.md#anomalies-by-synthesis) on our data — pixel DDPM-1000 baseline, pixel DDIM-k, latent DiT +
guided DDIM (both guidance kinds) and selected/all-layer int8 — every row on the same test frames in one run:
s/image, peak memory, model size, PSNR/SSIM on nominal frames, discrepancy inside vs outside the ground-truth
mask, pixel AUC-PR and F*, speed-up vs the baseline.

Peak memory (`peak_mem_mb`, `mem_ratio`) is what that report's GPU-memory column measures: the tensors'
peak, weights included — torch.cuda.max_memory_allocated on GPU, the weights plus the torch profiler's
peak of live tensor bytes on CPU (one extra synthesis after the timed ones). Each variant runs in a
fresh process, which also gives `peak_rss_mb`: the growth of the RSS high-water mark from just before
the model is loaded, which adds the torch runtime's lazily loaded kernels and allocator caches
(about the same for every row, so it compresses ratios).

AUC-PR and F* are the product's: every synthesis goes through the analysis stage as analysis_node
runs it with --params (core/analysis: feature/colour/structure discrepancy, superpixel pooling,
confidence) and is scored with core/mask_metrics; the nominal statistics stay off (they are fitted
to one synthesizer's errors, and the rows compare synthesizers). The plain per-pixel RGB L2 distance
(Gaussian-blurred) is kept beside them (`auc_pr_rgb`, inside/outside ratio) to show what the
synthesis alone gives.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from ood_monitor.core.benchmark import format_table, machine_info, peak_tensor_mb, write_report


@dataclass
class Variant:
    name: str
    model: str  # sub-directory of --models
    sampler: str
    steps: int
    strength: float
    kind: str
    scale: float
    precision: str = "fp32"
    backend: str = "torch"


def variants(args: argparse.Namespace) -> list[Variant]:
    """The table's rows; `latent-dit-realtime` is synthesizer_node's default (sampling: realtime, backend
    auto: gradient-free guidance on ONNX Runtime)."""
    from ood_monitor.core.diffusion.synthesizer import REALTIME_SAMPLING

    k = args.pixel_steps
    pix = dict(strength=args.pixel_strength, kind=args.pixel_kind, scale=args.pixel_guidance)
    lat = dict(steps=args.steps, strength=args.strength, scale=args.guidance)
    q = "fp16" if args.device == "cuda" else "int8"
    return [
        Variant("pixel-ddpm-1000", "pixel_ddpm", "ddpm", 1000, **pix),
        Variant(f"pixel-ddim-{k}", "pixel_ddpm", "ddim", k, **pix),
        Variant(f"pixel-ddim-{k}-q-selected", "pixel_ddpm", "ddim", k, **pix, precision=f"{q}-selected"),
        Variant("latent-dit", "latent_dit", "ddim", kind="gradient", **lat),
        Variant("latent-dit-gradfree", "latent_dit", "ddim", kind="gradfree", steps=args.steps,
                strength=args.strength, scale=args.gradfree_guidance),
        Variant("latent-dit-realtime", "latent_dit", "ddim", kind=REALTIME_SAMPLING["kind"],
                steps=REALTIME_SAMPLING["steps"], strength=REALTIME_SAMPLING["strength"],
                scale=REALTIME_SAMPLING["scale"], backend="onnxruntime"),
        Variant("latent-dit-q-selected", "latent_dit", "ddim", kind="gradient", **lat, precision=f"{q}-selected"),
        Variant("latent-dit-q-all", "latent_dit", "ddim", kind="gradient", **lat, precision=f"{q}-all"),
    ]


def register(stages: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = stages.add_parser("synth", help="diffusion synthesizer: DDPM / DDIM / latent DiT / int8 "
                                        "(docs/methods.md#anomalies-by-synthesis)")
    p.add_argument("--data", default="demo_data/bags/test", help="test bag or image folder with masks")
    p.add_argument("--models", default="models", help="folder holding pixel_ddpm/ and latent_dit/")
    p.add_argument("--objects", type=int, default=4, help="object-anomaly frames (AUC-PR, F*, inside/outside)")
    p.add_argument("--nominal", type=int, default=2, help="nominal frames (PSNR/SSIM)")
    p.add_argument("--steps", type=int, default=10, help="latent DiT DDIM steps")
    p.add_argument("--guidance", type=float, default=4.0, help="latent gradient guidance scale s")
    p.add_argument("--gradfree-guidance", type=float, default=4.0, help="latent gradient-free scale w")
    p.add_argument("--strength", type=float, default=0.5, help="latent start strength")
    p.add_argument("--pixel-steps", type=int, default=50, help="pixel DDIM steps")
    p.add_argument("--pixel-guidance", type=float, default=2.0, help="pixel guidance scale")
    p.add_argument("--pixel-kind", default="gradfree", help="pixel guidance kind (the fork's baseline: gradfree)")
    p.add_argument("--pixel-strength", type=float, default=1.0, help="pixel start strength (1: pure noise)")
    p.add_argument("--params", type=Path, default=Path("config/default.yaml"),
                   help="analysis settings: this ROS parameter file's analysis_node section (default: shipped)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=1, help="torch threads per variant (default 1: one core)")
    p.add_argument("--baseline-frames", type=int, default=0,
                   help="DDPM-1000 on only the first N object frames (0: all frames; --quick: 1); every row "
                        "also reports auc_pr_same on those frames, which the AUC-PR ratio uses")
    p.add_argument("--only", default="", help="comma-separated variant names to run (default: all)")
    p.add_argument("--sweep", default="", metavar="MODEL",
                   help="instead of the table: sweep guidance kind x scale x strength for MODEL "
                        "(latent_dit or pixel_ddpm, DDIM) on the same frames")
    p.add_argument("--scales", default="0.25,0.5,1,2,4", help="--sweep: guidance scales")
    p.add_argument("--strengths", default="0.3,0.5,0.7,1.0", help="--sweep: start strengths")
    p.set_defaults(func=run)
    return p


# ------------------------------------------------------------------------------------------ data


def load_test_frames(path: str, n_objects: int, n_nominal: int, size: int = 128) -> dict[str, np.ndarray]:
    """Evenly spread object-anomaly frames (non-empty masks) and nominal frames, prepared like ood/image."""
    from ood_monitor.core.model_input import FrameConfig, crop_window, prepare_frame
    from ood_monitor.data.labeled_frames import iter_frames, load_classes

    cfg = FrameConfig(size, size)
    objects, nominal = [], []
    for f in iter_frames(path):
        if f.category == "object" and f.mask is not None and f.mask.any():
            objects.append(f)
        elif f.kind == "nominal" and not f.is_ood:
            nominal.append(f)
    if not objects:
        raise ValueError(f"no object-anomaly frames with masks in {path}")
    pick = lambda xs, n: [xs[i] for i in np.linspace(0, len(xs) - 1, min(n, len(xs))).round().astype(int)]  # noqa: E731

    def label(a: np.ndarray) -> np.ndarray:
        w = crop_window(a.shape[1], a.shape[0], cfg)
        return cv2.resize(a[w.y0:w.y0 + w.height, w.x0:w.x0 + w.width], (size, size), interpolation=cv2.INTER_NEAREST)

    obj = pick(objects, n_objects)
    nom = pick(nominal, n_nominal)
    classes = load_classes(path).values()
    anomaly_ids = [c.id for c in classes if c.anomaly]
    ignore_ids = [c.id for c in classes if c.name in ("unknown", "void")]
    return {"object_images": np.stack([prepare_frame(f.image, cfg) for f in obj]),
            "object_masks": np.stack([label(f.mask) > 127 for f in obj]),
            "object_semantic": np.stack([label(f.semantic) for f in obj]) if obj[0].semantic is not None else None,
            "nominal_images": np.stack([prepare_frame(f.image, cfg) for f in nom]),
            "anomaly_ids": np.array(anomaly_ids), "ignore_ids": np.array(ignore_ids)}


# ------------------------------------------------------------------------------------------ one variant


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1]) / 1024.0
    return float("nan")


def run_variant(v: dict, model_dir: str, images: np.ndarray, device: str, threads: int) -> dict:
    """In a fresh process: load, warm up, synthesize every image; outputs, times and peak memory."""
    import torch

    from ood_monitor.core.diffusion.synthesizer import Synthesizer
    from ood_monitor.ros.threads import limit_threads

    limit_threads(threads)  # as synthesizer_node does with its threads
    base = _rss_mb("VmRSS")  # after imports, before the model: growth = weights + activations
    synth = Synthesizer.from_model_dir(model_dir, steps=v["steps"], guidance=v["scale"], strength=v["strength"],
                                       guidance_kind=v["kind"], device=device, precision=v["precision"],
                                       sampler=v["sampler"], backend=v["backend"], threads=threads)
    if v["steps"] < 1000:
        synth.synthesize(images[0])  # warm-up (skipped for DDPM-1000: it would cost a full frame)
    outs, times, stages = [], [], []
    for img in images:
        t0 = time.perf_counter()
        outs.append(synth.synthesize(img))
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
        stages.append(synth.last_timing.stages())
    rss = _rss_mb("VmHWM") - base if device == "cpu" else float("nan")
    # after the timed frames, one more synthesis of the first image measures the tensors' peak (the
    # profiler this needs on CPU would slow the timed frames down)
    peak = peak_tensor_mb(lambda: synth.synthesize(images[0]), device, synth.model_size_mb())
    profile = {f"stage_{k}_ms": float(np.median([t[k] for t in stages])) for k in stages[0]}
    return {"outputs": np.stack(outs), "ms": times, "profile": profile, "peak_mem_mb": peak, "peak_rss_mb": rss,
            "model_size_mb": synth.model_size_mb(), "backend": synth.backend}


# ------------------------------------------------------------------------------------------ metrics


def discrepancy(a: np.ndarray, b: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """Per-pixel RGB L2 distance in [0, √3] (images scaled to [0, 1]), Gaussian-blurred."""
    d = np.linalg.norm(a.astype(np.float32) / 255.0 - b.astype(np.float32) / 255.0, axis=-1)
    return cv2.GaussianBlur(d, (0, 0), sigma)


def mask_analyzer(params: Path | None):
    """(Analyzer, description) as analysis_node runs with `params` (evaluate's --params logic)."""
    from ood_monitor.cli.evaluate_cmd import mask_analysis

    params = params if params is not None and params.exists() else None
    # nominal statistics describe one synthesizer's errors, and the rows compare synthesizers: off
    analyzer, choice, features = mask_analysis(argparse.Namespace(params=params, segmenter=None,
                                                                  sam_checkpoint=None, features=None), nominal=False)
    return analyzer, f"{choice.reason}; features {features} (fitted per synthesizer); params {params or 'node defaults'}"


def quality(outputs: np.ndarray, data: dict, n_obj: int, analyzer) -> dict:
    """Pixel AUC-PR and F* of the analysis stage's confidence, RGB-distance figures, PSNR/SSIM."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from ood_monitor.core.mask_metrics import FStar, PixelAucPr, average_precision

    obj_out, nom_out = outputs[:n_obj], outputs[n_obj:]
    imgs, masks = data["object_images"][:len(obj_out)], data["object_masks"][:len(obj_out)]
    auc, fstar = PixelAucPr(), FStar(tuple(data["anomaly_ids"]), tuple(data["ignore_ids"]))
    for i, (a, b) in enumerate(zip(imgs, obj_out, strict=True)):
        conf = analyzer.analyze(a, b).confidence
        auc.add(conf, masks[i])
        if data["object_semantic"] is not None:
            fstar.add(conf, data["object_semantic"][i])
    maps = np.stack([discrepancy(a, b) for a, b in zip(imgs, obj_out, strict=True)])
    row = {"auc_pr": auc.value(), "auc_pr_rgb": average_precision(maps.ravel(), masks.ravel()),
           "disc_inside": float(maps[masks].mean()), "disc_outside": float(maps[~masks].mean())}
    row["inside_outside"] = row["disc_inside"] / max(row["disc_outside"], 1e-9)
    if data["object_semantic"] is not None:
        row["f_star"], row["f_star_tau"] = fstar.value()
    if len(nom_out):
        nom = data["nominal_images"][:len(nom_out)]
        row["psnr_db"] = float(np.mean([peak_signal_noise_ratio(a, b) for a, b in zip(nom, nom_out, strict=True)]))
        row["ssim"] = float(np.mean([structural_similarity(a, b, channel_axis=-1)
                                     for a, b in zip(nom, nom_out, strict=True)]))
    return row


# ------------------------------------------------------------------------------------------ main


def sweep(args: argparse.Namespace, data: dict, images: np.ndarray, analyzer) -> list[dict]:
    """Guidance kind x scale x strength for one model, in this process (quality and time only)."""
    import torch

    from ood_monitor.core.diffusion.synthesizer import Synthesizer

    torch.set_num_threads(args.threads)
    steps = args.steps if args.sweep == "latent_dit" else args.pixel_steps
    rows = []
    for kind in ("gradient", "gradfree"):
        for strength in (float(v) for v in args.strengths.split(",")):
            for scale in (float(v) for v in args.scales.split(",")):
                synth = Synthesizer.from_model_dir(Path(args.models) / args.sweep, steps=steps, guidance=scale,
                                                   strength=strength, guidance_kind=kind, device=args.device)
                t0 = time.perf_counter()
                outs = np.stack([synth.synthesize(img) for img in images])
                ms = (time.perf_counter() - t0) * 1e3 / len(images)
                row = {"variant": f"{args.sweep}-{kind}", "steps": steps, "scale": scale, "strength": strength,
                       "ms_per_frame": ms, **quality(outs, data, len(data["object_images"]), analyzer)}
                rows.append(row)
                print(format_table([row], ["variant", "scale", "strength", "ms_per_frame", "auc_pr", "auc_pr_rgb", "f_star",
                                           "inside_outside", "psnr_db", "ssim"]), flush=True)
    return rows


def run(args: argparse.Namespace) -> int:
    n_obj, n_nom = (2, 1) if args.quick else (args.objects, args.nominal)
    print(f"reading {n_obj} object and {n_nom} nominal frames from {args.data} ...", flush=True)
    data = load_test_frames(args.data, n_obj, n_nom)
    images = np.concatenate([data["object_images"], data["nominal_images"]])
    analyzer, analysis_desc = mask_analyzer(args.params)
    print(f"analysis: {analysis_desc}", flush=True)
    if args.sweep:
        rows = sweep(args, data, images, analyzer)
        write_report(rows, machine_info(torch_threads=args.threads, device=args.device), args.json,
                     sweep=args.sweep, chance_auc_pr=float(data["object_masks"].mean()))
        return 0
    wanted = {s for s in args.only.split(",") if s}
    rows = []
    ctx = mp.get_context("spawn")
    for v in variants(args):
        if wanted and v.name not in wanted:
            continue
        model_dir = str(Path(args.models) / v.model)
        n_base = 1 if args.quick else args.baseline_frames
        use = images[:n_base] if n_base and v.sampler == "ddpm" else images
        print(f"{v.name}: {len(use)} frames ...", flush=True)
        with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            res = pool.submit(run_variant, asdict(v), model_dir, use, args.device, args.threads).result()
        n_o = min(len(use), len(data["object_images"]))
        row = {"variant": v.name, "sampler": v.sampler, "steps": v.steps, "guidance": v.kind, "scale": v.scale,
               "strength": v.strength, "precision": v.precision, "frames": len(use),
               "ms_per_frame": float(np.mean(res["ms"])), "s_per_image": float(np.mean(res["ms"])) / 1e3,
               "peak_mem_mb": res["peak_mem_mb"], "peak_rss_mb": res["peak_rss_mb"],
               "model_size_mb": res["model_size_mb"], "backend": res["backend"], **res["profile"]}
        row.update(quality(res["outputs"], data, n_o, analyzer))
        n_same = min(n_base or n_obj, n_o)
        row["auc_pr_same"] = quality(res["outputs"][:n_same], data, n_same, analyzer)["auc_pr"]
        rows.append(row)
        print(format_table([row], ["variant", "s_per_image", "peak_mem_mb", "auc_pr", "psnr_db"]), flush=True)
    base = next((r for r in rows if r["variant"] == "pixel-ddpm-1000"), None)
    for r in rows:
        if base:
            r["speedup"] = base["ms_per_frame"] / r["ms_per_frame"]
            r["mem_ratio"] = r["peak_mem_mb"] / base["peak_mem_mb"]
            r["rss_ratio"] = r["peak_rss_mb"] / base["peak_rss_mb"]
            r["auc_pr_ratio"] = r["auc_pr_same"] / max(base["auc_pr_same"], 1e-9)
        r["frames_per_s"] = 1e3 / r["ms_per_frame"]
    cols = ["variant", "frames", "s_per_image", "frames_per_s", "speedup", "peak_mem_mb", "mem_ratio", "rss_ratio",
            "model_size_mb", "psnr_db", "ssim", "disc_inside", "disc_outside", "inside_outside", "auc_pr_rgb",
            "auc_pr", "auc_pr_same", "auc_pr_ratio", "f_star"]
    print(format_table(rows, cols))
    print("per-stage median ms per frame (encode: DC-AE encoder; dit: denoiser forward passes; guidance: "
          "Algorithm 1's backward pass + guidance + DDIM updates; decode: DC-AE decoder + to uint8):")
    print(format_table(rows, ["variant", "backend", "steps", "guidance"] + [f"stage_{k}_ms" for k in
                                                                            ("encode", "dit", "guidance", "decode")]))
    chance = float(data["object_masks"].mean())
    write_report(rows, machine_info(torch_threads=args.threads, device=args.device), args.json,
                 data=args.data, object_frames=n_obj, nominal_frames=n_nom, chance_auc_pr=chance,
                 analysis=analysis_desc, rgb_discrepancy="per-pixel RGB L2, Gaussian blur sigma 1.5 px (auc_pr_rgb)")
    if args.json:
        print(f"wrote {args.json}")
    return 0
