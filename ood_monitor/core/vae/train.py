"""Training loop for the VAE detectors: Adam, seeded, a held-out validation split of contiguous
blocks (neighbouring frames are near-duplicates, so a random split would validate on training frames),
early stopping on validation loss keeping the best weights, optional augmentation, progress lines and a
training curve for config.json.

KL warm-up (`kl_warmup` epochs) ramps the KL weight linearly from 0 to 1 over the first steps: without it
the image VAE can fall into posterior collapse in its first epochs (KL ~ 0, every frame encoded as the
prior), and a collapsed encoder scores every frame alike. Validation always uses the full objective.

Augmentation (arXiv 2602.01459: it is what keeps OOD detection robust under quantization) is deliberately
mild: brightness/contrast jitter large enough to cover camera exposure changes would teach the image VAE that
global illumination shifts are normal, which is exactly what it must detect.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ood_monitor.core.devices import training_device
from ood_monitor.core.motion import MotionStats, fit_motion
from ood_monitor.core.motion import min_frames as motion_min_frames
from ood_monitor.core.nonconformity import encode, latent_stats, select_dims, stuck_dims
from ood_monitor.core.texture import TextureHead, min_frames

from .beta_vae import LOGVAR_RANGE
from .dataset import FrameSet


@dataclass(frozen=True)
class AugmentConfig:
    """Brightness: additive jitter (fraction of full scale); contrast: multiplicative around the frame
    mean; shift: max integer translation in pixels (edge padding); hflip: mirror (negates u for flow).
    Brightness/contrast apply to images only: flow carries no appearance."""

    enabled: bool = True
    brightness: float = 0.05
    contrast: float = 0.05
    shift: int = 4
    hflip: bool = True


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch: int = 64
    lr: float = 1e-3
    val_split: float = 0.1
    patience: int = 5
    seed: int = 0
    max_steps: int | None = None
    time_limit_s: float | None = None
    val_block: int = 32
    kl_warmup: float = 0.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    device: str = "cpu"  # cpu, cuda or cuda:N; batches and augmentation are still drawn on the CPU

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch < 1 or self.lr <= 0 or self.patience < 1:
            raise ValueError("epochs, batch and patience must be >= 1 and lr > 0")
        if self.kl_warmup < 0:
            raise ValueError(f"kl_warmup must be >= 0 epochs, got {self.kl_warmup}")
        if not 0.0 <= self.val_split < 1.0:
            raise ValueError(f"val_split must be in [0, 1), got {self.val_split}")


@dataclass
class TrainResult:
    curve: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val: float = math.inf
    steps: int = 0
    seconds: float = 0.0
    stopped: str = "all epochs done"

    def to_dict(self) -> dict:
        return asdict(self)


class Parallel(Protocol):
    """Data-parallel training hook (one per worker; `ood_monitor.fleet.distributed` implements it over
    torch.distributed for Ray Train): every worker starts from the same weights, trains on its share of
    the rows, and gradients and the statistics that decide stopping are averaged across workers, so all
    workers keep identical weights. Without one (`parallel=None`) training is the single-process loop."""

    rank: int
    world: int

    def shard(self, rows: np.ndarray) -> np.ndarray: ...

    def sync_gradients(self, model: nn.Module) -> None: ...

    def average(self, values: np.ndarray) -> np.ndarray: ...

    def any(self, flag: bool) -> bool: ...


def split_blocks(n: int, frac: float, block: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Train / validation row indices; validation takes whole blocks of `block` consecutive rows."""
    if frac <= 0 or n < 2:
        return np.arange(n), np.arange(0)
    starts = np.arange(0, n, block)
    n_val = min(len(starts) - 1, max(1, round(frac * len(starts))))
    if n_val < 1:  # fewer than two blocks: fall back to single rows
        val = rng.choice(n, size=max(1, round(frac * n)), replace=False)
    else:
        chosen = rng.choice(starts, size=n_val, replace=False)
        val = np.concatenate([np.arange(s, min(n, s + block)) for s in chosen])
    mask = np.zeros(n, bool)
    mask[val] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def augment_batch(x: torch.Tensor, kind: str, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Random per-frame jitter, shift and flip of a model-input batch (N, C, H, W)."""
    n = x.shape[0]
    if kind == "image" and (cfg.brightness > 0 or cfg.contrast > 0):
        b = (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * cfg.brightness
        c = 1 + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * cfg.contrast
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * c + mean + b).clamp(0.0, 1.0)
    if cfg.shift > 0:
        s = cfg.shift
        padded = F.pad(x, (s, s, s, s), mode="replicate")
        dy, dx = (torch.randint(0, 2 * s + 1, (n,), generator=gen) for _ in range(2))
        h, w = x.shape[-2:]
        x = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    if cfg.hflip:
        flip = torch.rand(n, generator=gen) < 0.5
        if flip.any():
            x = x.clone()
            flipped = x[flip].flip(-1)
            if kind == "flow":
                flipped[:, 0] = -flipped[:, 0]  # mirrored motion: u changes sign, v does not
            x[flip] = flipped
    return x


@torch.no_grad()
def evaluate_loss(model: nn.Module, data: FrameSet, rows: np.ndarray, flow_scale: float, batch: int,
                  device: torch.device | str = "cpu") -> dict[str, float]:
    """Mean loss parts over `rows` with z at the posterior mean (eval mode: deterministic)."""
    model.eval()
    sums = np.zeros(3)
    for start in range(0, len(rows), batch):
        idx = rows[start:start + batch]
        parts = model.objective(torch.from_numpy(data.inputs(idx, flow_scale)).to(device))
        sums += len(idx) * np.array([float(p) for p in parts])
    total, recon, kl = sums / max(1, len(rows))
    return {"loss": total, "recon": recon, "kl": kl}


def train_vae(model: nn.Module, data: FrameSet, flow_scale: float, cfg: TrainConfig,
              log: Callable[[str], None] = print, parallel: Parallel | None = None) -> TrainResult:
    """Fit `model` (BetaVAE or HierarchicalVAE) on `data` on `cfg.device`; leaves the best-validation
    weights loaded and the model back on the CPU (where scoring, the card's statistics and the model file
    are made). With `parallel`, this is one data-parallel worker (see `Parallel`; CPU workers only)."""
    device = training_device(cfg.device, "local" if parallel is None else "ray")
    model.to(device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_rows, val_rows = split_blocks(len(data), cfg.val_split, cfg.val_block, rng)
    if parallel is not None:
        train_rows = parallel.shard(train_rows)
        gen.manual_seed(cfg.seed * 1_000_003 + parallel.rank)  # each worker its own augmentations
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    res, best_state, stale, t0 = TrainResult(), None, 0, time.monotonic()
    steps_per_epoch = math.ceil(len(train_rows) / cfg.batch)
    workers = f" per worker x {parallel.world} workers" if parallel is not None else ""
    on = "" if device.type == "cpu" else f" ({device})"
    log(f"training {type(model).__name__} on {len(train_rows)} frames{workers}{on}, validating on {len(val_rows)}; "
        f"{steps_per_epoch} steps/epoch")
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        sums, seen = np.zeros(3), 0
        for idx in np.array_split(rng.permutation(train_rows), steps_per_epoch):
            x = torch.from_numpy(data.inputs(np.sort(idx), flow_scale))
            if cfg.augment.enabled:
                x = augment_batch(x, data.kind, cfg.augment, gen)
            parts = model.objective(x.to(device))
            weight = kl_weight(res.steps, cfg.kl_warmup * steps_per_epoch)
            loss = parts.total if weight >= 1.0 else parts.recon + weight * (parts.total - parts.recon)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if parallel is not None:
                parallel.sync_gradients(model)
            opt.step()
            sums += len(idx) * np.array([float(p.detach()) for p in parts])
            seen += len(idx)
            res.steps += 1
            if _out_of_budget(cfg, res.steps, t0, parallel):
                break
        tr = sums / max(1, seen) if parallel is None else parallel.average(sums / max(1, seen))
        val = evaluate_loss(model, data, val_rows, flow_scale, cfg.batch, device) if len(val_rows) else None
        monitored = val["loss"] if val else float(tr[0])
        res.curve.append({"epoch": epoch, "steps": res.steps, "train_loss": float(tr[0]),
                          "train_recon": float(tr[1]), "train_kl": float(tr[2]),
                          "val_loss": val["loss"] if val else None, "seconds": round(time.monotonic() - t0, 2)})
        improved = monitored < res.best_val
        if improved:
            res.best_val, res.best_epoch, stale = monitored, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        log(f"epoch {epoch:3d}/{cfg.epochs}  train {tr[0]:10.2f} (recon {tr[1]:9.2f}, kl {tr[2]:7.2f})  "
            f"val {monitored:10.2f}{' *' if improved else '  '}  {time.monotonic() - t0:6.1f}s")
        if stale >= cfg.patience:
            res.stopped = f"early stop: no validation improvement for {cfg.patience} epochs"
            break
        if _out_of_budget(cfg, res.steps, t0, parallel):
            res.stopped = "step or time budget reached"
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.cpu()
    res.seconds = round(time.monotonic() - t0, 2)
    log(f"{res.stopped}; best epoch {res.best_epoch} (val {res.best_val:.2f}) after {res.seconds:.0f}s")
    model.eval()
    return res


def kl_weight(step: int, warmup_steps: float) -> float:
    """Linear KL warm-up: 0 at the first step, 1 from `warmup_steps` on (always 1 without warm-up)."""
    return 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)


def _out_of_budget(cfg: TrainConfig, steps: int, t0: float, parallel: Parallel | None = None) -> bool:
    if cfg.max_steps is not None and steps >= cfg.max_steps:
        return True
    if cfg.time_limit_s is None:
        return False
    late = time.monotonic() - t0 >= cfg.time_limit_s
    return late if parallel is None else parallel.any(late)  # all workers stop at the same step


def training_stats(encoder: nn.Module, data: FrameSet, flow_scale: float, batch: int = 256
                   ) -> tuple[dict[str, list[float]], TextureHead | MotionStats | None]:
    """From one pass over `data` (the training set): per-dimension statistics of the posteriors
    (`kl_mean` is what dimension selection ranks, the rest is what the two-sided scores standardise
    with) and the score's frame term: the texture head of `kl_texture` for images, the motion statistics
    of `posterior_motion` for flow (None for sets too small to fit them: texture.min_frames,
    motion.min_frames)."""
    mu, logvar = encode(encoder, lambda s: data.inputs(s, flow_scale), len(data), batch)
    term = None
    if data.kind == "image" and len(data) >= min_frames(mu.shape[1]):
        term = TextureHead.fit_frames(mu, logvar, data.raw)
    elif data.kind == "flow" and len(data) >= motion_min_frames():
        term = fit_motion(data.raw)
    return latent_stats(mu, logvar), term


def choose_dims(encoder: nn.Module, data: FrameSet, flow_scale: float, k: int
                ) -> tuple[list[int], np.ndarray, dict[str, list[float]], TextureHead | MotionStats | None]:
    """The k most used latent dims, the usage (mean KL) of every dim, the training statistics and the
    score's frame term (texture head for images, motion statistics for flow)."""
    stats, term = training_stats(encoder, data, flow_scale)
    usage = np.asarray(stats["kl_mean"])
    return select_dims(usage, k, ~stuck_dims(stats, LOGVAR_RANGE)), usage, stats, term
