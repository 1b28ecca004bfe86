"""Inference backends: ONNX export with a dynamic batch, ONNX Runtime vs torch, MC dropout through ONNX
Runtime's trunk/tail, TensorRT's unavailable path and engine-cache key (with fakes)."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from ood_monitor.core.runtime import BackendTail, BackendTrunk, BackendUnavailable, make_backend
from ood_monitor.core.runtime.onnx_export import MaskedTail, export_encoder
from ood_monitor.core.runtime.onnxruntime_backend import providers_for
from ood_monitor.core.runtime.tensorrt_backend import cached_engine, engine_key
from ood_monitor.core.uncertainty import McDropoutScorer, stochastic_tail
from ood_monitor.core.vae.beta_vae import Encoder, VaeConfig

SHAPE = (3, 32, 32)
HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    torch.manual_seed(0)
    enc = Encoder(VaeConfig(height=32, width=32, widths=(8, 16, 16), hidden=32, latent=6, dropout=0.2)).eval()
    with torch.no_grad():
        enc.tail.net[-1].weight.mul_(4.0)  # posteriors away from the prior: scores that vary
    return enc


@pytest.fixture(scope="module")
def export(encoder):
    return export_encoder(encoder, SHAPE)


def test_export_matches_torch_at_batch_1_and_30(export, encoder):
    assert set(export.max_abs_diff) == {"encoder", "trunk", "tail"}
    assert max(export.max_abs_diff.values()) < 1e-4
    backend = make_backend("onnxruntime", export.encoder, threads=1)
    for n in (1, 30):
        x = np.random.default_rng(n).random((n, *SHAPE), dtype=np.float32)
        mu, logvar = backend.run(x)
        assert mu.shape == logvar.shape == (n, 6)


def test_onnxruntime_backend_matches_torch_backend(export, encoder):
    x = np.random.default_rng(1).random((5, *SHAPE), dtype=np.float32)
    got = make_backend("onnxruntime", export.encoder, threads=1).run(x)
    ref = make_backend("torch", encoder).run(x)
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_allclose(g, r, atol=1e-4)


def test_mc_dropout_through_onnxruntime_trunk_and_tail(export, encoder):
    trunk = BackendTrunk(make_backend("onnxruntime", export.trunk, threads=1))
    tail = BackendTail(make_backend("onnxruntime", export.tail, threads=1), export.dropout, seed=0)
    x = np.random.default_rng(2).random((1, *SHAPE), dtype=np.float32)
    feats = trunk(x)
    with torch.no_grad():
        np.testing.assert_allclose(feats, encoder.trunk(torch.from_numpy(x)).numpy(), atol=1e-4)
        ref_mu = encoder.tail(torch.from_numpy(feats))[0].numpy()
    np.testing.assert_allclose(tail(feats)[0], ref_mu, atol=1e-4)  # all-ones masks = eval mode
    est = McDropoutScorer(trunk, tail.sample, [0, 1, 2], samples=30).estimate(x)
    assert est.std > 0 and np.unique(est.samples).size == 30
    # same distribution as torch's dropout: compare the mean posterior over many samples
    many = np.repeat(feats, 4000, axis=0)
    ort_mu = tail.sample(many)[0].mean(0)
    torch.manual_seed(0)
    torch_mu = stochastic_tail(encoder.tail)(torch.from_numpy(many))[0].numpy().mean(0)
    np.testing.assert_allclose(ort_mu, torch_mu, atol=0.05 * (np.abs(torch_mu).max() + 1))


def test_masked_tail_checks_mask_count(encoder):
    with pytest.raises(ValueError, match="2 dropout layers"):
        MaskedTail(encoder.tail)(torch.zeros(1, 32), torch.ones(1, 32))


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text
    return text


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed")
def test_tensorrt_unavailable_names_the_parameter(export):
    with pytest.raises(BackendUnavailable) as info:
        make_backend("tensorrt", export.encoder, device="cuda", precision="fp16")
    assert "set parameter backend to onnxruntime or torch" in one_line(info.value)


def test_tensorrt_on_cpu_and_unknown_choices_name_the_parameter(export):
    with pytest.raises(BackendUnavailable, match="set parameter device to cuda"):
        make_backend("tensorrt", export.encoder, device="cpu")
    with pytest.raises(BackendUnavailable, match="set parameter backend to one of"):
        make_backend("openvino", export.encoder)
    with pytest.raises(BackendUnavailable, match="set parameter precision"):
        make_backend("torch", torch.nn.Identity(), precision="int4")


@pytest.mark.skipif(HAS_CUDA, reason="CUDA present")
def test_cuda_requests_without_cuda_name_the_parameter(export, encoder):
    with pytest.raises(BackendUnavailable, match="set parameter device to cpu"):
        make_backend("torch", encoder, device="cuda")
    with pytest.raises(BackendUnavailable, match="set parameter device to cuda or precision to fp32"):
        make_backend("torch", encoder, precision="fp16")
    with pytest.raises(BackendUnavailable, match="set parameter backend to torch or device to cpu"):
        providers_for("cuda", ["CPUExecutionProvider"])


def test_engine_cache_key_and_rebuild_on_mismatch(tmp_path):
    base = engine_key(b"onnx-a", "10.3.0", "Orin sm_87", "fp16", 64)
    assert engine_key(b"onnx-a", "10.3.0", "Orin sm_87", "fp16", 64) == base
    for other in (engine_key(b"onnx-b", "10.3.0", "Orin sm_87", "fp16", 64),
                  engine_key(b"onnx-a", "8.6.2", "Orin sm_87", "fp16", 64),
                  engine_key(b"onnx-a", "10.3.0", "RTX 4090 sm_89", "fp16", 64),
                  engine_key(b"onnx-a", "10.3.0", "Orin sm_87", "int8", 64)):
        assert other.digest() != base.digest()
    builds = []

    def build(tag: str):
        return lambda: builds.append(tag) or tag.encode()

    assert cached_engine(tmp_path, base, build("first")) == (b"first", True)
    assert cached_engine(tmp_path, base, build("again")) == (b"first", False)  # cache hit
    moved = engine_key(b"onnx-a", "10.4.0", "Orin sm_87", "fp16", 64)  # TensorRT upgraded
    assert moved.file_stem() == base.file_stem()
    assert cached_engine(tmp_path, moved, build("rebuilt")) == (b"rebuilt", True)
    assert cached_engine(tmp_path, moved, build("forced"), force=True) == (b"forced", True)
    assert builds == ["first", "rebuilt", "forced"]
    assert len(list(tmp_path.glob("*.engine"))) == 1


@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_torch_fp16_on_cuda_matches_fp32(encoder):
    x = np.random.default_rng(3).random((4, *SHAPE), dtype=np.float32)
    ref = make_backend("torch", encoder).run(x)
    got = make_backend("torch", encoder, device="cuda", precision="fp16").run(x)
    np.testing.assert_allclose(got[0], ref[0], atol=2e-2)
