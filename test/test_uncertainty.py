"""Cached MC dropout (core/uncertainty): same samples as full passes, far cheaper, any trunk backend."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from ood_monitor.core.uncertainty import McDropoutScorer, McEstimate, full_pass_scores, stochastic_tail
from ood_monitor.core.vae import BetaVAE, VaeConfig

torch.set_num_threads(2)
DIMS = [0, 3, 5, 7]


def encoder(dropout: float = 0.2, size: int = 64) -> nn.Module:
    torch.manual_seed(0)
    return BetaVAE(VaeConfig(height=size, width=size, latent=10, widths=(16, 32, 64, 128),
                             dropout=dropout)).encoder.eval()


def cached_scorer(enc: nn.Module, samples: int = 30) -> McDropoutScorer:
    def trunk(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return enc.trunk(x)

    return McDropoutScorer(trunk, stochastic_tail(enc.tail), DIMS, samples=samples)


def test_cached_tail_equals_full_passes_with_same_masks() -> None:
    enc = encoder()
    x = torch.rand(1, 3, 64, 64)
    torch.manual_seed(7)
    cached = cached_scorer(enc).sample_scores(x)
    torch.manual_seed(7)
    full = full_pass_scores(enc, x, DIMS, 30)
    np.testing.assert_allclose(cached, full, rtol=1e-5, atol=1e-6)
    assert cached.std() > 0 and len(np.unique(cached)) == 30
    assert not enc.training and not any(m.training for m in enc.modules())  # modes restored


def test_cached_distribution_matches_sequential_full_passes() -> None:
    enc = encoder()
    x = torch.rand(1, 3, 64, 64)
    torch.manual_seed(1)
    cached = cached_scorer(enc, samples=400).sample_scores(x)
    torch.manual_seed(2)
    sequential = np.concatenate([full_pass_scores(enc, x, DIMS, 1) for _ in range(400)])
    assert cached.mean() == pytest.approx(sequential.mean(), rel=0.05)
    assert cached.std() == pytest.approx(sequential.std(), rel=0.2)


def test_no_dropout_means_no_spread_and_interval_rule() -> None:
    est = cached_scorer(encoder(dropout=0.0)).estimate(torch.rand(1, 3, 64, 64))
    assert est.std == pytest.approx(0.0, abs=1e-9) and est.low == pytest.approx(est.high)
    e = McEstimate(mean=5.0, std=1.0, low=3.04, high=6.96, samples=np.zeros(2))
    assert e.straddles(6.0) and e.straddles(3.5) and not e.straddles(7.5) and not e.straddles(2.0)


def test_numpy_and_quantized_trunks() -> None:
    enc = encoder()
    x = torch.rand(1, 3, 64, 64)

    def numpy_trunk(arr: np.ndarray) -> np.ndarray:  # stands in for an ONNX Runtime / TensorRT session
        with torch.no_grad():
            return enc.trunk(torch.from_numpy(np.asarray(arr))).numpy()

    torch.manual_seed(3)
    ref = cached_scorer(enc).sample_scores(x)
    torch.manual_seed(3)
    via_numpy = McDropoutScorer(numpy_trunk, stochastic_tail(enc.tail), DIMS, 30).sample_scores(x.numpy())
    np.testing.assert_allclose(via_numpy, ref, rtol=1e-5, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qtrunk = torch.ao.quantization.quantize_dynamic(enc.trunk, {nn.Linear}, dtype=torch.qint8)

        def quant_trunk(t: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return qtrunk(t)

        est = McDropoutScorer(quant_trunk, stochastic_tail(enc.tail), DIMS, 30).estimate(x)
    assert np.isfinite(est.mean) and est.std > 0
    assert est.mean == pytest.approx(ref.mean(), rel=0.25)


def test_trunk_runs_once_and_the_tail_once_as_a_batch_of_30() -> None:
    """Why 30 samples cost about one pass (timed side by side by `ood-monitor bench vae`, rows
    deterministic and mc30): the deterministic trunk is computed once per frame and reused, and the
    stochastic tail runs once on a batch of 30 copies of its features."""
    enc = BetaVAE(VaeConfig(dropout=0.1)).encoder.eval()  # the deployed default: 128x128, 30 latents
    trunk_batches: list[int] = []
    tail_batches: list[int] = []
    enc.trunk.register_forward_hook(lambda _m, args, _out: trunk_batches.append(args[0].shape[0]))
    enc.tail.register_forward_hook(lambda _m, args, _out: tail_batches.append(args[0].shape[0]))

    def trunk(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return enc.trunk(x)

    est = McDropoutScorer(trunk, stochastic_tail(enc.tail), DIMS, samples=30).estimate(torch.rand(1, 3, 128, 128))
    assert trunk_batches == [1] and tail_batches == [30]
    assert len(est.samples) == 30 and est.std > 0
