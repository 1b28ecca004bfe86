"""Two-level hierarchical VAE (arXiv 2506.10089, docs/methods.md#hierarchical-vae): a fixed latent budget
split between levels by a ratio r.

Inference path x -> z1 -> z2 (bottom-up), generative path z2 ~ N(0, I) -> p(z1 | z2) -> x. The budget
`latent` is split as d1 = round(r * latent) dimensions for the bottom level z1 (what the decoder sees:
too few lose information) and d2 = latent - d1 for the top level z2 (too few and the top level's
prior attenuates the signal), which is the trade-off that paper tunes.

The encoder reports z1's posterior *standardised by its conditional prior*: KL is invariant under the
affine map z -> (z - mu_p) / sigma_p applied to both Gaussians, so KL(q(z1|x) || p(z1|z2)) equals the
KL of N((mu1 - mu_p) / sigma_p, sigma1^2 / sigma_p^2) against N(0, 1). The encoder therefore returns
(mu, logvar) of size d1 + d2 whose KL against N(0, I) is the hierarchical KL, and everything downstream
(dimension selection, conformal p-values, MC dropout, export) treats both models alike.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .beta_vae import (
    Decoder,
    GaussianTail,
    Losses,
    VaeConfig,
    build_trunk,
    gaussian_kl,
    recon_loss,
    reparameterize,
    split_gaussian,
)


@dataclass(frozen=True)
class HvaeConfig(VaeConfig):
    """VaeConfig plus `ratio`, the share of the latent budget given to the bottom level z1."""

    ratio: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.ratio < 1.0:
            raise ValueError(f"hvae ratio must be in (0, 1), got {self.ratio}")
        if self.latent < 2:
            raise ValueError("a two-level HVAE needs a latent budget of at least 2")

    @property
    def level_dims(self) -> tuple[int, int]:
        d1 = min(max(round(self.ratio * self.latent), 1), self.latent - 1)
        return d1, self.latent - d1


def mlp(cin: int, hidden: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cin, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, cout))


class HvaeTail(nn.Module):
    """trunk features -> q(z1|x); z1 -> q(z2|z1); z2 -> p(z1|z2). Dropout lives in the q(z1|x) head."""

    def __init__(self, cfg: HvaeConfig) -> None:
        super().__init__()
        d1, d2 = cfg.level_dims
        self.q1 = GaussianTail(cfg.hidden, d1, cfg.dropout)
        self.q2 = mlp(d1, cfg.hidden, 2 * d2)
        self.p1 = mlp(d2, cfg.hidden, 2 * d1)

    def levels(self, h: torch.Tensor, sample: bool) -> dict[str, torch.Tensor]:
        """All Gaussians of one pass; z's are samples in training, means otherwise."""
        mu1, lv1 = self.q1(h)
        z1 = reparameterize(mu1, lv1) if sample else mu1
        mu2, lv2 = split_gaussian(self.q2(z1))
        z2 = reparameterize(mu2, lv2) if sample else mu2
        mu_p, lv_p = split_gaussian(self.p1(z2))
        return {"mu1": mu1, "lv1": lv1, "z1": z1, "mu2": mu2, "lv2": lv2, "mu_p": mu_p, "lv_p": lv_p}

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.levels(h, sample=False)
        mu1 = (g["mu1"] - g["mu_p"]) * (-0.5 * g["lv_p"]).exp()
        return torch.cat([mu1, g["mu2"]], 1), torch.cat([g["lv1"] - g["lv_p"], g["lv2"]], 1)


class HvaeEncoder(nn.Module):
    """x -> standardised (mu, logvar) over the whole budget (d1 + d2), see the module docstring."""

    def __init__(self, cfg: HvaeConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.trunk = build_trunk(cfg)
        self.tail = HvaeTail(cfg)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tail(self.trunk(x))


class HierarchicalVAE(nn.Module):
    """loss = recon(x | z1) + β·[KL(q(z1|x) || p(z1|z2)) + KL(q(z2|z1) || N(0, I))]."""

    architecture = "hvae"

    def __init__(self, cfg: HvaeConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = HvaeEncoder(cfg)
        self.decoder = Decoder(cfg, latent=cfg.level_dims[0])

    def objective(self, x: torch.Tensor) -> Losses:
        g = self.encoder.tail.levels(self.encoder.trunk(x), sample=self.training)
        recon = recon_loss(self.decoder(g["z1"]), x, self.cfg.recon_sigma).mean()
        kl1 = gaussian_kl(g["mu1"], g["lv1"], g["mu_p"], g["lv_p"]).sum(1)
        kl2 = gaussian_kl(g["mu2"], g["lv2"]).sum(1)
        kl = (kl1 + kl2).mean()
        return Losses(recon + self.cfg.beta * kl, recon, kl)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        g = self.encoder.tail.levels(self.encoder.trunk(x), sample=False)
        return self.decoder(g["mu1"])
