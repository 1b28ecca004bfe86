"""Compact DiT (Peebles & Xie) on DC-AE latents: patchify, transformer blocks with adaLN-Zero timestep
conditioning, unpatchify; predicts the noise ε (unconditional: we only model nominal terrain).

Why our own instead of diffusers' DiT: that one is class-conditional and built for 256x256 ImageNet
latents; ours (width 128, depth 6: 1.8 M parameters) costs a few ms per step on 64 tokens on a
2-core CPU and trains in minutes there. Layer names
(`qkv`, `proj`, `fc1`, `fc2`, `patch_embed`, `t_embed`, `final`) are what `quantize.py` selects on.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class DitConfig:
    latent_channels: int = 8
    latent_size: int = 16
    patch: int = 2
    width: int = 128
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0

    @property
    def tokens(self) -> int:
        return (self.latent_size // self.patch) ** 2

    def to_dict(self) -> dict:
        return asdict(self)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of (N,) timesteps -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, width: int, freq_dim: int = 128) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, d = x.shape
        q, k, v = self.qkv(x).view(n, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, length, d))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DitBlock(nn.Module):
    """Pre-norm attention + MLP, both gated and modulated by the timestep (adaLN-Zero)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(width, int(width * mlp_ratio))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        s1, k1, g1, s2, k2, g2 = self.ada(c).chunk(6, dim=-1)
        x = x + g1[:, None] * self.attn(modulate(self.norm1(x), s1, k1))
        return x + g2[:, None] * self.mlp(modulate(self.norm2(x), s2, k2))


class FinalLayer(nn.Module):
    def __init__(self, width: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, out_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class Dit(nn.Module):
    """ε_θ(z_t, t) on (N, C, S, S) latents."""

    def __init__(self, cfg: DitConfig) -> None:
        super().__init__()
        self.cfg = cfg
        p, c = cfg.patch, cfg.latent_channels
        self.patch_embed = nn.Conv2d(c, cfg.width, kernel_size=p, stride=p)
        self.pos = nn.Parameter(torch.zeros(1, cfg.tokens, cfg.width))
        self.t_embed = TimestepEmbedder(cfg.width)
        self.blocks = nn.ModuleList(DitBlock(cfg.width, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.final = FinalLayer(cfg.width, p * p * c)
        self._init()

    def _init(self) -> None:
        nn.init.normal_(self.pos, std=0.02)
        for block in self.blocks:  # adaLN-Zero: every residual branch starts as identity
            nn.init.zeros_(block.ada[-1].weight)
            nn.init.zeros_(block.ada[-1].bias)
        nn.init.zeros_(self.final.ada[-1].weight)
        nn.init.zeros_(self.final.ada[-1].bias)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n, c, s, _ = z.shape
        p, g = self.cfg.patch, s // self.cfg.patch
        x = self.patch_embed(z).flatten(2).transpose(1, 2) + self.pos
        cond = self.t_embed(t.expand(n) if t.numel() == 1 else t)
        for block in self.blocks:
            x = block(x, cond)
        x = self.final(x, cond)  # (N, g*g, p*p*c)
        return x.view(n, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(n, c, s, s)
