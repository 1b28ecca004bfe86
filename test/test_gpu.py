"""What the GPU paths must give: the CPU's answers. Skipped where torch finds no CUDA GPU (this project's
CI); run on a GPU machine with `python -m pytest test/test_gpu.py` (docs/benchmarks-masks.md#on-a-gpu-h200-2026-12-04
names the machine they last passed on)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch finds none here)")


def frames(n: int = 6, size: int = 128) -> list[np.ndarray]:
    """Smooth random RGB frames (uint8), different enough to spread the scores."""
    rng = np.random.default_rng(0)
    return [cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), (0, 0), 1.0 + i)
            for i in range(n)]


def flows(n: int = 6, size: int = 128) -> list[np.ndarray]:
    """u, v and the warp residual (grey levels, >= 0): ood/flow as preprocess_node sends it, which the shipped
    flow model's motion term needs."""
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        uv = cv2.GaussianBlur(rng.normal(0, 1.5 * (i + 1), (size, size, 2)).astype(np.float32), (0, 0), 4.0)
        residual = np.abs(rng.normal(0, 2.0 * (i + 1), (size, size, 1))).astype(np.float32)
        out.append(np.concatenate([uv, residual], axis=-1))
    return out


@pytest.mark.parametrize(("model", "inputs"), [("models/vae_image", frames), ("models/vae_flow", flows)])
def test_detector_scores_and_alarms_match_the_cpu(model, inputs):
    from ood_monitor.core.detector import VaeDetector

    cpu, gpu = (VaeDetector.from_model_dir(model, device=d) for d in ("cpu", "cuda"))
    assert next(gpu.encoder.parameters()).is_cuda
    for x in inputs():
        a, b = cpu.score_frame(x), gpu.score_frame(x)
        assert b.score == pytest.approx(a.score, rel=1e-3, abs=1e-3)
        assert b.p_value == pytest.approx(a.p_value, rel=1e-3)  # past the calibration: the tail's, continuous
        assert b.is_ood == a.is_ood


def test_synthesis_on_cuda_matches_the_cpu_within_a_grey_level():
    from ood_monitor.core.diffusion.synthesizer import synthesizer_from_params

    cpu = synthesizer_from_params("models/latent_dit", {"backend": "torch"})
    gpu = synthesizer_from_params("models/latent_dit", {"device": "cuda"})  # auto: torch without onnxruntime-gpu
    half = synthesizer_from_params("models/latent_dit", {"device": "cuda", "precision": "fp16"})
    assert gpu.backend.startswith(("torch-cuda", "ort-cuda")) and half.backend == "torch-cuda-fp16-selected"
    for x in frames(3):
        ref = cpu.synthesize(x).astype(np.float32)
        assert np.abs(gpu.synthesize(x) - ref).mean() < 1.0
        assert np.abs(half.synthesize(x) - ref).mean() < 3.0
        t = gpu.last_timing
        assert t.encode_ms > 0 and t.dit_ms > 0 and t.decode_ms > 0  # synchronised: every stage has its time
        assert [m.shape for m in gpu.last_features] == [m.shape for m in cpu.last_features]


def test_analysis_features_on_cuda_give_the_cpu_mask():
    from ood_monitor.core.analysis import Analyzer
    from ood_monitor.core.analysis.discrepancy import make_feature_extractor
    from ood_monitor.core.analysis.segmenters import SlicSegmenter

    image, synthesis = frames(2)
    seg = SlicSegmenter()
    cpu = Analyzer(segmenter=seg, extractor=make_feature_extractor("dcae", "models", "cpu")[0])
    gpu = Analyzer(segmenter=seg, extractor=make_feature_extractor("dcae", "models", "cuda")[0])
    a, b = cpu.analyze(image, synthesis), gpu.analyze(image, synthesis)
    np.testing.assert_allclose(b.confidence, a.confidence, atol=1e-3)


def test_vae_training_on_cuda_learns_and_leaves_the_model_on_the_cpu():
    """`train vae --device cuda`: the loss falls, and the trained model is back on the CPU, where the card's
    statistics, calibration and model file are made."""
    from ood_monitor.core.vae import BetaVAE, VaeConfig
    from ood_monitor.core.vae.dataset import FrameSet
    from ood_monitor.core.vae.train import TrainConfig, evaluate_loss, train_vae

    n = 48
    data = FrameSet("image", np.stack(frames(n, 32)), np.zeros(n, bool), np.array(["in_distribution"] * n, object),
                    np.array(["none"] * n, object), np.zeros(n, np.int64), np.arange(n), "h")
    torch.manual_seed(0)
    model = BetaVAE(VaeConfig(height=32, width=32, latent=6, widths=(8, 16), hidden=32))
    rows = np.arange(n)
    before = evaluate_loss(model, data, rows, 1.0, 64)["loss"]
    result = train_vae(model, data, 1.0, TrainConfig(epochs=8, batch=16, lr=2e-3, val_split=0.2, patience=8,
                                                     device="cuda"), log=lambda _: None)
    assert not any(p.is_cuda for p in model.parameters())
    assert evaluate_loss(model, data, rows, 1.0, 64)["loss"] < 0.8 * before and result.steps > 0


def test_diffusion_training_on_cuda_learns_and_writes_host_models(tmp_path):
    """`train dcae|dit --device cuda`: the loss falls, the model files load on the CPU, and a CUDA
    checkpoint resumes (here on the CPU) to the step it was asked for."""
    from ood_monitor.core.diffusion import train as tr
    from ood_monitor.core.diffusion.dcae import DcaeConfig
    from ood_monitor.core.diffusion.dit import DitConfig
    from ood_monitor.core.diffusion.schedules import ScheduleConfig
    from ood_monitor.core.diffusion.synthesizer import load_model

    images = np.stack(frames(12, 32))
    arch = DcaeConfig(image_size=32, latent_channels=4, channels=(8, 16, 32), layers=(0, 1, 1), attention_head_dim=8)
    cfg = tr.TrainConfig(steps=40, batch=8, lr=2e-3, warmup=5, log_every=5, checkpoint_every=10, device="cuda")
    quiet = lambda msg: None  # noqa: E731
    ae = tr.train_dcae(images, arch, cfg, tmp_path / "dcae", log=quiet)
    dit = tr.train_dit(images, ae, DitConfig(patch=2, width=32, depth=1, heads=2), ScheduleConfig(), cfg,
                       tmp_path / "dit", log=quiet)
    for model_dir in (ae, dit):
        model, card = load_model(model_dir)
        history = card["training"]["history"]
        assert history[-1]["loss"] < history[0]["loss"] and card["training"]["settings"]["device"] == "cuda"
        assert not any(p.is_cuda for p in model.parameters())
    more = tr.TrainConfig(**{**cfg.to_dict(), "steps": 50, "device": "cpu"})
    resumed = tr.train_dcae(images, arch, more, tmp_path / "dcae", resume=True, log=quiet)
    assert load_model(resumed)[1]["training"]["steps"] == 50
