"""MC-dropout uncertainty of the nonconformity score (arXiv 2403.01076,
docs/methods.md#mc-dropout-ignore-rule) with the static computation cached.

The paper runs N full stochastic passes (about 35x one pass). Dropout sits only in the encoder's last
layers (the `tail`), so everything before it (the `trunk`: all convolutions) is deterministic and the
same in every pass. We run the trunk once, repeat its activation N times as one batch and run only the
tail on that batch: one trunk pass plus one small batched dense pass instead of N full passes. The
distribution is exactly that of N full passes, because the trunk consumes no randomness.

The API is two callables, trunk(x) -> features and tail(features) -> (mu, logvar), so the trunk can be
a quantized module or another backend (ONNX Runtime, TensorRT) while the tail keeps its dropout.

The paper's ignore rule: a frame whose confidence interval mean +- z * std straddles the decision
threshold is `uncertain` and can be ignored instead of acted on.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ood_monitor.core.nonconformity import ScoreFn, as_score

DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
Trunk = Callable[[Any], Any]
Tail = Callable[[Any], tuple[Any, Any]]


def apply_score(score: ScoreFn, mu: np.ndarray, logvar: np.ndarray, texture: np.ndarray | None) -> np.ndarray:
    """score(mu, logvar), with the frame's texture cells for scores that take them (kl_texture)."""
    return score(mu, logvar) if texture is None else score(mu, logvar, texture)


@dataclass(frozen=True)
class McEstimate:
    """Score samples' mean, std and interval [low, high] = mean -+ z * std."""

    mean: float
    std: float
    low: float
    high: float
    samples: np.ndarray

    def straddles(self, threshold: float) -> bool:
        """The ignore rule of arXiv 2403.01076: the interval contains the decision threshold, so the call is
        uncertain."""
        return bool(self.low <= threshold <= self.high)


@contextmanager
def dropout_active(module: nn.Module) -> Iterator[nn.Module]:
    """Switch only the dropout layers of `module` to sampling mode; restore their modes afterwards."""
    drops = [m for m in module.modules() if isinstance(m, DROPOUT_TYPES)]
    modes = [m.training for m in drops]
    try:
        for m in drops:
            m.train(True)
        yield module
    finally:
        for m, mode in zip(drops, modes, strict=True):
            m.train(mode)


def stochastic_tail(tail: nn.Module) -> Tail:
    """A torch tail as a callable that samples dropout masks on every call (no autograd)."""

    def run(features: Any) -> tuple[Any, Any]:
        with torch.no_grad(), dropout_active(tail):
            return tail(torch.as_tensor(features))

    return run


def repeat_rows(features: Any, n: int) -> Any:
    """(1, F) -> (n, F) for torch tensors (a view) or numpy arrays (a copy for foreign backends)."""
    if isinstance(features, torch.Tensor):
        return features.expand(n, *features.shape[1:])
    return np.repeat(np.asarray(features), n, axis=0)


def to_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


class McDropoutScorer:
    """N MC-dropout samples of the score for one frame, trunk computed once. `score` maps (mu, logvar)
    to scores (a `Nonconformity`); a list of dims means the KL over them."""

    def __init__(self, trunk: Trunk, tail: Tail, score: ScoreFn | Sequence[int], samples: int = 30,
                 z: float = 1.96) -> None:
        if samples < 2:
            raise ValueError(f"MC dropout needs at least 2 samples, got {samples}")
        if z <= 0:
            raise ValueError(f"z must be positive, got {z}")
        self.trunk, self.tail, self.score = trunk, tail, as_score(score)
        self.samples, self.z = samples, z

    def sample_scores(self, x: Any, features: Any = None, texture: np.ndarray | None = None) -> np.ndarray:
        """Scores of `samples` stochastic tails on one input x (1, C, H, W); pass `features` when
        the trunk output is already at hand (the detector shares it with the deterministic pass) and
        the frame's `texture` cells when the score has a texture term (kl_texture)."""
        feats = self.trunk(x) if features is None else features
        mu, logvar = self.tail(repeat_rows(feats, self.samples))
        return apply_score(self.score, to_numpy(mu), to_numpy(logvar), texture)

    def estimate(self, x: Any, features: Any = None, texture: np.ndarray | None = None) -> McEstimate:
        s = self.sample_scores(x, features, texture)
        mean, std = float(s.mean()), float(s.std(ddof=1))
        return McEstimate(mean, std, mean - self.z * std, mean + self.z * std, s)


def full_pass_scores(encoder: nn.Module, x: torch.Tensor, score: ScoreFn | Sequence[int], samples: int,
                     texture: np.ndarray | None = None) -> np.ndarray:
    """The uncached reference: `samples` complete encoder passes with dropout on, as one batch."""
    with torch.no_grad(), dropout_active(encoder):
        mu, logvar = encoder(x.expand(samples, *x.shape[1:]))
    return apply_score(as_score(score), mu.cpu().numpy(), logvar.cpu().numpy(), texture)
