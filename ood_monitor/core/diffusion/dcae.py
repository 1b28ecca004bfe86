"""DC-AE: diffusers' `AutoencoderDC` (deep compression autoencoder) sized for 128x128 frames on a CPU.

Why this config: at 128x128 the default f32c32 DC-AE would leave a 4x4 latent, too coarse for small
pasted objects, and its 1024-wide stages cost seconds per frame on a CPU. We keep DC-AE's design
(residual space-to-channel shortcuts, pixel-(un)shuffle resampling, a linear-attention EfficientViT
stage at the bottom) with narrow stages. `compression=8` gives a 16x16x8 latent (24x fewer numbers than
the frame). Encoding and decoding cost about the same for f8, f16 and f32 at this size, so the choice is
made on reconstruction and on the DiT's token count (16x16 latent, patch 2 = 64 tokens).

Training loss (`dcae_loss`): L1 + `l2_weight`·L2 + `ssim_weight`·(1 − SSIM) on images in [-1, 1]; no
perceptual network (none ships here, and a VGG would dominate CPU training). SSIM keeps edges and
texture that an L1-only autoencoder blurs, which matters because blur shows up as discrepancy
everywhere in the anomaly map. After training, `scaling_factor` = 1 / std of the training latents is
stored in config.json so the DiT sees unit-variance latents (as in latent diffusion). The shipped model's
config.json records its training run and reconstruction quality.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from diffusers import AutoencoderDC


@dataclass
class DcaeConfig:
    """Architecture of the autoencoder; `compression` = 2^(len(channels) - 1)."""

    image_size: int = 128
    latent_channels: int = 8
    channels: tuple[int, ...] = (16, 32, 64, 128)
    layers: tuple[int, ...] = (0, 1, 1, 1)
    attention_head_dim: int = 16
    scaling_factor: float = 1.0

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.layers = tuple(int(n) for n in self.layers)
        if len(self.channels) != len(self.layers) or len(self.channels) < 2:
            raise ValueError("channels and layers need the same length (>= 2)")
        if self.image_size % self.compression:
            raise ValueError(f"image_size {self.image_size} is not a multiple of compression {self.compression}")

    @property
    def compression(self) -> int:
        return 2 ** (len(self.channels) - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.compression

    def to_dict(self) -> dict:
        return asdict(self)


def build_dcae(cfg: DcaeConfig) -> AutoencoderDC:
    """ResBlocks in the high-resolution stages, one EfficientViT (linear attention) stage at the bottom."""
    n = len(cfg.channels)
    blocks = ("ResBlock",) * (n - 1) + ("EfficientViTBlock",)
    scales = ((),) * (n - 1) + ((5,),)
    return AutoencoderDC(
        in_channels=3, latent_channels=cfg.latent_channels, attention_head_dim=cfg.attention_head_dim,
        encoder_block_types=blocks, decoder_block_types=blocks,
        encoder_block_out_channels=cfg.channels, decoder_block_out_channels=cfg.channels,
        encoder_layers_per_block=cfg.layers, decoder_layers_per_block=cfg.layers,
        encoder_qkv_multiscales=scales, decoder_qkv_multiscales=scales,
        upsample_block_type="pixel_shuffle", downsample_block_type="pixel_unshuffle",
        decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=cfg.scaling_factor)


def encode(model: AutoencoderDC, images: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """Images in [-1, 1] (N, 3, H, W) -> scaled latents (unit variance on the training data)."""
    return model.encode(images).latent * scaling_factor


# Encoder blocks whose outputs the analysis' feature term reads (core/analysis/discrepancy.dcae_features)
FEATURE_STAGES = 3


def encode_with_features(model: AutoencoderDC, images: torch.Tensor,
                         stages: int = FEATURE_STAGES) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Unscaled latents and the outputs of the encoder's first `stages` down blocks, from one pass.

    Why: the analysis compares a frame and its synthesis through these block outputs; the synthesizer has
    computed the frame's on the way to its latent, so it hands them over instead of the analysis running
    the blocks again (about half its feature term)."""
    maps: list[torch.Tensor] = []
    hooks = [block.register_forward_hook(lambda _m, _i, out: maps.append(out))
             for block in list(model.encoder.down_blocks)[:stages]]
    try:
        latent = model.encode(images).latent
    finally:
        for hook in hooks:
            hook.remove()
    return latent, maps


def decode(model: AutoencoderDC, latents: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """Scaled latents -> images in [-1, 1] (clamped)."""
    return model.decode(latents / scaling_factor).sample.clamp(-1.0, 1.0)


def _gaussian_window(size: int = 7, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Mean SSIM of two (N, C, H, W) batches (7x7 Gaussian window, per channel)."""
    c = a.shape[1]
    w = _gaussian_window().to(a).expand(c, 1, -1, -1)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean()


def dcae_loss(model: AutoencoderDC, images: torch.Tensor, l2_weight: float = 1.0,
              ssim_weight: float = 0.2) -> tuple[torch.Tensor, dict[str, float]]:
    """Reconstruction loss of one batch in [-1, 1]; returns (loss, parts for the progress line)."""
    recon = model.decode(model.encode(images).latent).sample
    l1 = (recon - images).abs().mean()
    l2 = F.mse_loss(recon, images)
    s = ssim(recon.clamp(-1, 1), images)
    loss = l1 + l2_weight * l2 + ssim_weight * (1.0 - s)
    return loss, {"l1": float(l1.detach()), "l2": float(l2.detach()), "ssim": float(s.detach())}
