"""β-VAE for images (3 channels) or dense optical flow (2 channels): the detector pair of arXiv 2409.00880
(docs/methods.md#vae-detectors).

The encoder is a module of its own because the deployed graph is encoder-only (the KL score needs no
decoder). It is split into a deterministic `trunk` (convolutions and the first dense layer) and a
stochastic `tail` (dropout and the last dense layers), so MC dropout can run the trunk once and only the
cheap tail N times (core/uncertainty.py).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import pairwise
from typing import NamedTuple

import torch
from torch import nn

KIND_CHANNELS = {"image": 3, "flow": 2}
LOGVAR_RANGE = (-12.0, 8.0)


@dataclass(frozen=True)
class VaeConfig:
    """Architecture. Every stride-2 conv in `widths` halves the input, so height and width must be
    divisible by 2**len(widths); `channels` follows `kind` when left as None."""

    kind: str = "image"
    channels: int | None = None
    height: int = 128
    width: int = 128
    latent: int = 30
    beta: float = 1.4
    widths: tuple[int, ...] = (16, 32, 64, 128, 128)
    hidden: int = 256
    dropout: float = 0.1
    recon_sigma: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in KIND_CHANNELS:
            raise ValueError(f"kind must be one of {sorted(KIND_CHANNELS)}, got {self.kind!r}")
        if self.channels is None:
            object.__setattr__(self, "channels", KIND_CHANNELS[self.kind])
        if self.channels != KIND_CHANNELS[self.kind]:
            raise ValueError(f"kind {self.kind!r} needs {KIND_CHANNELS[self.kind]} channels, got {self.channels}")
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        step = 2 ** len(self.widths)
        if not self.widths or self.height % step or self.width % step:
            raise ValueError(f"input {self.height}x{self.width} must be divisible by {step} "
                             f"({len(self.widths)} stride-2 layers)")
        if self.latent < 1 or self.hidden < 1 or self.beta <= 0 or self.recon_sigma <= 0:
            raise ValueError("latent and hidden must be >= 1, beta and recon_sigma > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """Shape (C, H, W) of the last conv layer's output."""
        n = len(self.widths)
        return self.widths[-1], self.height >> n, self.width >> n

    def to_dict(self) -> dict:
        return {**asdict(self), "widths": list(self.widths)}

    @classmethod
    def from_dict(cls, data: dict) -> VaeConfig:
        return cls(**{**data, "widths": tuple(data.get("widths", cls.widths))})


class VaeOutput(NamedTuple):
    recon: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor


class Losses(NamedTuple):
    """Per-batch means of the objective and its parts (per frame, summed over pixels and latents)."""

    total: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor, prior_mu: torch.Tensor | None = None,
                prior_logvar: torch.Tensor | None = None) -> torch.Tensor:
    """Element-wise KL(N(mu, e^logvar) || N(prior_mu, e^prior_logvar)); the prior defaults to N(0, 1)."""
    if prior_mu is None or prior_logvar is None:
        return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0)
    return 0.5 * (prior_logvar - logvar + (logvar.exp() + (mu - prior_mu).pow(2)) / prior_logvar.exp() - 1.0)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return mu + torch.randn_like(mu) * (0.5 * logvar).exp()


def split_gaussian(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 2D) -> mu, logvar (clamped so exp() never overflows on strange inputs)."""
    mu, logvar = h.chunk(2, dim=-1)
    return mu, logvar.clamp(*LOGVAR_RANGE)


def conv_down(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1), nn.LeakyReLU(0.2))


def conv_up(cin: int, cout: int, last: bool = False) -> nn.Module:
    conv = nn.ConvTranspose2d(cin, cout, 4, 2, 1)
    return conv if last else nn.Sequential(conv, nn.LeakyReLU(0.2))


def build_trunk(cfg: VaeConfig) -> nn.Sequential:
    """Deterministic part of the encoder: convs, flatten, one dense layer -> (N, hidden)."""
    chans = (cfg.channels, *cfg.widths)
    c, h, w = cfg.feature_shape
    return nn.Sequential(*(conv_down(a, b) for a, b in pairwise(chans)),
                         nn.Flatten(), nn.Linear(c * h * w, cfg.hidden), nn.LeakyReLU(0.2))


class GaussianTail(nn.Module):
    """Stochastic part: dropout -> dense -> dropout -> dense giving (mu, logvar). Dropout is what MC
    sampling switches on; in eval mode the tail is deterministic."""

    def __init__(self, hidden: int, latent: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
                                 nn.Dropout(dropout), nn.Linear(hidden, 2 * latent))

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return split_gaussian(self.net(h))


class Encoder(nn.Module):
    """x (N, C, H, W) -> (mu, logvar), each (N, latent). Exportable alone (ONNX, TensorRT)."""

    def __init__(self, cfg: VaeConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.trunk = build_trunk(cfg)
        self.tail = GaussianTail(cfg.hidden, cfg.latent, cfg.dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tail(self.trunk(x))


class Decoder(nn.Module):
    """z (N, latent) -> reconstruction (N, C, H, W); sigmoid for images, linear for flow."""

    def __init__(self, cfg: VaeConfig, latent: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        c, h, w = cfg.feature_shape
        self.fc = nn.Sequential(nn.Linear(latent or cfg.latent, cfg.hidden), nn.LeakyReLU(0.2),
                                nn.Linear(cfg.hidden, c * h * w), nn.LeakyReLU(0.2), nn.Unflatten(1, (c, h, w)))
        pairs = list(pairwise((*reversed(cfg.widths), cfg.channels)))
        self.up = nn.Sequential(*(conv_up(a, b, last=i == len(pairs) - 1) for i, (a, b) in enumerate(pairs)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.up(self.fc(z))
        return torch.sigmoid(x) if self.cfg.kind == "image" else x


def recon_loss(recon: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian negative log-likelihood up to a constant, summed over pixels: (N,)."""
    return (recon - x).pow(2).flatten(1).sum(1) / (2.0 * sigma * sigma)


class BetaVAE(nn.Module):
    """Flat β-VAE: loss = recon + β·KL(q(z|x) || N(0, I))."""

    architecture = "beta_vae"

    def __init__(self, cfg: VaeConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def forward(self, x: torch.Tensor) -> VaeOutput:
        mu, logvar = self.encoder(x)
        z = reparameterize(mu, logvar) if self.training else mu
        return VaeOutput(self.decoder(z), mu, logvar)

    def objective(self, x: torch.Tensor) -> Losses:
        """The training loss on a batch (samples z in training mode)."""
        out = self(x)
        recon = recon_loss(out.recon, x, self.cfg.recon_sigma).mean()
        kl = gaussian_kl(out.mu, out.logvar).sum(1).mean()
        return Losses(recon + self.cfg.beta * kl, recon, kl)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder output from the posterior mean (offline comparison score; needs the decoder)."""
        return self.decoder(self.encoder(x)[0])
