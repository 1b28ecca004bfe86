"""`ood-monitor train vae`: train a β-VAE (or, with --hvae-ratio, a two-level HVAE) on the frames or
optical flow of a bag or image folder, and write models/NAME/{model.safetensors, config.json}."""
from __future__ import annotations

import argparse
import copy
import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

DEFAULT_WIDTHS = (16, 32, 64, 128, 128, 256)
SCORES = ("kl", "kl_deviation", "posterior_deviation", "kl_texture", "posterior_motion", "photometric",
          "kl_texture_photometric", "structure", "kl_texture_photometric_structure", "change",
          "kl_texture_photometric_structure_change")  # core/nonconformity.SCORES
# image: chosen on the real tuning recordings (docs/real_footage.md#structure-part), equal on the demo world
DEFAULT_SCORES = {"image": "kl_texture_photometric_structure", "flow": "posterior_motion"}


def default_widths(size: int) -> tuple[int, ...]:
    """Enough stride-2 layers to bring the input down to 4x4 (at least one)."""
    n = max(1, int(math.log2(max(size, 8) / 4)))
    return DEFAULT_WIDTHS[:n]


def register(sub: argparse._SubParsersAction) -> None:
    from ood_monitor.cli.label_options import add_label_options
    from ood_monitor.cli.train_diffusion import add_commands

    p = sub.add_parser("train", help="train models (vae, dcae, dit, ddpm)")
    models = p.add_subparsers(dest="model", required=True, metavar="MODEL")
    add_commands(models)
    v = models.add_parser("vae", help="train an image or optical-flow VAE detector",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    v.add_argument("--kind", choices=("image", "flow"), required=True, help="what the VAE encodes")
    v.add_argument("--data", nargs="+", required=True, metavar="PATH",
                   help="rosbag2 bags and/or image folders of in-distribution frames; globs are expanded")
    v.add_argument("--out", required=True, help="model directory to write, e.g. models/vae_image")
    v.add_argument("--image-topic", default="/camera/image_raw", help="image topic when --data is a bag")
    v.add_argument("--size", type=int, default=128, help="square model input size in pixels")
    v.add_argument("--latent", type=int, default=30, help="latent dimensions (HVAE: total budget)")
    v.add_argument("--beta", type=float, default=1.4, help="KL weight β")
    v.add_argument("--widths", default=None, help="conv channels per stride-2 layer, comma separated "
                   "(default: enough layers to reach 4x4)")
    v.add_argument("--hidden", type=int, default=256, help="dense layer width")
    v.add_argument("--dropout", type=float, default=0.1, help="dropout in the encoder tail (MC dropout)")
    v.add_argument("--recon-sigma", type=float, default=0.1,
                   help="std of the Gaussian reconstruction likelihood: larger = stronger KL pressure")
    v.add_argument("--epochs", type=int, default=30,
                   help="epochs; raised (with --patience) when that would be fewer than --min-steps steps")
    v.add_argument("--min-steps", type=int, default=500,
                   help="fewest optimizer steps a training run gets: small recordings get more epochs")
    v.add_argument("--batch", type=int, default=64)
    v.add_argument("--lr", type=float, default=1e-3)
    v.add_argument("--val-split", type=float, default=0.1, help="held-out fraction (contiguous blocks)")
    v.add_argument("--patience", type=int, default=5, help="early stopping patience in epochs")
    v.add_argument("--kl-warmup", type=float, default=0.0,
                   help="epochs over which the KL weight ramps from 0 to 1 (avoids posterior collapse)")
    v.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                   help="mild brightness/contrast jitter, shifts, horizontal flips")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--select-k", type=int, default=8, help="latent dims the score uses")
    v.add_argument("--score", choices=SCORES, default=None,
                   help="nonconformity (docs/methods.md#vae-detectors): kl (latent KL of arXiv 2409.00880, "
                        "one-sided), a two-sided deviation from the "
                        "training posteriors (kl_deviation, posterior_deviation) or, for images, kl_deviation "
                        "plus the fine-texture term (kl_texture), the largest of that, the photometric "
                        "statistics and the local-structure statistics, each on its own calibrated scale "
                        "(kl_texture_photometric_structure; kl_texture_photometric without the last), either "
                        "statistics alone (photometric, structure); for flow posterior_deviation plus the camera-motion and "
                        "warp-residual term (posterior_motion); default: what the shipped models run "
                        f"({', '.join(f'{k} {v}' for k, v in DEFAULT_SCORES.items())})")
    v.add_argument("--hvae-ratio", type=float, default=None,
                   help="train a two-level HVAE giving this share of the latent budget to the lower level")
    v.add_argument("--flow-scale", type=float, default=0.0,
                   help="flow normaliser in px/frame (0: 99th percentile of |flow| on the training data)")
    v.add_argument("--max-frames", type=int, default=None, help="use at most this many frames")
    v.add_argument("--time-limit", type=float, default=None, help="stop training after this many seconds")
    v.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1), help="torch CPU threads")
    v.add_argument("--device", default="cpu",
                   help="train on cpu, cuda or cuda:N (a workstation GPU; the model files are the same)")
    add_engine_options(v)
    add_spool_option(v)
    add_label_options(v, training=True)
    v.set_defaults(func=run)
    add_statistics_parser(models, "photometric", "image", "kl_texture_photometric_structure", run_photometric,
                          "add the photometric and structure statistics of its training frames to an image model "
                          "trained before `train vae` wrote them")
    add_statistics_parser(models, "motion", "flow", "posterior_motion", run_motion,
                          "re-fit a flow model's motion statistics on its training frames, with the warp residual "
                          "of the current preprocessing (flow models trained before it)")


def add_statistics_parser(models, name: str, kind: str, score: str, func, help_text: str) -> None:
    """`train photometric|motion`: statistics added to a trained model from its own training frames."""
    p = models.add_parser(name, help=help_text, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help=f"{kind} model directory, e.g. models/vae_{kind}")
    p.add_argument("--data", nargs="+", required=True, metavar="PATH",
                   help="the model's training data (checked against the data hash in its config.json)")
    p.add_argument("--image-topic", default=None, help="image topic (default: the one used in training)")
    p.add_argument("--score", choices=SCORES, default=None,
                   help=f"switch the model's score too, e.g. to {score} (then run calibrate)")
    add_spool_option(p)
    p.set_defaults(func=func)


def add_engine_options(p: argparse.ArgumentParser) -> None:
    """--engine local|ray, --workers, --address (train vae, dcae, dit, ddpm)."""
    from ood_monitor.cli import engine_options

    engine_options.add_engine_options(p, "data-parallel on Ray Train's TorchTrainer (gloo, CPU workers)",
                                      "training workers (--threads each)")


def add_spool_option(p: argparse.ArgumentParser) -> None:
    """--spool-dir (train vae, dcae, dit, ddpm): where the frames wait on disk while training."""
    p.add_argument("--spool-dir", default=None, metavar="DIR",
                   help="folder for the training frames while the model trains: they are written there once and "
                        "read back memory-mapped, so memory does not grow with the footage (a temporary "
                        "folder inside DIR, removed at exit; default: the system's temporary folder)")


def run(args: argparse.Namespace) -> int:
    from ood_monitor.data.spool import spool_directory

    with spool_directory(args.spool_dir) as folder:
        return train_from(args, folder)


def train_from(args: argparse.Namespace, spool_dir) -> int:
    """`train vae` with its frames spooled in `spool_dir`."""
    import numpy as np
    import torch

    from ood_monitor.cli.label_options import label_spec
    from ood_monitor.cli.provenance import data_origin
    from ood_monitor.core.devices import training_device
    from ood_monitor.core.model_input import FrameConfig
    from ood_monitor.core.motion import MotionStats
    from ood_monitor.core.motion import min_frames as motion_min_frames
    from ood_monitor.core.photometric import PhotometricStats
    from ood_monitor.core.texture import TextureHead, min_frames
    from ood_monitor.core.vae import HvaeConfig, VaeConfig, build_model
    from ood_monitor.core.vae.dataset import auto_flow_scale
    from ood_monitor.core.vae.io import ModelCard, save_model
    from ood_monitor.core.vae.train import AugmentConfig, TrainConfig, choose_dims, train_vae
    from ood_monitor.fleet.inputs import describe, expand_inputs, load_training_frames

    training_device(args.device, getattr(args, "engine", "local"))  # refused before the frames are read
    torch.set_num_threads(max(1, args.threads))
    widths = tuple(int(w) for w in args.widths.split(",")) if args.widths else default_widths(args.size)
    arch = "hvae" if args.hvae_ratio is not None else "beta_vae"
    common = dict(kind=args.kind, height=args.size, width=args.size, latent=args.latent, beta=args.beta,
                  widths=widths, hidden=args.hidden, dropout=args.dropout,
                  recon_sigma=args.recon_sigma)
    cfg = HvaeConfig(**common, ratio=args.hvae_ratio) if arch == "hvae" else VaeConfig(**common)
    if not 1 <= args.select_k <= cfg.latent:
        raise ValueError(f"--select-k must be in [1, {cfg.latent}], got {args.select_k}")

    data = expand_inputs(args.data if isinstance(args.data, list) else [args.data])
    print(f"reading {args.kind} frames from {describe(data)} ({args.size}x{args.size}) ...", flush=True)
    frames = load_training_frames(data, args.kind, FrameConfig(args.size, args.size), args.image_topic,
                                  limit=args.max_frames, progress=lambda m: print(m, flush=True), labels=label_spec(args),
                                  spool_dir=spool_dir, drop_ood=not args.keep_anomalous_frames)
    print(f"{len(frames)} frames ({frames.raw.nbytes / 1e6:.0f} MB) spooled in {spool_dir}, read memory-mapped "
          f"while training", flush=True)
    if frames.dropped_ood:
        print(f"dropped {frames.dropped_ood} frames labelled OOD: a detector trains on "
              f"in-distribution data only (--keep-anomalous-frames keeps them)", flush=True)
    if len(frames) < 8:
        raise ValueError(f"only {len(frames)} usable frames in {describe(data)}: need at least 8")
    score = args.score or DEFAULT_SCORES[args.kind]
    textured = ("kl_texture", "kl_texture_photometric", "kl_texture_photometric_structure",
                "kl_texture_photometric_structure_change")
    if args.score is None and score in textured and len(frames) < min_frames(cfg.latent):
        score = "kl_deviation"
        print(f"score kl_deviation: {len(frames)} frames are too few for kl_texture's texture head "
              f"(needs {min_frames(cfg.latent)})", flush=True)
    if args.score is None and score.startswith("kl_texture_") and len(frames) < PhotometricStats.min_frames():
        score = "kl_texture"
        print(f"score kl_texture: {len(frames)} frames are too few for the photometric statistics "
              f"(needs {PhotometricStats.min_frames()})", flush=True)
    if args.score is None and score == "posterior_motion" and len(frames) < motion_min_frames():
        score = "posterior_deviation"
        print(f"score posterior_deviation: {len(frames)} frames are too few for the motion statistics "
              f"(needs {motion_min_frames()})", flush=True)
    if score == "posterior_motion" and (args.kind != "flow" or len(frames) < motion_min_frames()):
        raise ValueError(f"score posterior_motion needs a flow model and at least {motion_min_frames()} frames "
                         f"(got {args.kind}, {len(frames)} frames): pick another --score")
    if score in textured and (args.kind != "image" or len(frames) < min_frames(cfg.latent)):
        raise ValueError(f"score {score} needs an image model and at least {min_frames(cfg.latent)} "
                         f"frames (got {args.kind}, {len(frames)} frames): pick another --score")
    if score in ("photometric", "structure") and args.kind != "image":
        raise ValueError(f"score {score} needs an image model: pick another --score")
    tcfg = TrainConfig(**schedule_for(len(frames), args), batch=args.batch, lr=args.lr, val_split=args.val_split,
                       seed=args.seed, time_limit_s=args.time_limit, augment=AugmentConfig(enabled=args.augment),
                       device=args.device)
    flow_scale = 1.0
    if args.kind == "flow":
        flow_scale = args.flow_scale or auto_flow_scale(frames.raw)
        print(f"flow scale {flow_scale} px/frame", flush=True)

    torch.manual_seed(args.seed)
    model = build_model(arch, cfg)
    n_params = sum(p.numel() for p in model.parameters())
    enc_params = sum(p.numel() for p in model.encoder.parameters())
    print(f"{arch}: {n_params / 1e6:.2f} M parameters ({enc_params / 1e6:.2f} M in the encoder)", flush=True)
    if getattr(args, "engine", "local") == "ray":
        from ood_monitor.fleet.train_ray import train_vae_on_ray

        print(f"Ray Train: {args.workers} data-parallel workers x {args.threads} threads", flush=True)
        result = train_vae_on_ray(model, arch, cfg, frames, flow_scale, tcfg, args.workers, args.address,
                                  args.threads, args.seed)
    else:
        result = train_vae(model, frames, flow_scale, tcfg, log=lambda m: print(m, flush=True))
    dims, usage, stats, term = choose_dims(model.encoder, frames, flow_scale, args.select_k)
    print(f"selected latent dims {dims} (mean KL {np.round(usage[dims], 2).tolist()}); "
          f"{int((usage > 0.05).sum())}/{cfg.latent} dims carry more than 0.05 nats", flush=True)
    informative = int((usage[dims] > 0.5).sum())
    if informative < len(dims):
        print(f"WARNING: only {informative} of the {len(dims)} selected latent dims carry more than 0.5 nats on the "
              f"training frames: the latent part of the score is weak (posterior collapse). More frames, "
              f"--kl-warmup or a lower --beta help", flush=True)
    card = ModelCard(architecture=arch, config=cfg, flow_scale=float(flow_scale),
                     data={"source": ", ".join(map(str, data)), "image_topic": args.image_topic, "hash": frames.data_hash,
                           "frames": len(frames), "origin": ", ".join(sorted({data_origin(p) for p in data}))},
                     training={**result.to_dict(), "settings": {
                         "epochs": tcfg.epochs, "batch": tcfg.batch, "lr": tcfg.lr, "val_split": tcfg.val_split,
                         "patience": tcfg.patience, "seed": tcfg.seed, "augment": args.augment, "kl_warmup": tcfg.kl_warmup,
                         "engine": getattr(args, "engine", "local"), "workers": getattr(args, "workers", 1),
                         "device": tcfg.device, "command": " ".join(["ood-monitor", *sys.argv[1:]])}},
                     selected_dims=dims, latent_kl=[float(u) for u in usage], score=score,
                     latent_stats=stats, texture=term.to_dict() if isinstance(term, TextureHead) else {},
                     motion=term.to_dict() if isinstance(term, MotionStats) else {})
    if args.kind == "image":
        card.photometric = photometric_section(model.encoder, card, frames)
    card.nonconformity  # noqa: B018 -- ValueError now if the chosen score lacks what it needs
    save_model(args.out, model, card)
    size_mb = os.path.getsize(os.path.join(args.out, "model.safetensors")) / 1e6
    print(f"wrote {args.out}/model.safetensors ({size_mb:.1f} MB) and config.json; next: "
          f"ood-monitor calibrate --model {args.out} --data <nominal recordings not used for training>")
    return 0


@contextmanager
def own_training_frames(args: argparse.Namespace, kind: str, what: str) -> Iterator[tuple]:
    """(model path, encoder, card, training frames) of `args.model`, a `kind` model, read from `args.data`
    (spooled while the block runs): the frames a statistic added later must describe, checked against
    the data hash the model's card recorded."""
    from ood_monitor.core.model_dirs import resolve_model_dir
    from ood_monitor.core.model_input import FrameConfig
    from ood_monitor.core.vae.io import load_encoder
    from ood_monitor.data.spool import spool_directory
    from ood_monitor.fleet.inputs import expand_inputs, load_training_frames

    path = resolve_model_dir(args.model)
    encoder, card = load_encoder(path)
    if card.kind != kind:
        raise ValueError(f"{path} is a {card.kind} model: {what} statistics are for {kind} models")
    topic = args.image_topic or card.data.get("image_topic", "/camera/image_raw")
    with spool_directory(args.spool_dir) as folder:
        frames = load_training_frames(expand_inputs(args.data), kind, FrameConfig(card.config.width, card.config.height),
                                      topic, spool_dir=folder, drop_ood=True)
        if card.data.get("hash") and frames.data_hash != card.data["hash"]:
            raise ValueError(f"{' '.join(args.data)} is not the training data of {path} (data hash differs): "
                             f"the statistics must describe the frames the model was trained on")
        yield path, encoder, card, frames


def finish_card(path, card, args: argparse.Namespace, written: str) -> int:
    """Switch the score if asked, check the card can score, write it and say what comes next."""
    from ood_monitor.core.vae.io import write_card

    card.score = args.score or card.score
    card.nonconformity  # noqa: B018 -- ValueError now if the score lacks what it needs (too few frames)
    write_card(path, card)
    print(f"wrote {written} to {path}/config.json (score {card.score}); next: ood-monitor calibrate --model "
          f"{args.model} --data <nominal recordings>")
    return 0


def run_photometric(args: argparse.Namespace) -> int:
    """`train photometric`: the section `train vae` writes for image models, from the same training frames."""
    with own_training_frames(args, "image", "photometric") as (path, encoder, card, frames):
        card.score = args.score or card.score
        card.photometric = photometric_section(encoder, card, frames)
    card.photometric["command"] = " ".join(["ood-monitor", *sys.argv[1:]])
    return finish_card(path, card, args, f"the photometric and structure statistics of {len(frames)} training frames")


def run_motion(args: argparse.Namespace) -> int:
    """`train motion`: the motion statistics `train vae` fits for flow models (with the warp residual when
    the flow carries it), from the model's own training frames."""
    from ood_monitor.core.motion import fit_motion, min_frames

    with own_training_frames(args, "flow", "motion") as (path, _, card, frames):
        if len(frames) < min_frames():
            raise ValueError(f"{len(frames)} flow frames are too few for the motion statistics (need {min_frames()})")
        stats = fit_motion(frames.raw)
    card.motion = {**stats.to_dict(), "command": " ".join(["ood-monitor", *sys.argv[1:]])}
    return finish_card(path, card, args, f"the {stats.NAME} statistics ({len(stats.FEATURES)} features) of "
                                         f"{len(frames)} training flow fields")


def photometric_section(encoder, card, frames) -> dict:
    """The card's photometric statistics of the training frames (core/photometric.py; empty when there are
    too few frames to fit them) with their local-structure statistics (core/structure.py), the change
    statistics of both (core/change.py: frames in stream order, a new sequence wherever the frame index
    does not step by one) and, for a fused score, its parts' scales until `calibrate` measures them: each
    part's largest score on the training frames (one encoder pass serves every part)."""
    import numpy as np

    from ood_monitor.core.change import ChangeStats
    from ood_monitor.core.nonconformity import FUSED, encode
    from ood_monitor.core.photometric import PhotometricStats, photometric_features
    from ood_monitor.core.structure import StructureStats, structure_features
    from ood_monitor.data.spool import chunks

    if len(frames) < PhotometricStats.min_frames():
        return {}
    photometric, structure = (np.concatenate([extract(block) for block in chunks(frames.raw)])
                              for extract in (photometric_features, structure_features))
    section = PhotometricStats.fit(photometric).to_dict()
    section["structure"] = StructureStats.fit(structure).to_dict()
    sequence = np.cumsum(np.r_[0, np.diff(np.asarray(frames.index)) != 1])
    try:
        section["change"] = ChangeStats.fit(np.concatenate([photometric, structure], axis=1), sequence).to_dict()
    except ValueError as exc:  # too few frames in order: scores with a change part refuse, saying why
        print(f"no change statistics: {exc}", flush=True)
    parts = FUSED.get(card.score)
    if parts:
        mu, logvar = encode(encoder, lambda s: frames.inputs(s, card.flow_scale), len(frames))
        probe = copy.copy(card)
        probe.photometric = section
        maxima = []
        for part in parts:
            probe.score = part
            score = probe.nonconformity
            maxima.append(max(float(score(mu, logvar, score.frame_features(frames.raw)).max()), 1e-12))
        section["parts"] = {"scales": maxima, "tolerances": [1.0] * len(parts), "maxima": maxima}
    return section


def schedule_for(frames: int, args: argparse.Namespace) -> dict:
    """Epochs, patience and KL warm-up for this many frames: at least `--min-steps` optimizer steps, the
    patience and warm-up stretched by the same factor (a 200-frame recording gives 3 steps an epoch, and
    the defaults stopped after ~90 steps, before the latent had organised). Says what it did."""
    train_frames = max(1, int(round(frames * (1.0 - args.val_split))))
    per_epoch = math.ceil(train_frames / args.batch)
    factor = max(1.0, args.min_steps / (per_epoch * args.epochs))
    epochs = int(math.ceil(args.epochs * factor))
    patience = int(math.ceil(args.patience * factor))
    warmup = args.kl_warmup * factor
    if factor > 1.0:
        print(f"small data: {frames} frames give {per_epoch} steps an epoch; training up to {epochs} epochs "
              f"(>= {args.min_steps} steps), patience {patience}, KL warm-up {warmup:g} epochs "
              f"(--min-steps changes this)", flush=True)
    return {"epochs": epochs, "patience": patience, "kl_warmup": warmup}
