"""Training loops for the DC-AE, the latent DiT and the pixel DDPM on in-distribution frames only.

One loop serves all three: AdamW with warm-up, EMA weights (shipped), a progress line every few
steps, and resumable checkpoints in `<out>/checkpoint/` (model, EMA and optimizer state as
safetensors, step and settings as JSON). Batches and noise are drawn from generators seeded with
(seed, step), so a resumed run continues exactly as an uninterrupted one would.
"""
from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ood_monitor.core.devices import training_device
from ood_monitor.data.spool import FrameSpool, chunks

from .dcae import DcaeConfig, build_dcae, dcae_loss, encode
from .dit import Dit, DitConfig
from .schedules import ScheduleConfig, ddpm_scheduler
from .synthesizer import host_tensors, load_model, save_model
from .unet import UNet, UNetConfig

if TYPE_CHECKING:
    from ood_monitor.core.vae.train import Parallel
    from ood_monitor.data.labels import LabelSpec

Log = Callable[[str], None]
CHECKPOINT = "checkpoint"


@dataclass
class TrainConfig:
    steps: int = 2000
    batch: int = 16
    lr: float = 1e-3
    seed: int = 0
    ema_decay: float = 0.999
    warmup: int = 100
    crop: int | None = None  # random square crops for the convolutional models (cheaper steps)
    log_every: int = 25
    checkpoint_every: int = 200
    time_limit_s: float | None = None
    device: str = "cpu"  # cpu, cuda or cuda:N; batches and noise are still drawn on the CPU (same data per step)
    command: str = ""  # the command line that trained the model, recorded in config.json

    def to_dict(self) -> dict:
        return asdict(self)


def load_images(path: str | Path, size: int = 128, limit: int | None = None, log: Log | None = None,
                labels: LabelSpec | None = None, keep_ood: bool = False,
                image_topic: str = "/camera/image_raw", spool: FrameSpool | None = None) -> np.ndarray:
    """(N, size, size, 3) uint8 frames of a bag or image folder, prepared like ood/image; frames labelled
    OOD (`labels`: anomaly pixels in their label image) are skipped unless `keep_ood`. With `spool` they are
    appended to it and come back as a read-only memory map (data/spool.py)."""
    from ood_monitor.core.model_input import FrameConfig, prepare_frame
    from ood_monitor.data.labeled_frames import iter_frames

    if not Path(path).exists():
        raise FileNotFoundError(f"data not found: {path}")
    cfg = FrameConfig(size, size)
    frames: list[np.ndarray] | FrameSpool = spool if spool is not None else []
    start = len(frames)
    skipped = 0
    for f in iter_frames(path, image_topic=image_topic, labels=labels):
        if f.is_ood and not keep_ood:
            skipped += 1
            continue
        frames.append(prepare_frame(f.image, cfg))
        read = len(frames) - start
        if log and read % 200 == 0:
            log(f"  read {read} frames")
        if limit and read >= limit:
            break
    if log and skipped:
        log(f"skipped {skipped} frames labelled OOD: the models train on in-distribution frames only")
    if len(frames) == start:
        raise ValueError(f"no nominal frames in {path}")
    return spool.array(start) if spool is not None else np.stack(frames)


def to_model_range(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(np.require(images, requirements=["C", "W"])).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def image_batch(images: np.ndarray, rng: np.random.Generator, batch: int, crop: int | None) -> torch.Tensor:
    """Random frames, random horizontal flips and (optionally) random square crops."""
    idx = rng.integers(0, len(images), batch)
    out = images[idx]
    if crop and crop < images.shape[1]:
        ys = rng.integers(0, images.shape[1] - crop + 1, batch)
        xs = rng.integers(0, images.shape[2] - crop + 1, batch)
        out = np.stack([o[y:y + crop, x:x + crop] for o, y, x in zip(out, ys, xs, strict=True)])
    flip = rng.random(batch) < 0.5
    out[flip] = out[flip, :, ::-1]
    return to_model_range(out)


def diffusion_loss(model: nn.Module, x0: torch.Tensor, alphas_cumprod: torch.Tensor,
                   gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
    """ε-prediction MSE at uniformly drawn timesteps (drawn on the CPU generator, then moved to x0's
    device, so a GPU run sees the same timesteps and noise as a CPU run)."""
    t = torch.randint(0, len(alphas_cumprod), (x0.shape[0],), generator=gen)
    noise = torch.randn(x0.shape, generator=gen).to(x0.device)
    a = alphas_cumprod[t].float().view(-1, 1, 1, 1).to(x0.device)
    loss = F.mse_loss(model(a.sqrt() * x0 + (1 - a).sqrt() * noise, t.to(x0.device)), noise)
    return loss, {"mse": float(loss.detach())}


class Ema:
    """Exponential moving average of the weights, decay warmed up as min(decay, (1+n)/(10+n))."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for e, p in zip(self.model.state_dict().values(), model.state_dict().values(), strict=True):
            if e.dtype.is_floating_point:
                e.lerp_(p, 1 - d)
            else:
                e.copy_(p)


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    sd = opt.state_dict()
    flat = {f"{i}.{k}": v for i, s in sd["state"].items() for k, v in s.items() if torch.is_tensor(v)}
    return flat, sd["param_groups"]


def save_checkpoint(folder: Path, model: nn.Module, ema: Ema, opt: torch.optim.Optimizer, state: dict) -> None:
    """Checkpoint on the host (a CUDA run resumes on any device)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(host_tensors(model.state_dict()), str(folder / "model.safetensors"))
    save_file(host_tensors(ema.model.state_dict()), str(folder / "ema.safetensors"))
    flat, groups = _optimizer_tensors(opt)
    save_file(host_tensors(flat), str(folder / "optimizer.safetensors"))
    (folder / "state.json").write_text(json.dumps({**state, "param_groups": groups}, indent=2))


def load_checkpoint(folder: Path, model: nn.Module, ema: Ema, opt: torch.optim.Optimizer) -> dict:
    """Restore a checkpoint in place; returns its JSON state (step, losses, settings)."""
    state = json.loads((folder / "state.json").read_text())
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    ema.model.load_state_dict(load_file(str(folder / "ema.safetensors")))
    per_param: dict[int, dict] = {}
    for key, value in load_file(str(folder / "optimizer.safetensors")).items():
        idx, name = key.split(".", 1)
        per_param.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": per_param, "param_groups": state.pop("param_groups")})
    return state


def train_loop(model: nn.Module, loss_fn: Callable[[int], tuple[torch.Tensor, dict[str, float]]],
               cfg: TrainConfig, out: Path, resume: bool = False, log: Log = print,
               parallel: Parallel | None = None) -> tuple[nn.Module, dict]:
    """Run `cfg.steps` optimizer steps of `loss_fn(step)` on `cfg.device` (the model is moved there; the
    loss function's batches must be too); returns (EMA model on the CPU, training record). With
    `parallel` (data-parallel workers, see core.vae.train.Parallel) gradients are averaged across workers
    before clipping, every worker stops at the same step and only rank 0 logs and writes checkpoints."""
    main = parallel is None or parallel.rank == 0
    if not main:
        log = _quiet
    model.to(training_device(cfg.device, "local" if parallel is None else "ray"))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    ema = Ema(model, cfg.ema_decay)
    ckpt = out / CHECKPOINT
    start, history, elapsed0 = 0, [], 0.0
    if resume and (ckpt / "state.json").is_file():
        state = load_checkpoint(ckpt, model, ema, opt)
        start, history, elapsed0 = state["step"], state["history"], state.get("elapsed_s", 0.0)
        log(f"resumed from {ckpt} at step {start}")
    t0 = time.perf_counter()
    step, running = start, []
    model.train()
    while step < cfg.steps:
        late = bool(cfg.time_limit_s) and elapsed0 + time.perf_counter() - t0 > cfg.time_limit_s
        if parallel is not None and cfg.time_limit_s:
            late = parallel.any(late)
        if late:
            log(f"time limit {cfg.time_limit_s:.0f} s reached at step {step}")
            break
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))
        loss, parts = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if parallel is not None:
            parallel.sync_gradients(model)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model, step)
        step += 1
        running.append(float(loss.detach()))
        if step % cfg.log_every == 0 or step == cfg.steps:
            elapsed = elapsed0 + time.perf_counter() - t0
            mean = float(np.mean(running))
            history.append({"step": step, "loss": mean, "elapsed_s": round(elapsed, 1)})
            detail = " ".join(f"{k} {v:.4f}" for k, v in parts.items())
            log(f"step {step}/{cfg.steps}  loss {mean:.4f}  ({detail})  {elapsed:.0f} s  "
                f"{(step - start) / max(1e-9, time.perf_counter() - t0):.2f} it/s")
            running = []
        if step % cfg.checkpoint_every == 0 and main:
            save_checkpoint(ckpt, model, ema, opt, {"step": step, "history": history,
                                                    "elapsed_s": elapsed0 + time.perf_counter() - t0,
                                                    "train": cfg.to_dict()})
    elapsed = elapsed0 + time.perf_counter() - t0
    if main:
        save_checkpoint(ckpt, model, ema, opt, {"step": step, "history": history, "elapsed_s": elapsed,
                                                "train": cfg.to_dict()})
    return ema.model.cpu(), {"settings": cfg.to_dict(), "steps": step, "elapsed_s": round(elapsed, 1),
                       "history": history}


def _quiet(_msg: str) -> None:
    """The log of data-parallel workers other than rank 0."""


def _generators(cfg: TrainConfig, step: int, parallel: Parallel | None = None
                ) -> tuple[np.random.Generator, torch.Generator]:
    """Batch and noise generators of a step (rank 0 of a data-parallel run draws what a local run draws)."""
    rank = 0 if parallel is None else parallel.rank
    if rank == 0:
        return np.random.default_rng([cfg.seed, step]), torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    return (np.random.default_rng([cfg.seed, step, rank]),
            torch.Generator().manual_seed((cfg.seed * 1_000_003 + step) * 1_009 + rank))


def _worker_batch(cfg: TrainConfig, parallel: Parallel | None) -> int:
    """Frames per step on this worker: the global batch shared by the workers."""
    if parallel is None:
        return cfg.batch
    if cfg.batch < parallel.world:
        raise ValueError(f"--batch {cfg.batch} cannot be shared by {parallel.world} workers")
    return cfg.batch // parallel.world


def data_record(images: np.ndarray, source: str) -> dict:
    import hashlib

    digest = hashlib.sha256()
    for block in chunks(images):
        digest.update(block.tobytes())
    return {"source": source, "frames": int(len(images)), "sha256": digest.hexdigest()[:16]}


@torch.no_grad()
def latent_scale(model: nn.Module, images: np.ndarray, batch: int = 32) -> float:
    """1 / std of the unscaled latents of `images`."""
    z = torch.cat([model.encode(to_model_range(images[i:i + batch])).latent for i in range(0, len(images), batch)])
    return float(1.0 / z.std().clamp_min(1e-6))


def train_dcae(images: np.ndarray, arch: DcaeConfig, cfg: TrainConfig, out: str | Path, resume: bool = False,
               log: Log = print, source: str = "", parallel: Parallel | None = None) -> Path:
    torch.manual_seed(cfg.seed)
    model = build_dcae(arch)
    batch, device = _worker_batch(cfg, parallel), training_device(cfg.device)

    def loss_fn(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        rng, _ = _generators(cfg, step, parallel)
        return dcae_loss(model, image_batch(images, rng, batch, cfg.crop).to(device))

    ema, record = train_loop(model, loss_fn, cfg, Path(out), resume, log, parallel)
    if parallel is not None and parallel.rank != 0:
        return Path(out)
    arch.scaling_factor = latent_scale(ema, images)
    card = {"type": "dcae", "arch": arch.to_dict(), "image_size": arch.image_size,
            "data": data_record(images, source), "training": record,
            "metrics": reconstruction_metrics(ema, images[:64])}
    log(f"latent scaling factor {arch.scaling_factor:.4f}; reconstruction {card['metrics']}")
    return save_model(out, ema, card)


@torch.no_grad()
def reconstruction_metrics(model: nn.Module, images: np.ndarray) -> dict[str, float]:
    """PSNR (dB) and SSIM of autoencoder reconstructions in [0, 255] / [-1, 1]."""
    from .dcae import ssim

    x = to_model_range(images)
    r = model.decode(model.encode(x).latent).sample.clamp(-1, 1)
    mse = F.mse_loss((r + 1) * 127.5, (x + 1) * 127.5)
    return {"psnr_db": round(float(10 * torch.log10(255.0**2 / mse)), 2), "ssim": round(float(ssim(r, x)), 4)}


@torch.no_grad()
def encode_dataset(dcae_dir: str | Path, images: np.ndarray, batch: int = 32) -> tuple[torch.Tensor, dict]:
    """Scaled latents of the frames and of their mirror images (the DiT's training set)."""
    ae, card = load_model(dcae_dir, "dcae")
    scale = float(card["arch"]["scaling_factor"])
    z = [encode(ae, to_model_range(images[i:i + batch]), scale) for i in range(0, len(images), batch)]
    z += [encode(ae, to_model_range(images[i:i + batch, :, ::-1]), scale) for i in range(0, len(images), batch)]
    return torch.cat(z), card


def train_dit(images: np.ndarray, dcae_dir: str | Path, arch: DitConfig, schedule: ScheduleConfig,
              cfg: TrainConfig, out: str | Path, resume: bool = False, log: Log = print, source: str = "",
              parallel: Parallel | None = None) -> Path:
    log(f"encoding {len(images)} frames (+ mirrors) with {dcae_dir} ...")
    latents, ae_card = encode_dataset(dcae_dir, images)
    ae = DcaeConfig(**ae_card["arch"])
    arch.latent_channels, arch.latent_size = ae.latent_channels, ae.latent_size
    torch.manual_seed(cfg.seed)
    model = Dit(arch)
    alphas = ddpm_scheduler(schedule).alphas_cumprod
    batch, device = _worker_batch(cfg, parallel), training_device(cfg.device)

    def loss_fn(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        rng, gen = _generators(cfg, step, parallel)
        return diffusion_loss(model, latents[rng.integers(0, len(latents), batch)].to(device), alphas, gen)

    ema, record = train_loop(model, loss_fn, cfg, Path(out), resume, log, parallel)
    if parallel is not None and parallel.rank != 0:
        return Path(out)
    rel = Path(dcae_dir).resolve()
    try:
        rel = rel.relative_to(Path(out).resolve().parent)
        rel = Path("..") / rel
    except ValueError:
        pass
    card = {"type": "latent_dit", "arch": asdict(arch), "schedule": schedule.to_dict(), "dcae": str(rel),
            "dcae_sha256": ae_card.get("weights_sha256", ""), "image_size": ae.image_size,
            "sampling": {"steps": 10, "scale": 4.0, "strength": 0.5, "kind": "gradient"},
            "data": data_record(images, source), "training": record}
    return save_model(out, ema, card)


def train_ddpm(images: np.ndarray, arch: UNetConfig, schedule: ScheduleConfig, cfg: TrainConfig,
               out: str | Path, resume: bool = False, log: Log = print, source: str = "",
               parallel: Parallel | None = None) -> Path:
    torch.manual_seed(cfg.seed)
    model = UNet(arch)
    alphas = ddpm_scheduler(schedule).alphas_cumprod
    batch, device = _worker_batch(cfg, parallel), training_device(cfg.device)

    def loss_fn(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        rng, gen = _generators(cfg, step, parallel)
        return diffusion_loss(model, image_batch(images, rng, batch, cfg.crop).to(device), alphas, gen)

    ema, record = train_loop(model, loss_fn, cfg, Path(out), resume, log, parallel)
    if parallel is not None and parallel.rank != 0:
        return Path(out)
    card = {"type": "pixel_ddpm", "arch": arch.to_dict(), "schedule": schedule.to_dict(),
            "image_size": arch.image_size,
            "sampling": {"steps": 1000, "scale": 2.0, "strength": 1.0, "kind": "gradfree"},
            "data": data_record(images, source), "training": record}
    return save_model(out, ema, card)
