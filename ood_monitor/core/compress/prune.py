"""Structured channel pruning of a VAE encoder with torch-pruning, over a ratio sweep.

Whole conv output channels are removed (by L2 weight magnitude, globally ranked so layers that matter
less lose more), which shrinks real compute on every backend, unlike unstructured zeros. The trunk's
dense layer keeps its output width and the tail is untouched, so the result is again a plain `Encoder`
whose `VaeConfig.widths` records the surviving channels: it saves and loads like any shipped model.
`ratio` is torch-pruning's channel ratio: conv parameters shrink by about 1 - (1 - ratio)^2.
Fine-tuning is distillation from the unpruned parent (distill.py), short and bounded.
"""
from __future__ import annotations

import copy
from dataclasses import replace

import torch
from torch import nn

from ood_monitor.core.vae.beta_vae import Encoder

from .distill import conv_layers

MAX_LAYER_RATIO = 0.9  # never remove more than this share of one layer's channels


def import_torch_pruning():
    try:
        import torch_pruning
    except ImportError as exc:
        raise RuntimeError("pruning needs the torch-pruning package: pip install -c constraints.txt "
                           "torch-pruning, or leave prune and kd out of --methods") from exc
    return torch_pruning


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def conv_param_count(encoder: nn.Module) -> int:
    return sum(p.numel() for c in conv_layers(encoder) for p in c.parameters())


def prune_channels(encoder: Encoder, ratio: float, global_ranking: bool = True, round_to: int | None = None
                   ) -> Encoder:
    """A copy of `encoder` (β-VAE or hierarchical) with `ratio` of its conv channels removed, rebuilt
    as a clean encoder of the same class. `round_to` keeps every layer's channel count a multiple of it
    (ONNX Runtime's blocked convolutions run 8-channel blocks: 9 or 45 channels cost 16 or 48)."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"pruning ratio must be in (0, 1), got {ratio}")
    tp = import_torch_pruning()
    model = copy.deepcopy(encoder).eval()
    cfg = encoder.cfg
    example = torch.zeros(1, cfg.channels, cfg.height, cfg.width)
    dense = [m for m in model.trunk if isinstance(m, nn.Linear)]
    pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=ratio, global_pruning=global_ranking,
                                  max_pruning_ratio=MAX_LAYER_RATIO, ignored_layers=[model.tail, *dense],
                                  round_to=round_to)
    pruner.step()
    widths = tuple(c.out_channels for c in conv_layers(model))
    clean = type(encoder)(replace(cfg, widths=widths))
    clean.load_state_dict(model.state_dict())
    return clean.eval()
