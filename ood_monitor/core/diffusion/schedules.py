"""Noise schedules and timestep plans on diffusers' DDPMScheduler / DDIMScheduler.

One `ScheduleConfig` per model (stored in its config.json) builds both samplers, so DDPM-1000 and DDIM-k
run the same ᾱ_t the model was trained on. DDIM uses "trailing" spacing (the last step lands at t = T-1
from pure noise, which matters with few steps) and η = 0.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from diffusers import DDIMScheduler, DDPMScheduler

SAMPLERS = ("ddim", "ddpm")


@dataclass
class ScheduleConfig:
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    clip_sample: bool = False  # True only for pixel models (x̂₀ clamped to [-1, 1])

    def to_dict(self) -> dict:
        return asdict(self)


def ddpm_scheduler(cfg: ScheduleConfig) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                         clip_sample=cfg.clip_sample, prediction_type="epsilon")


def ddim_scheduler(cfg: ScheduleConfig) -> DDIMScheduler:
    return DDIMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                         clip_sample=cfg.clip_sample, prediction_type="epsilon", set_alpha_to_one=True,
                         timestep_spacing="trailing")


def make_scheduler(cfg: ScheduleConfig, sampler: str) -> DDIMScheduler | DDPMScheduler:
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    return ddim_scheduler(cfg) if sampler == "ddim" else ddpm_scheduler(cfg)


def plan_timesteps(scheduler: DDIMScheduler | DDPMScheduler, steps: int, strength: float) -> torch.Tensor:
    """The descending timesteps to run: `steps` of them, evenly spaced below strength·T.

    diffusers' DDIM update assumes the gap T // num_inference_steps between steps, so a start strength s
    is realised with a grid of n = ceil(steps / s) steps, gap = T // n, anchored at gap - 1 so the last
    update lands on ᾱ = 1 (x₀ exactly); the `steps` lowest grid points below s·T are kept. DDPM walks
    every timestep below s·T (its `steps` is always T).
    """
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    total = scheduler.config.num_train_timesteps
    limit = strength * total
    if isinstance(scheduler, DDPMScheduler):
        scheduler.set_timesteps(total)
        return scheduler.timesteps[scheduler.timesteps < limit]
    n = min(total, math.ceil(steps / strength - 1e-9))
    scheduler.set_timesteps(n)
    gap = total // n
    grid = torch.arange(n, 0, -1) * gap - 1
    scheduler.timesteps = grid
    return grid[grid < limit][-steps:]


def alpha_bar(scheduler: DDIMScheduler | DDPMScheduler, t: int | torch.Tensor) -> torch.Tensor:
    """ᾱ_t as a 0-d float32 tensor."""
    return scheduler.alphas_cumprod[int(t)].float()


def add_noise(scheduler: DDIMScheduler | DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor,
              t: int | torch.Tensor) -> torch.Tensor:
    """x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε."""
    a = alpha_bar(scheduler, t).to(x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise
