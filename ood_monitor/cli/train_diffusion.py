"""`ood-monitor train dcae|dit|ddpm`: the diffusion synthesizer's models, trained on nominal frames of
a bag or image folder, written as models/NAME/{model.safetensors, config.json}."""
from __future__ import annotations

import argparse
import os
import sys

from ood_monitor.cli.label_options import add_label_options, label_spec


def _common(p: argparse.ArgumentParser, steps: int, batch: int, lr: float, crop: int | None) -> None:
    p.add_argument("--data", nargs="+", required=True, metavar="PATH",
                   help="rosbag2 bags and/or image folders of in-distribution frames; globs are expanded")
    p.add_argument("--image-topic", default="/camera/image_raw", help="image topic when --data is a bag")
    p.add_argument("--out", required=True, help="model directory to write, e.g. models/dcae")
    p.add_argument("--size", type=int, default=128, help="square model input size in pixels")
    p.add_argument("--steps", type=int, default=steps, help="optimizer steps")
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the shipped weights")
    p.add_argument("--crop", type=int, default=crop, help="random square training crops (0: whole frames)")
    p.add_argument("--max-frames", type=int, default=None, help="use at most this many frames")
    p.add_argument("--time-limit", type=float, default=None, help="stop training after this many seconds")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch CPU threads")
    p.add_argument("--device", default="cpu",
                   help="train on cpu, cuda or cuda:N (a workstation GPU; the model files are the same)")
    from ood_monitor.cli.train_cmd import add_engine_options, add_spool_option

    add_engine_options(p)
    add_spool_option(p)
    add_label_options(p, training=True)


def add_commands(train_sub: argparse._SubParsersAction) -> None:
    """Add dcae, dit and ddpm to the `ood-monitor train` sub-commands."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    d = train_sub.add_parser("dcae", help="train the DC-AE autoencoder (diffusion latent space)", formatter_class=fmt)
    _common(d, steps=3000, batch=16, lr=1e-3, crop=64)
    d.add_argument("--latent-channels", type=int, default=8)
    d.add_argument("--channels", default="16,32,64,128", help="stage widths; compression = 2^(stages-1)")
    d.add_argument("--layers", default="0,1,1,1", help="blocks per stage")
    d.set_defaults(func=run, model="dcae")
    t = train_sub.add_parser("dit", help="train the latent DiT on DC-AE latents", formatter_class=fmt)
    _common(t, steps=20000, batch=32, lr=5e-4, crop=None)
    t.add_argument("--dcae", default="models/dcae", help="trained DC-AE directory")
    t.add_argument("--width", type=int, default=128)
    t.add_argument("--depth", type=int, default=6)
    t.add_argument("--heads", type=int, default=4)
    t.add_argument("--patch", type=int, default=2)
    t.set_defaults(func=run, model="dit")
    u = train_sub.add_parser("ddpm", help="train the pixel-space DDPM baseline U-Net", formatter_class=fmt)
    _common(u, steps=3000, batch=16, lr=5e-4, crop=64)
    u.add_argument("--channels", default="32,64,96,128", help="U-Net widths per level")
    u.set_defaults(func=run, model="ddpm")


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def load_all(tr, data: list, args: argparse.Namespace, log, spool_dir):
    """Frames of every input, in order, at most --max-frames in all, spooled in `spool_dir` (one read-only
    memory map over all inputs)."""
    from ood_monitor.data.spool import FrameSpool

    spool = FrameSpool(spool_dir, "images")
    left = args.max_frames
    for path in data:
        if left is not None and left <= 0:
            break
        part = tr.load_images(path, args.size, left, log, labels=label_spec(args),
                              keep_ood=args.keep_anomalous_frames, image_topic=args.image_topic, spool=spool)
        left = None if left is None else left - len(part)
    spool.close()
    return spool.array()


def run(args: argparse.Namespace) -> int:
    from ood_monitor.data.spool import spool_directory

    with spool_directory(args.spool_dir) as folder:
        return train_from(args, folder)


def train_from(args: argparse.Namespace, spool_dir) -> int:
    """`train dcae|dit|ddpm` with its frames spooled in `spool_dir`."""
    import torch

    from ood_monitor.core.diffusion import train as tr
    from ood_monitor.core.diffusion.dcae import DcaeConfig
    from ood_monitor.core.diffusion.dit import DitConfig
    from ood_monitor.core.diffusion.schedules import ScheduleConfig
    from ood_monitor.core.diffusion.unet import UNetConfig

    torch.set_num_threads(max(1, args.threads))

    def log(msg: str) -> None:
        print(msg, flush=True)

    cfg = tr.TrainConfig(steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed, ema_decay=args.ema,
                         crop=args.crop or None, time_limit_s=args.time_limit, device=args.device,
                         command=" ".join(["ood-monitor", *sys.argv[1:]]))
    try:
        tr.training_device(args.device, getattr(args, "engine", "local"))  # refused before the frames are read
        from ood_monitor.fleet.inputs import describe, expand_inputs

        data = expand_inputs(args.data if isinstance(args.data, list) else [args.data])
        source = ", ".join(map(str, data))
        log(f"reading frames from {describe(data)} ({args.size}x{args.size}) ...")
        images = load_all(tr, data, args, log, spool_dir)
        log(f"{len(images)} frames ({images.nbytes / 1e6:.0f} MB, spooled in {spool_dir}); training {args.model} "
            f"-> {args.out}")
        if args.model == "dcae":
            arch = DcaeConfig(image_size=args.size, latent_channels=args.latent_channels,
                              channels=_ints(args.channels), layers=_ints(args.layers))
            train, rest = tr.train_dcae, (arch, cfg, args.out, args.resume)
        elif args.model == "dit":
            arch = DitConfig(width=args.width, depth=args.depth, heads=args.heads, patch=args.patch)
            train, rest = tr.train_dit, (args.dcae, arch, ScheduleConfig(), cfg, args.out, args.resume)
        else:
            arch = UNetConfig(image_size=args.size, channels=_ints(args.channels))
            train, rest = tr.train_ddpm, (arch, ScheduleConfig(clip_sample=True), cfg, args.out, args.resume)
        if getattr(args, "engine", "local") == "ray":
            from ood_monitor.fleet.train_ray import train_diffusion_on_ray

            log(f"Ray Train: {args.workers} data-parallel workers x {args.threads} threads, global batch {args.batch}")
            train_diffusion_on_ray(train, images, rest, {"source": source}, args.workers, args.address, args.threads)
            out = args.out
        else:
            out = train(images, *rest, log=log, source=source)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log(f"wrote {out}")
    return 0
