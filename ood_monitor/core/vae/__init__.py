"""VAE detectors (β-VAE and flow VAE of arXiv 2409.00880, hierarchical VAE of arXiv 2506.10089;
docs/methods.md) and their files.

`ARCHITECTURES` maps the name stored in a model's config.json to its (model class, config class), so
loading a model never needs anything but that JSON and the safetensors weights.
"""
from __future__ import annotations

from torch import nn

from .beta_vae import BetaVAE, Encoder, VaeConfig
from .hvae import HierarchicalVAE, HvaeConfig, HvaeEncoder

ARCHITECTURES: dict[str, tuple[type[nn.Module], type[VaeConfig]]] = {
    BetaVAE.architecture: (BetaVAE, VaeConfig),
    HierarchicalVAE.architecture: (HierarchicalVAE, HvaeConfig),
}
ENCODERS: dict[str, type[nn.Module]] = {BetaVAE.architecture: Encoder, HierarchicalVAE.architecture: HvaeEncoder}


def build_model(architecture: str, cfg: VaeConfig) -> nn.Module:
    """A fresh full model (encoder + decoder) for training."""
    return ARCHITECTURES[architecture][0](cfg)


def build_encoder(architecture: str, cfg: VaeConfig) -> nn.Module:
    """A fresh encoder-only module: what the detector deploys."""
    return ENCODERS[architecture](cfg)


__all__ = ["ARCHITECTURES", "BetaVAE", "Encoder", "HierarchicalVAE", "HvaeConfig", "HvaeEncoder",
           "VaeConfig", "build_encoder", "build_model"]
