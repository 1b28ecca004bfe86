"""Backend callables as the encoder module the detector drives: `trunk` and `tail` submodules whose
forward calls the backend. The tail samples fresh dropout masks exactly when MC dropout switches the
encoder's dropout layers on (core/uncertainty.dropout_active), so cached MC dropout runs unchanged on
ONNX Runtime and TensorRT."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ood_monitor.core.runtime import BackendTail, BackendTrunk


def _numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


class _Trunk(nn.Module):
    def __init__(self, trunk: BackendTrunk) -> None:
        super().__init__()
        self.backend = trunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.backend(_numpy(x))))


class _Tail(nn.Module):
    def __init__(self, tail: BackendTail) -> None:
        super().__init__()
        self.backend = tail
        self.sampling = nn.Dropout()  # its training flag is the MC-dropout switch; it never touches data

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        run = self.backend.sample if self.sampling.training else self.backend
        mu, logvar = run(_numpy(features))
        return torch.from_numpy(np.ascontiguousarray(mu)), torch.from_numpy(np.ascontiguousarray(logvar))


class BackendEncoder(nn.Module):
    """x -> (mu, logvar) through backend trunk and tail; `.trunk` / `.tail` as the torch Encoder has."""

    def __init__(self, trunk: BackendTrunk, tail: BackendTail) -> None:
        super().__init__()
        self.trunk, self.tail = _Trunk(trunk), _Tail(tail)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tail(self.trunk(x))
