"""Similarity-guided sampling (Algorithm 1 of the efficient anomalies-by-synthesis report,
docs/methods.md#similarity-guided-ddim) and its gradient-free variant.

Both edit the noise prediction of any ε-model before the scheduler's update (DDIM with η = 0, or
DDPM for the 1000-step baseline):

- "gradient" (Algorithm 1): r_sim(a, b) = exp(-‖a - b‖²) so ∇ log r_sim = -∇‖μ₀(x_t) - y‖², with
  μ₀(x_t) = (x_t - √(1-ᾱ_t)·ε_θ(x_t)) / √ᾱ_t and the gradient taken through the denoiser;
  ε̂ = ε - s·√(1-ᾱ_t)·∇ log r_sim. ‖·‖² is a sum over elements, so s does not depend on image size.
- "gradfree" (the Tiny fork): y_t = √ᾱ_t·y + √(1-ᾱ_t)·ε (the input noised to step t with the model's
  own noise, "reverse timestep matching"), ε̂ = ε - w·√(1-ᾱ_t)·(y_t - x_t); no backprop, so it runs
  under no_grad and also on inference-only kernels.
- "none": plain (unguided) sampling from the model.

Both move the predicted x̂₀ toward y; to first order the move is 2s(1-ᾱ)/ᾱ·(y - μ₀) (gradient) and
w(1-ᾱ)·(y - μ₀) (gradfree). With `clip_pull` the move is capped at ‖y - μ₀‖, i.e. x̂₀ never overshoots
past the input: at high noise the gradient form's 1/ᾱ factor would otherwise make large scales diverge.
Below the cap both are exactly the published updates.

`strength` s ∈ (0, 1]: sampling starts from the input noised to t ≈ s·T (SDEdit-style) instead of pure
noise; s = 1 starts from N(0, I) as Algorithm 1 does.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from .schedules import add_noise, alpha_bar, plan_timesteps

GUIDANCE_KINDS = ("gradient", "gradfree", "none")
EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class GuidanceConfig:
    steps: int = 10
    scale: float = 1.0
    strength: float = 0.6
    kind: str = "gradient"
    clip_pull: bool = True

    def __post_init__(self) -> None:
        if self.kind not in GUIDANCE_KINDS:
            raise ValueError(f"guidance kind must be one of {GUIDANCE_KINDS}, got {self.kind!r}")
        if self.scale < 0:
            raise ValueError(f"guidance scale must be >= 0, got {self.scale}")

    def to_dict(self) -> dict:
        return asdict(self)


def predicted_x0(x_t: torch.Tensor, eps: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """μ₀(x_t) = (x_t - √(1-ᾱ)·ε) / √ᾱ."""
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


def _norm(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))


def gradient_eps(model: EpsModel, x_t: torch.Tensor, t: torch.Tensor, a: torch.Tensor,
                 y: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ε, μ₀, ε̂ - ε) for Algorithm 1: backprop of ‖μ₀(x_t) - y‖² through the denoiser."""
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        eps = model(x, t)
        mu0 = predicted_x0(x, eps, a)
        (grad,) = torch.autograd.grad((mu0 - y).square().sum(), x)
    return eps.detach(), mu0.detach(), scale * (1 - a).sqrt() * grad


@torch.no_grad()
def gradfree_eps(model: EpsModel, x_t: torch.Tensor, t: torch.Tensor, a: torch.Tensor,
                 y: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ε, μ₀, ε̂ - ε) for the gradient-free form: pull toward the input noised to step t."""
    eps = model(x_t, t)
    y_t = a.sqrt() * y + (1 - a).sqrt() * eps
    return eps, predicted_x0(x_t, eps, a), -scale * (1 - a).sqrt() * (y_t - x_t)


def guided_eps(model: EpsModel, x_t: torch.Tensor, t: torch.Tensor, a: torch.Tensor, y: torch.Tensor,
               cfg: GuidanceConfig) -> torch.Tensor:
    """ε̂ for one step (detached)."""
    if cfg.kind == "none" or cfg.scale == 0:
        with torch.no_grad():
            return model(x_t, t)
    step = gradient_eps if cfg.kind == "gradient" else gradfree_eps
    eps, mu0, delta = step(model, x_t, t, a, y, cfg.scale)
    if cfg.clip_pull:
        move = (1 - a).sqrt() / a.sqrt() * _norm(delta)  # how far x̂₀ would move
        delta = delta * torch.clamp(_norm(y - mu0) / move.clamp_min(1e-12), max=1.0)
    return eps + delta


@torch.no_grad()
def guided_sample(model: EpsModel, y: torch.Tensor, scheduler: DDIMScheduler | DDPMScheduler,
                  cfg: GuidanceConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Edit `y` (a batch in the model's space) toward the training distribution; returns x₀."""
    timesteps = plan_timesteps(scheduler, cfg.steps, cfg.strength)
    if len(timesteps) == 0:
        return y.clone()
    noise = torch.randn(y.shape, generator=generator, dtype=y.dtype,
                        device=generator.device if generator is not None else y.device).to(y.device)
    x = noise if cfg.strength >= 1.0 else add_noise(scheduler, y, noise, timesteps[0])
    extra = {"eta": 0.0} if isinstance(scheduler, DDIMScheduler) else {"generator": generator}
    for t in timesteps:
        a = alpha_bar(scheduler, t).to(y)
        eps_hat = guided_eps(model, x, t.to(y.device).reshape(1), a, y, cfg)
        x = scheduler.step(eps_hat, t, x, **extra).prev_sample
    return x
