"""Diffusion synthesizer core: schedules, guided DDIM, quantization, model files, training, Synthesizer."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from ood_monitor.core.diffusion import train as tr
from ood_monitor.core.diffusion.dcae import DcaeConfig, build_dcae
from ood_monitor.core.diffusion.dit import Dit, DitConfig
from ood_monitor.core.diffusion.guided_ddim import GuidanceConfig, guided_sample
from ood_monitor.core.diffusion.schedules import ScheduleConfig, make_scheduler, plan_timesteps
from ood_monitor.core.diffusion.synthesizer import ModelFileError, Synthesizer, load_model, save_model
from ood_monitor.core.diffusion.unet import UNet, UNetConfig
from ood_monitor.core.diffusion.weight_quantization import (
    QuantizedWeight,
    layer_names,
    model_size_mb,
    quantize,
)

TINY_DIT = DitConfig(latent_channels=4, latent_size=8, patch=2, width=32, depth=1, heads=2)
TINY_UNET = UNetConfig(image_size=32, channels=(8, 16), groups=4, attention_heads=2)
TINY_DCAE = DcaeConfig(image_size=32, latent_channels=4, channels=(8, 16, 32), layers=(0, 1, 1), attention_head_dim=8)


class GaussianEps(nn.Module):
    """The exact ε-predictor for data ~ N(mean, std²): E[ε | x_t] in closed form, differentiable."""

    def __init__(self, scheduler, mean: float = 0.0, std: float = 0.5) -> None:
        super().__init__()
        self.a = scheduler.alphas_cumprod.float()
        self.mean, self.var = mean, std**2
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls.append(int(t.reshape(-1)[0]))
        a = self.a[int(t.reshape(-1)[0])]
        return (1 - a).sqrt() * (x - a.sqrt() * self.mean) / (a * self.var + 1 - a)


def sample(kind: str, scale: float, y: torch.Tensor, strength: float = 1.0, steps: int = 20, seed: int = 0):
    sched = make_scheduler(ScheduleConfig(), "ddim")
    model = GaussianEps(sched)
    cfg = GuidanceConfig(steps=steps, scale=scale, strength=strength, kind=kind)
    return guided_sample(model, y, sched, cfg, torch.Generator().manual_seed(seed)), model


def outlier(value: float = 0.8) -> torch.Tensor:
    return torch.full((1, 3, 16, 16), value)


# ------------------------------------------------------------------------------------------ schedules


def test_ddim_visits_evenly_spaced_trailing_timesteps():
    ddim = make_scheduler(ScheduleConfig(), "ddim")
    assert plan_timesteps(ddim, 10, 1.0).tolist() == list(range(999, 0, -100))
    half = plan_timesteps(ddim, 10, 0.5)
    assert len(half) == 10 and half.max() < 500 and set(np.diff(half.numpy())) == {-50}
    assert half[-1] - 1000 // ddim.num_inference_steps == -1  # the last update lands on ᾱ = 1
    ddpm = make_scheduler(ScheduleConfig(), "ddpm")
    assert plan_timesteps(ddpm, 1000, 1.0).tolist() == list(range(999, -1, -1))


def test_sampler_calls_the_model_at_the_planned_timesteps():
    _, model = sample("none", 0.0, outlier(), strength=0.3, steps=7)
    ddim = make_scheduler(ScheduleConfig(), "ddim")
    assert model.calls == plan_timesteps(ddim, 7, 0.3).tolist()


def test_bad_schedule_arguments_are_refused():
    ddim = make_scheduler(ScheduleConfig(), "ddim")
    with pytest.raises(ValueError, match="strength"):
        plan_timesteps(ddim, 10, 0.0)
    with pytest.raises(ValueError, match="kind"):
        GuidanceConfig(kind="magic")


# ------------------------------------------------------------------------------------------ guidance


@pytest.mark.parametrize("kind", ["gradient", "gradfree"])
def test_huge_guidance_returns_the_input(kind):
    y = outlier()
    out, _ = sample(kind, 1e6, y)
    assert torch.allclose(out, y, atol=1e-3)


def test_zero_guidance_ignores_the_input():
    a, _ = sample("gradient", 0.0, outlier(0.8))
    b, _ = sample("gradient", 0.0, outlier(-0.7))
    assert torch.equal(a, b)
    assert a.std() > 0.2  # a real sample of N(0, 0.5²), not the input


@pytest.mark.parametrize("kind", ["gradient", "gradfree"])
def test_guidance_pulls_toward_the_input(kind):
    y = outlier()
    free, _ = sample("none", 0.0, y)
    guided, _ = sample(kind, 2.0, y)
    stronger, _ = sample(kind, 5.0, y)
    d_free, d_guided, d_stronger = ((x - y).norm() for x in (free, guided, stronger))
    assert d_stronger < d_guided < 0.7 * d_free
    assert (stronger - y).abs().max() > 0.1  # still a synthesis, not a copy


def test_small_strength_returns_about_the_input():
    y = torch.rand(1, 3, 16, 16) * 2 - 1
    out, model = sample("none", 0.0, y, strength=0.01, steps=1)
    assert model.calls == [9]
    err = (out - y).abs()
    assert err.mean() < 0.03 and err.max() < 0.15  # one step from ᾱ ≈ 0.998: the input up to noise


# ------------------------------------------------------------------------------------------ quantization


def test_selected_quantization_leaves_norms_embeddings_and_ends_fp32():
    torch.manual_seed(0)
    dit = Dit(TINY_DIT)
    for block in dit.blocks:  # give the zero-initialised gates a value so outputs are non-trivial
        nn.init.normal_(block.ada[-1].weight, std=0.1)
    nn.init.normal_(dit.final.linear.weight, std=0.1)
    q = quantize(dit, "int8-selected")
    assert isinstance(q.blocks[0].attn.qkv, QuantizedWeight) and q.blocks[0].attn.qkv.qweight.dtype == torch.int8
    for name in ("blocks.0.attn.proj", "blocks.0.mlp.fc1", "blocks.0.mlp.fc2"):
        assert isinstance(q.get_submodule(name), QuantizedWeight)
    for name in ("patch_embed", "t_embed.mlp.0", "blocks.0.ada.1", "final.linear"):
        mod = q.get_submodule(name)
        assert type(mod) in (nn.Linear, nn.Conv2d) and mod.weight.dtype == torch.float32
    assert q.pos.dtype == torch.float32
    z, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    ref, out = dit(z, t), q(z, t)
    assert (out - ref).norm() / ref.norm() < 0.05
    assert not isinstance(dit.blocks[0].attn.qkv, QuantizedWeight)  # the original is untouched
    full = quantize(dit, "int8-all")
    assert isinstance(full.patch_embed, QuantizedWeight) and isinstance(full.final.linear, QuantizedWeight)
    assert model_size_mb(full) < model_size_mb(q) < model_size_mb(dit)


def test_unet_selection_is_the_main_convolutions_and_attention():
    names = layer_names(UNet(TINY_UNET), "selected")
    assert names and all(n.rsplit(".", 1)[-1] in {"conv1", "conv2", "qkv", "proj"} for n in names)
    assert "conv_in" not in names and "conv_out" not in names
    unet = UNet(TINY_UNET)
    q = quantize(unet, "fp16-selected")
    assert q.get_submodule(names[0]).qweight.dtype == torch.float16
    assert q.norm_out.weight.dtype == torch.float32


@pytest.mark.parametrize("layer", [nn.Linear(24, 16), nn.Conv2d(4, 8, 3, stride=2, padding=1)])
def test_quantized_layer_backward_matches_and_keeps_no_full_precision_weight(layer):
    """Gradient guidance backpropagates through quantized layers: the input gradient must be the
    dequantized layer's, and autograd must not hold a dequantized weight copy until backward (that copy
    per layer is the memory weight-only quantization exists to save)."""
    torch.manual_seed(0)
    q = QuantizedWeight(layer, torch.int8)
    x = torch.randn(2, 24) if isinstance(layer, nn.Linear) else torch.randn(2, 4, 9, 9)
    saved: list[int] = []  # numel of every tensor autograd keeps for backward
    x1 = x.clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        q(x1).square().sum().backward()
    assert layer.weight.numel() not in saved
    x2 = x.clone().requires_grad_(True)
    deq = q.weight(torch.float32)
    out = q.apply_weight(x2, deq, q.bias)
    out.square().sum().backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-5)
    assert torch.allclose(q(x), out.detach(), atol=1e-6)


def test_dcae_selection_is_attention_and_block_convolutions():
    ae = build_dcae(TINY_DCAE)
    names = layer_names(ae, "selected")
    leaves = {n.rsplit(".", 1)[-1] for n in names}
    assert leaves and leaves <= {"to_q", "to_k", "to_v", "to_out", "conv_inverted", "conv_point", "conv1", "conv2"}
    assert not any(n.endswith(("conv_in", "conv_out", "conv_depth")) for n in names)
    q = quantize(ae, "int8-selected")
    assert model_size_mb(q) < model_size_mb(ae)


# ------------------------------------------------------------------------------------------ model files


def test_save_load_round_trip_is_exact(tmp_path):
    torch.manual_seed(1)
    dit = Dit(TINY_DIT)
    nn.init.normal_(dit.final.linear.weight)
    save_model(tmp_path / "m", dit, {"type": "latent_dit", "arch": TINY_DIT.to_dict()})
    loaded, card = load_model(tmp_path / "m", "latent_dit")
    for k, v in dit.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    z, t = torch.randn(1, 4, 8, 8), torch.tensor([3])
    assert torch.equal(dit(z, t), loaded(z, t))
    assert len(card["weights_sha256"]) == 64


def test_missing_and_corrupt_model_files_raise_clear_errors(tmp_path):
    with pytest.raises(ModelFileError, match=r"config.json not found: run `ood-monitor train dit"):
        load_model(tmp_path / "nothing", "latent_dit")
    d = save_model(tmp_path / "m", Dit(TINY_DIT), {"type": "latent_dit", "arch": TINY_DIT.to_dict()})
    (d / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelFileError, match=r"model.safetensors does not match the hash"):
        load_model(d)
    card = json.loads((d / "config.json").read_text())
    card.pop("weights_sha256")
    (d / "config.json").write_text(json.dumps(card))
    with pytest.raises(ModelFileError, match=r"model.safetensors cannot be loaded.*ood-monitor train"):
        load_model(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="config.json is not valid JSON"):
        load_model(d)
    (d / "model.safetensors").unlink()
    save_model(d, Dit(TINY_DIT), {"type": "latent_dit", "arch": {**TINY_DIT.to_dict(), "width": 64}})
    (d / "model.safetensors").unlink()
    with pytest.raises(ModelFileError, match="model.safetensors not found"):
        load_model(d)


# ------------------------------------------------------------------------------------------ training


def tiny_images(n: int = 24, size: int = 32) -> np.ndarray:
    """Smooth colour ramps with a little texture: easy, structured 'terrain'."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        c0, c1 = rng.uniform(40, 200, 3), rng.uniform(-60, 60, 3)
        img = c0 + c1 * yy[..., None] + rng.normal(0, 6, (size, size, 3))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)


def first_last(history: list[dict]) -> tuple[float, float]:
    return history[0]["loss"], history[-1]["loss"]


def tcfg(steps: int, **kw) -> tr.TrainConfig:
    return tr.TrainConfig(steps=steps, batch=8, lr=2e-3, warmup=5, log_every=5, checkpoint_every=10, **kw)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A DC-AE, a latent DiT on it and a pixel DDPM, each trained for a few steps on tiny images."""
    root = tmp_path_factory.mktemp("models")
    images = tiny_images()
    torch.set_num_threads(1)
    quiet = lambda msg: None  # noqa: E731
    ae = tr.train_dcae(images, DcaeConfig(**TINY_DCAE.to_dict()), tcfg(40), root / "dcae", log=quiet)
    dit = tr.train_dit(images, ae, DitConfig(**TINY_DIT.to_dict()), ScheduleConfig(), tcfg(40), root / "dit", log=quiet)
    ddpm = tr.train_ddpm(images, TINY_UNET, ScheduleConfig(clip_sample=True), tcfg(30), root / "ddpm", log=quiet)
    return {"dcae": ae, "dit": dit, "ddpm": ddpm, "images": images}


@pytest.mark.parametrize("name", ["dcae", "dit", "ddpm"])
def test_tiny_training_reduces_the_loss(tiny_models, name):
    card = json.loads((tiny_models[name] / "config.json").read_text())
    first, last = first_last(card["training"]["history"])
    assert last < 0.8 * first, (first, last)


def test_training_resumes_exactly(tmp_path):
    images = tiny_images(12)
    quiet = lambda msg: None  # noqa: E731
    whole = tr.train_ddpm(images, TINY_UNET, ScheduleConfig(), tcfg(20), tmp_path / "a", log=quiet)
    tr.train_ddpm(images, TINY_UNET, ScheduleConfig(), tcfg(10), tmp_path / "b", log=quiet)
    resumed = tr.train_ddpm(images, TINY_UNET, ScheduleConfig(), tcfg(20), tmp_path / "b", resume=True, log=quiet)
    a, _ = load_model(whole)
    b, _ = load_model(resumed)
    for k, v in a.state_dict().items():
        assert torch.allclose(v, b.state_dict()[k], atol=1e-6), k


def test_dcae_records_latent_scaling(tiny_models):
    card = json.loads((tiny_models["dcae"] / "config.json").read_text())
    assert card["arch"]["scaling_factor"] > 0 and card["metrics"]["psnr_db"] > 10
    ae, _ = load_model(tiny_models["dcae"], "dcae")
    assert isinstance(ae, type(build_dcae(TINY_DCAE)))


def test_training_device_is_checked_before_any_work(tmp_path, capsys):
    from ood_monitor.cli.main import main

    for bad in ("gpu", "cuda:x", "mps"):
        with pytest.raises(ValueError, match="--device must be cpu, cuda or cuda:N"):
            tr.training_device(bad)
    assert tr.training_device("cpu") == torch.device("cpu") == tr.training_device("cpu", "ray")
    with pytest.raises(ValueError, match="--engine ray trains on CPU workers"):
        tr.training_device("cuda", "ray")
    if torch.cuda.is_available():
        return  # the refusal below is for machines without a GPU (test_gpu.py trains on one)
    with pytest.raises(ValueError, match="finds no CUDA GPU here: train with --device cpu"):
        tr.training_device("cuda")
    code = main(["train", "dcae", "--data", str(tmp_path / "absent"), "--out", str(tmp_path / "m"), "--device", "cuda"])
    assert code == 2 and "no CUDA GPU" in capsys.readouterr().err and not (tmp_path / "m").exists()


# ------------------------------------------------------------------------------------------ synthesizer


@pytest.mark.parametrize("model, precision", [("dit", "fp32"), ("dit", "int8-selected"), ("ddpm", "fp32")])
def test_synthesizer_returns_a_frame_of_the_input_size(tiny_models, model, precision):
    synth = Synthesizer.from_model_dir(tiny_models[model], steps=3, guidance=1.0, strength=0.5,
                                       guidance_kind="gradient", precision=precision)
    rgb = tiny_models["images"][0]
    out = synth.synthesize(rgb)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert np.array_equal(out, synth.synthesize(rgb))  # seeded: same frame, same synthesis
    assert synth.last_timing.total_ms > 0 and synth.backend == f"torch-cpu-{precision}"


@pytest.mark.parametrize("model", ["dit", "ddpm"])
def test_onnxruntime_backend_matches_torch(tiny_models, model):
    pytest.importorskip("onnxruntime")
    kw = dict(steps=3, guidance=2.0, strength=0.6, guidance_kind="gradfree")
    torch_synth = Synthesizer.from_model_dir(tiny_models[model], **kw)
    ort_synth = Synthesizer.from_model_dir(tiny_models[model], **kw, backend="onnxruntime", threads=1)
    rgb = tiny_models["images"][0]
    a, b = torch_synth.synthesize(rgb), ort_synth.synthesize(rgb)
    assert ort_synth.backend == "ort-cpu-fp32" and np.abs(a.astype(int) - b).max() <= 1  # float reductions
    t = ort_synth.last_timing
    assert t.steps == 3 and t.dit_ms > 0 and set(t.stages()) == {"encode", "dit", "guidance", "decode"}
    assert t.total_ms == pytest.approx(t.encode_ms + t.dit_ms + t.guidance_ms + t.decode_ms)
    with pytest.raises(ValueError, match="precision int8-selected needs backend torch"):
        Synthesizer.from_model_dir(tiny_models[model], backend="onnxruntime", precision="int8-selected")


def test_sampling_presets_and_explicit_values():
    from ood_monitor.core.diffusion.synthesizer import REALTIME_SAMPLING, resolve_backend, sampling_overrides

    fast = sampling_overrides("realtime")
    assert (fast["steps"], fast["guidance"], fast["strength"], fast["guidance_kind"]) == tuple(REALTIME_SAMPLING.values())
    assert sampling_overrides("model") == {"steps": None, "guidance": None, "strength": None, "guidance_kind": None}
    assert sampling_overrides("model", steps=4, kind="none") == {"steps": 4, "guidance": None, "strength": None,
                                                                 "guidance_kind": "none"}
    assert sampling_overrides("realtime", guidance=0.0)["guidance"] == 0.0  # 0 is a value, -1 means unset
    with pytest.raises(ValueError, match="parameter sampling"):
        sampling_overrides("fastest")
    assert resolve_backend("auto", "int8-selected") == "torch" and resolve_backend("torch", "fp32") == "torch"
    import onnxruntime as ort

    # on cuda, auto picks ONNX Runtime only where its CUDA provider exists (the CPU package would refuse)
    gpu_ort = "CUDAExecutionProvider" in ort.get_available_providers()
    assert resolve_backend("auto", "fp32", "cuda") == ("onnxruntime" if gpu_ort else "torch")
    assert resolve_backend("auto", "fp32", "cpu") == "onnxruntime"
    with pytest.raises(ValueError, match="parameter backend"):
        resolve_backend("tensorrt", "fp32")


def test_synthesizer_from_node_parameters(tiny_models):
    from ood_monitor.core.diffusion.synthesizer import synthesizer_from_params

    fast = synthesizer_from_params(tiny_models["dit"], {})  # the node's defaults: realtime, backend auto
    assert (fast.guidance.kind, fast.guidance.steps, fast.guidance.strength) == ("gradfree", 2, 0.3)
    assert fast.backend == "ort-cpu-fp32"
    slow = synthesizer_from_params(tiny_models["dit"], {"sampling": "model", "steps": 3, "backend": "torch",
                                                        "precision": "int8-selected"})
    card = Synthesizer.card_sampling(tiny_models["dit"])  # the rest from the model directory
    assert (slow.guidance.kind, slow.guidance.steps, slow.guidance.scale) == (card.kind, 3, card.scale)
    assert slow.backend == "torch-cpu-int8-selected"


def test_synthesizer_refuses_wrong_input_and_bad_parameters(tiny_models):
    synth = Synthesizer.from_model_dir(tiny_models["dit"], steps=2)
    with pytest.raises(ValueError, match="32x32x3 uint8"):
        synth.synthesize(np.zeros((48, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="32x32x3 uint8"):
        synth.synthesize(np.zeros((32, 32, 3), np.float32))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="set the parameter device to cpu"):
            Synthesizer.from_model_dir(tiny_models["dit"], device="cuda")
    with pytest.raises(ModelFileError, match="autoencoder"):
        Synthesizer.from_model_dir(tiny_models["dcae"])


def test_latent_model_with_missing_autoencoder_names_it(tiny_models, tmp_path):
    import shutil

    d = tmp_path / "dit"
    shutil.copytree(tiny_models["dit"], d)
    card = json.loads((d / "config.json").read_text())
    card["dcae"] = "../no_such_dcae"
    (d / "config.json").write_text(json.dumps(card))
    with pytest.raises(ModelFileError, match=r"no_such_dcae/config.json not found: run `ood-monitor train dcae"):
        Synthesizer.from_model_dir(d)
