"""`ood-monitor bench masks`: the mask path — synthesizer, then analysis — on one device, without ROS.

Two measurements in one run, on the object-anomaly frames of --data prepared as ood/image:
- **sequential**: each frame synthesized, then analysed, in this process: the per-stage medians (DC-AE
  encode, DiT, guidance, decode; the analysis terms, segmentation, pooling, mask) and, with the shipped
  models, pixel AUC-PR / F* of the masks;
- **pipelined**: the synthesizer and the analysis each in a process of its own, as synthesizer_node and
  analysis_node run, one analysis thread as the node's default: a camera ticks at --camera-hz, the
  synthesizer takes the newest tick when it is free (skipping one that waited longer than the file's
  synthesizer_node max_wait_ms for it, as the node does), hands (frame, synthesis, encoder features) over
  keep-last with depth 1 (the nodes' QoS) and the analysis makes the mask. Rows report masks/s and
  camera-tick→mask p50/p95 (the preprocessing before ood/image excluded: frames are prepared beforehand).

On a machine without ROS (a GPU server in the lab) this is the figure for masks per second on that
device. `--size S` other than the models' own rebuilds the shipped architectures at S with UNTRAINED
weights (a seeded initialisation): their times are what a model of that size costs, their masks mean
nothing, so the quality columns stay empty.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import queue
import tempfile
import time
from pathlib import Path

import numpy as np

from ood_monitor.core.benchmark import format_table, machine_info, write_report


def register(stages: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = stages.add_parser("masks", help="synthesizer + analysis on one device: stage ms, masks/s, latency, AUC-PR")
    p.add_argument("--data", default="demo_data/images/test", help="image folder or bag with object masks")
    p.add_argument("--models", default="models", help="folder holding latent_dit/ and dcae/")
    p.add_argument("--params", type=Path, default=Path("config/default.yaml"),
                   help="synthesizer_node and analysis_node sections of this parameter file (default: shipped)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="the synthesizer's device")
    p.add_argument("--analysis-device", default="",
                   help="the analysis' feature extractor device (default: the file's analysis_node device)")
    p.add_argument("--precision", default="", help="override the file's synthesizer precision (fp32 | fp16 ...)")
    p.add_argument("--backend", default="", help="override the file's synthesizer backend (auto | torch | onnxruntime)")
    p.add_argument("--size", type=int, default=0,
                   help="frame size; other than the models' own: the architectures rebuilt at this size with "
                        "UNTRAINED weights (times only)")
    p.add_argument("--frames", type=int, default=40, help="object frames for the sequential part (default 40)")
    p.add_argument("--seconds", type=float, default=20.0, help="length of the pipelined run (default 20)")
    p.add_argument("--camera-hz", type=float, default=30.0, help="camera rate of the pipelined run (default 30)")
    p.add_argument("--max-wait-ms", type=float, default=None,
                   help="drop a frame that waited longer than this for the busy synthesizer (default: the file's "
                        "synthesizer_node max_wait_ms; 0: take the newest however old)")
    p.set_defaults(func=run)
    return p


# ------------------------------------------------------------------------------------------ models


def untrained_models(models: Path, size: int, out: Path) -> Path:
    """latent_dit + dcae directories with the shipped architectures at `size` and seeded random weights."""
    import torch

    from ood_monitor.core.diffusion.synthesizer import build_module, read_card, save_model

    dit = read_card(models / "latent_dit", "latent_dit")
    ae = read_card((models / "latent_dit" / dit["dcae"]).resolve(), "dcae")
    compression = ae["arch"]["image_size"] // dit["arch"]["latent_size"]
    if size % (compression * dit["arch"]["patch"]):
        raise ValueError(f"--size {size} must be a multiple of {compression * dit['arch']['patch']} "
                         f"(DC-AE compression x DiT patch)")
    keep = lambda card: {k: v for k, v in card.items() if k not in ("format", "weights_sha256", "dcae_sha256")}  # noqa: E731
    torch.manual_seed(0)
    ae_arch = {**ae["arch"], "image_size": size}
    save_model(out / "dcae", build_module("dcae", ae_arch), {**keep(ae), "arch": ae_arch, "image_size": size,
                                                             "data": "UNTRAINED (bench masks --size)"})
    dit_arch = {**dit["arch"], "latent_size": size // compression}
    save_model(out / "latent_dit", build_module("latent_dit", dit_arch),
               {**keep(dit), "arch": dit_arch, "image_size": size, "dcae": "../dcae",
                "data": "UNTRAINED (bench masks --size)"})
    return out


def synthesizer(args: argparse.Namespace, models: Path):
    from ood_monitor.cli.evaluate_cmd import node_parameters
    from ood_monitor.core.diffusion.synthesizer import synthesizer_from_params

    p = {**node_parameters(args.params if args.params.exists() else None, "synthesizer_node"), "device": args.device}
    p.update({k: v for k, v in (("precision", args.precision), ("backend", args.backend)) if v})
    return synthesizer_from_params(models / "latent_dit", p)


def analyzer(params: Path, models: Path, trained: bool, device: str = ""):
    """The Analyzer analysis_node runs with `params`; its encoder features come from `models`/dcae (the
    synthesizer's, so they are handed over as between the nodes) on `device` (default: the file's).
    Nominal statistics only for trained models (they are fitted to one synthesizer's errors)."""
    from ood_monitor.cli.evaluate_cmd import mask_analysis, node_parameters
    from ood_monitor.core.analysis import Analyzer
    from ood_monitor.core.analysis.discrepancy import make_feature_extractor

    ns = argparse.Namespace(params=params if params.exists() else None, segmenter=None, sam_checkpoint=None,
                            features=None)
    node, _, _ = mask_analysis(ns, nominal=trained)
    device = device or node_parameters(ns.params, "analysis_node").get("device", "cpu")
    extractor, _ = make_feature_extractor("dcae", models, device)
    return Analyzer(node.cfg, node.segmenter, extractor, node.nominal)


# ------------------------------------------------------------------------------------------ frames


def object_frames(path: str, size: int, limit: int) -> list:
    """Object-anomaly frames with masks, prepared at size x size as ood/image (labels likewise)."""
    from itertools import islice

    from ood_monitor.cli.bench_analysis import prepared_frames
    from ood_monitor.core.model_input import FrameConfig
    from ood_monitor.data.labeled_frames import iter_frames

    frames = (f for f in iter_frames(path) if f.category == "object" and f.mask is not None and f.mask.any())
    out = prepared_frames(list(islice(frames, limit)), FrameConfig(size, size))
    if not out:
        raise ValueError(f"no object-anomaly frames with masks in {path} (generate: ood-monitor data demo)")
    return out


# ------------------------------------------------------------------------------------------ sequential


def handed(maps: tuple, source: str):
    """The encoder features as synthesizer_node hands them (none when its encoder has no name)."""
    from ood_monitor.core.analysis.discrepancy import FrameFeatures

    return FrameFeatures(maps, source) if source else None


def sequential(synth, analysis, frames: list, trained: bool, anomaly_ids, ignore_ids) -> dict:
    """Synthesize then analyse each frame here; stage medians, ms per mask and (trained) AUC-PR / F*."""
    from ood_monitor.core.mask_metrics import FStar, PixelAucPr

    auc, fstar, stages, totals = PixelAucPr(), FStar(anomaly_ids, ignore_ids), {}, []
    for i, f in enumerate([frames[0]] + frames):  # the first is a warm-up
        t0 = time.perf_counter()
        out = synth.synthesize(f.image)
        result = analysis.analyze(f.image, out, handed(synth.last_features, synth.feature_source))
        if i == 0:
            continue
        totals.append((time.perf_counter() - t0) * 1e3)
        for k, v in synth.last_timing.stages().items():
            stages.setdefault(f"synth_{k}", []).append(v)
        for k, v in result.timings_ms.items():
            stages.setdefault(f"analysis_{k}", []).append(v)
        stages.setdefault("synthesis", []).append(synth.last_timing.total_ms)
        stages.setdefault("analysis", []).append(result.elapsed_ms)
        if trained and f.semantic is not None:
            auc.add(result.confidence, f.mask)
            fstar.add(result.confidence, f.semantic)
    row = {"ms_per_mask": float(np.median(totals)), **{f"{k}_ms": float(np.median(v)) for k, v in stages.items()}}
    if trained:
        row["auc_pr"], (row["f_star"], _) = auc.value(), fstar.value()
    return row


# ------------------------------------------------------------------------------------------ pipelined


def _analysis_worker(params: Path, models: Path, trained: bool, device: str, inbox: mp.Queue,
                     outbox: mp.Queue) -> None:
    """analysis_node's work in a process of its own, one thread (the node's torch_threads default)."""
    from ood_monitor.ros.threads import limit_threads

    limit_threads(1, opencv=True)
    analysis = analyzer(params, models, trained, device)
    outbox.put("ready")
    while (item := inbox.get()) is not None:
        stamp, image, synthesized, maps, source = item
        analysis.analyze(image, synthesized, handed(maps, source))
        outbox.put((stamp, time.monotonic()))
    outbox.put(None)


def _hand_over(box: mp.Queue, item) -> bool:
    """Keep-last, depth 1: a synthesis not yet taken is replaced by the newer one. True if one was dropped."""
    try:
        box.put_nowait(item)
        return False
    except queue.Full:
        try:
            box.get_nowait()
            replaced = True
        except queue.Empty:  # the analysis took it meanwhile
            replaced = False
        box.put(item)
        return replaced


def _receive(box: mp.Queue, worker) -> object:
    """The worker's next message; a RuntimeError once it has died instead of waiting forever."""
    while True:
        try:
            return box.get(timeout=1.0)
        except queue.Empty:
            if not worker.is_alive():
                raise RuntimeError(f"the analysis process exited with code {worker.exitcode}") from None


def pipelined(synth, args: argparse.Namespace, models: Path, trained: bool, images: list[np.ndarray],
              seconds: float) -> dict:
    """Synthesizer here, analysis in a spawned process; camera ticks at --camera-hz for `seconds`."""
    from ood_monitor.core.diffusion.synthesizer import waited_too_long

    ctx = mp.get_context("spawn")
    inbox, outbox = ctx.Queue(maxsize=1), ctx.Queue()
    worker = ctx.Process(target=_analysis_worker, daemon=True,
                         args=(args.params, models, trained, args.analysis_device, inbox, outbox))
    worker.start()
    _receive(outbox, worker)  # "ready": the analysis is loaded
    period, dropped, synthesized, stale, last_tick = 1.0 / args.camera_hz, 0, 0, 0, -1
    max_wait = max_wait_ms(args)
    start = free_at = time.monotonic()
    while (now := time.monotonic()) - start < seconds:
        tick = int((now - start) / period)
        if tick == last_tick:  # wait for the next camera frame
            time.sleep(max(0.0, start + (tick + 1) * period - now))
            continue
        last_tick, stamp = tick, start + tick * period
        if waited_too_long(stamp, free_at, max_wait):  # the node's rule: drop it, take the next tick
            stale += 1
            continue
        out = synth.synthesize(images[tick % len(images)])
        dropped += _hand_over(inbox, (stamp, images[tick % len(images)], out, synth.last_features,
                                      synth.feature_source))
        synthesized += 1
        free_at = time.monotonic()
    inbox.put(None)
    done = []
    while (item := _receive(outbox, worker)) is not None:
        done.append(item)
    worker.join(timeout=60)
    if len(done) < 2:
        raise RuntimeError(f"{len(done)} masks in {seconds:g} s: too few to time, raise --seconds")
    ends = np.array([d for _, d in done])
    latency = np.array([(d - s) * 1e3 for s, d in done])
    warm = slice(min(5, len(done) - 2), None)  # the first masks include the analysis' lazy start-up
    span = ends[warm][-1] - ends[warm][0]
    return {"rate_hz": float((len(ends[warm]) - 1) / span) if span > 0 else float("nan"),
            "synth_hz": synthesized / seconds, "camera_hz": args.camera_hz,
            "p50_ms": float(np.percentile(latency[warm], 50)), "p95_ms": float(np.percentile(latency[warm], 95)),
            "masks": len(done), "dropped": dropped, "stale": stale, "max_wait_ms": max_wait}


def max_wait_ms(args: argparse.Namespace) -> float:
    """--max-wait-ms, else the parameter file's synthesizer_node max_wait_ms, else the node's default."""
    from ood_monitor.cli.evaluate_cmd import node_parameters
    from ood_monitor.core.diffusion.synthesizer import MAX_WAIT_MS

    if args.max_wait_ms is not None:
        return float(args.max_wait_ms)
    params = node_parameters(args.params if args.params.exists() else None, "synthesizer_node")
    return float(params.get("max_wait_ms", MAX_WAIT_MS))


# ------------------------------------------------------------------------------------------ run


def run(args: argparse.Namespace) -> int:
    import torch

    from ood_monitor.cli.bench_analysis import anomaly_class_ids
    from ood_monitor.core.diffusion.synthesizer import read_card
    from ood_monitor.ros.threads import limit_threads

    limit_threads(1, opencv=True)  # as the nodes run (synthesizer threads, analysis torch_threads)
    models = Path(args.models)
    own = int(read_card(models / "latent_dit", "latent_dit")["image_size"])
    size = args.size or own
    trained = size == own
    with tempfile.TemporaryDirectory() as tmp:
        if not trained:
            models = untrained_models(models, size, Path(tmp))
        synth = synthesizer(args, models)
        frames = object_frames(args.data, size, 8 if args.quick else args.frames)
        seconds = min(args.seconds, 8.0) if args.quick else args.seconds
        row = {"device": args.device, "backend": synth.backend, "size": size,
               "analysis_device": args.analysis_device or "as --params",
               "weights": "shipped" if trained else "UNTRAINED (times only)",
               **sequential(synth, analyzer(args.params, models, trained, args.analysis_device), frames, trained,
                            *anomaly_class_ids(args.data)),
               **pipelined(synth, args, models, trained, [f.image for f in frames], seconds)}
    g = synth.guidance
    print(format_table([row], ["device", "backend", "size", "weights", "rate_hz", "camera_hz", "p50_ms", "p95_ms",
                               "ms_per_mask", "synthesis_ms", "analysis_ms", "auc_pr", "f_star"]))
    stage_cols = [k for k in row if k.startswith(("synth_", "analysis_")) and k.endswith("_ms")]
    print("per-stage median ms:\n" + format_table([row], stage_cols))
    print(f"sampling: {g.steps} DDIM steps, {g.kind} guidance {g.scale:g}, strength {g.strength:g}; "
          f"{row['masks']} masks in the pipelined run, {row['dropped']} syntheses replaced before the analysis took them, "
          f"{row['stale']} frames skipped as stale (max_wait_ms {row['max_wait_ms']:g})")
    machine = machine_info(torch_threads=torch.get_num_threads())
    write_report([{"name": "anomaly_mask", **row}], machine, args.json, data=str(args.data), params=str(args.params))
    if args.json:
        print(f"wrote {args.json}")
    return 0
