"""Nonconformity scores of the VAE detectors (seed 000): higher = stranger.

The run-time score is the KL divergence between the encoder's posterior N(mu, sigma^2) and the prior
N(0, I), summed over the k latent dimensions with the highest mean KL on training data (the dimensions
the model actually uses; collapsed ones only add noise). It needs the encoder alone. Reconstruction
error is kept for offline comparison; it needs the decoder.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn


def latent_kl(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """Per-dimension KL(N(mu, e^logvar) || N(0, 1)): (N, D) -> (N, D), float64."""
    mu = np.asarray(mu, dtype=np.float64)
    logvar = np.asarray(logvar, dtype=np.float64)
    return 0.5 * (mu * mu + np.exp(logvar) - logvar - 1.0)


def select_dims(mean_kl: np.ndarray, k: int) -> list[int]:
    """Indices of the k dims with the highest mean training KL, most informative first."""
    mean_kl = np.asarray(mean_kl, dtype=np.float64)
    if not 1 <= k <= mean_kl.size:
        raise ValueError(f"select k in [1, {mean_kl.size}], got {k}")
    return [int(i) for i in np.argsort(-mean_kl, kind="stable")[:k]]


def kl_score(mu: np.ndarray, logvar: np.ndarray, dims: list[int] | np.ndarray) -> np.ndarray:
    """KL summed over the selected dims: (N, D) x2 -> (N,)."""
    return latent_kl(mu, logvar)[:, np.asarray(dims, dtype=np.int64)].sum(axis=1)


@torch.no_grad()
def encode(encoder: nn.Module, batches: Callable[[slice], np.ndarray], n: int, batch: int = 256
           ) -> tuple[np.ndarray, np.ndarray]:
    """Posterior (mu, logvar) of n inputs fetched as `batches(slice)` -> (N, C, H, W) float32."""
    encoder.eval()
    mus, logvars = [], []
    for start in range(0, n, batch):
        mu, logvar = encoder(torch.from_numpy(batches(slice(start, min(n, start + batch)))))
        mus.append(mu.numpy())
        logvars.append(logvar.numpy())
    return np.concatenate(mus), np.concatenate(logvars)


@torch.no_grad()
def reconstruction_error(model: nn.Module, batches: Callable[[slice], np.ndarray], n: int,
                         batch: int = 256) -> np.ndarray:
    """Mean squared error between input and the reconstruction from the posterior mean: (N,)."""
    model.eval()
    errs = []
    for start in range(0, n, batch):
        x = torch.from_numpy(batches(slice(start, min(n, start + batch))))
        errs.append((model.reconstruct(x) - x).pow(2).flatten(1).mean(1).double().numpy())
    return np.concatenate(errs)
