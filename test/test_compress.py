"""Compression: int8 keeps the score ranking, pruning shrinks the model by the ratio, the kd student has
one conv fewer and approaches its teacher, the guard flags a broken variant and the loader refuses it."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ood_monitor.core.compress import (
    DistillConfig,
    float_variant,
    frame_scores,
    int8_variant,
    save_variant,
    variant_card,
)
from ood_monitor.core.compress.distill import conv_layers, distill, mean_posterior_kl, student_from
from ood_monitor.core.compress.guard import evaluate_variant, read_verdict
from ood_monitor.core.compress.prune import conv_param_count, param_count, prune_channels
from ood_monitor.core.runtime import BackendUnavailable, FlaggedVariant, load_detector_backend
from ood_monitor.core.vae.beta_vae import BetaVAE, Encoder, VaeConfig
from ood_monitor.core.vae.dataset import FrameSet
from ood_monitor.core.vae.io import ModelCard, save_model

pytest.importorskip("torch_pruning")
CFG = VaeConfig(height=32, width=32, widths=(8, 16, 16), hidden=32, latent=6)


def ranks(a: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(a)).astype(float)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


@pytest.fixture(scope="module")
def frames() -> FrameSet:
    """Smooth images of varying brightness and texture, so posteriors (and scores) spread out."""
    rng = np.random.default_rng(0)
    n = 96
    base = rng.random((n, 1, 1, 3)) * 200 + rng.random((n, 32, 32, 3)) * rng.random((n, 1, 1, 1)) * 55
    raw = base.astype(np.uint8)
    return FrameSet("image", raw, np.zeros(n, bool), np.array(["in"] * n, object), np.array(["none"] * n, object),
                    np.zeros(n, np.int64), np.arange(n), "hash", "synthetic")


@pytest.fixture(scope="module")
def parent() -> Encoder:
    torch.manual_seed(0)
    enc = Encoder(CFG).eval()
    with torch.no_grad():
        enc.tail.net[-1].weight.mul_(4.0)
    return enc


@pytest.fixture(scope="module")
def card() -> ModelCard:
    return ModelCard(architecture="beta_vae", config=CFG, selected_dims=[0, 1, 2, 3])


def labelled(frames: FrameSet, scores: np.ndarray) -> FrameSet:
    """The same frames labelled so that the parent separates them perfectly (top half = OOD)."""
    from dataclasses import replace

    return replace(frames, is_ood=scores > np.median(scores))


def test_int8_scores_keep_the_fp32_ranking(parent, frames, card):
    base = float_variant("fp32", "fp32", parent)
    q = int8_variant(base, frames.inputs(slice(0, 64), 1.0))
    ref = frame_scores(base.encoder_fn(1), frames, card)
    got = frame_scores(q.encoder_fn(1), frames, card)
    assert q.size_mb < base.size_mb
    assert spearman(ref, got) > 0.9


@pytest.mark.parametrize("keep_first", [True, False])
def test_int8_leaves_the_first_conv_block_fp32(parent, frames, keep_first):
    import onnx

    q = int8_variant(float_variant("fp32", "fp32", parent), frames.inputs(slice(0, 16), 1.0), keep_first=keep_first)
    nodes = list(onnx.load_from_string(q.trunk_onnx).graph.node)
    convs = [n for n in nodes if n.op_type == "Conv"]
    weights_quantized = {n.output[0] for n in nodes if n.op_type == "DequantizeLinear"}
    first_is_float = not any(i in weights_quantized for i in convs[0].input)
    assert first_is_float == keep_first
    assert all(any(i in weights_quantized for i in c.input) for c in convs[1:])  # the rest is int8


@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_pruning_removes_about_the_ratio(parent, ratio):
    pruned = prune_channels(parent, ratio, global_ranking=False)
    for got, was in zip(pruned.cfg.widths, CFG.widths, strict=True):
        assert abs(got - was * (1 - ratio)) <= 1
    kept = conv_param_count(pruned) / conv_param_count(parent)
    assert kept == pytest.approx((1 - ratio) ** 2, abs=0.08)
    assert param_count(pruned) < param_count(parent)
    x = torch.rand(2, 3, 32, 32)
    assert pruned(x)[0].shape == (2, 6)


def test_kd_student_has_one_layer_fewer_and_learns_the_teacher(parent, frames):
    pruned = prune_channels(parent, 0.5, global_ranking=True)
    student = student_from(pruned, remove=len(CFG.widths) - 1)
    assert len(conv_layers(student)) == len(conv_layers(parent)) - 1
    batches = lambda rows: frames.inputs(rows, 1.0)  # noqa: E731
    before = mean_posterior_kl(student, parent, batches, len(frames))
    run = distill(student, parent, batches, len(frames), DistillConfig(steps=40, batch=16, lr=3e-3, time_limit_s=30))
    after = mean_posterior_kl(student, parent, batches, len(frames))
    assert run.steps == 40
    assert after < 0.7 * before


def test_guard_flags_a_broken_variant_and_the_loader_refuses_it(tmp_path, parent, frames, card):
    base = float_variant("fp32", "fp32", parent)
    parent_scores = frame_scores(base.encoder_fn(1), frames, card)
    data = labelled(frames, parent_scores)
    broken_enc = Encoder(CFG).eval()
    broken_enc.load_state_dict(parent.state_dict())
    with torch.no_grad():
        for p in broken_enc.trunk.parameters():
            p.zero_()
    broken = float_variant("prune-0.5", "prune", broken_enc)
    verdict = evaluate_variant(parent_scores, frame_scores(broken.encoder_fn(1), data, card), data.is_ood, 2.0)
    assert verdict.flagged and verdict.delta_aupr_out < -2.0
    ok = evaluate_variant(parent_scores, parent_scores + 1e-6, data.is_ood, 2.0)
    assert not ok.flagged

    parent_dir = tmp_path / "vae"
    model = BetaVAE(CFG)
    model.encoder.load_state_dict(parent.state_dict())
    save_model(parent_dir, model, card)
    out = save_variant(tmp_path / "vae-prune-0.5", broken, variant_card(card, broken, data, data, 1, "test"),
                       parent_dir, card, verdict, {"auroc": verdict.auroc})
    assert read_verdict(out).flagged
    assert json.loads((out / "config.json").read_text())["compression"]["parent"] == str(parent_dir)
    with pytest.raises(FlaggedVariant, match="force_compressed"):
        load_detector_backend(out, "onnxruntime")
    trunk, tail, vcard = load_detector_backend(out, "onnxruntime", force=True)
    assert vcard.calibration["scored_by"] == "prune-0.5"
    assert tail(trunk(data.inputs(slice(0, 3), 1.0)))[0].shape == (3, 6)


def test_int8_variant_folder_loads_on_onnxruntime_only(tmp_path, parent, frames, card):
    base = float_variant("fp32", "fp32", parent)
    q = int8_variant(base, frames.inputs(slice(0, 32), 1.0))
    scores = frame_scores(base.encoder_fn(1), frames, card)
    data = labelled(frames, scores)
    verdict = evaluate_variant(scores, frame_scores(q.encoder_fn(1), data, card), data.is_ood)
    vcard = variant_card(card, q, data, data, 1, "test")
    out = save_variant(tmp_path / "vae-int8", q, vcard, tmp_path / "vae", card, verdict, {})
    assert not (out / "model.safetensors").exists() and (out / "trunk.onnx").is_file()
    with pytest.raises(BackendUnavailable, match="set parameter backend to onnxruntime"):
        load_detector_backend(out, "torch", force=True)
    trunk, tail, _ = load_detector_backend(out, "onnxruntime", force=True)
    x = data.inputs(slice(0, 2), 1.0)
    np.testing.assert_allclose(tail(trunk(x))[0], q.encoder_fn(1)(x)[0], atol=1e-5)
    mc = tail.sample(np.repeat(trunk(x[:1]), 8, axis=0))[0]
    assert np.unique(mc[:, 0]).size > 1


def test_perturb_changes_the_chosen_share_of_rows_and_keeps_images_in_range():
    from ood_monitor.core.compress.distill import perturb

    x = torch.rand(64, 3, 16, 16)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(perturb(x, 0.0, gen), x)
    out = perturb(x, 0.5, gen)
    changed = (out - x).abs().flatten(1).amax(1) > 1e-6
    assert out.shape == x.shape and 16 < int(changed.sum()) < 48 and out.min() >= 0 and out.max() <= 1
    flow = torch.randn(8, 2, 16, 16) * 3
    assert perturb(flow, 1.0, gen, clip=False).abs().max() > 1.0  # flow is not clipped to [0, 1]


def test_pruned_channels_round_to_multiples(parent):
    pruned = prune_channels(parent, 0.5, global_ranking=True, round_to=4)
    assert all(w % 4 == 0 for w in pruned.cfg.widths) and pruned.cfg.widths != CFG.widths


def test_a_variant_scores_with_its_own_latent_statistics(parent, frames, card):
    from dataclasses import replace

    from ood_monitor.core.compress import scoring_card
    from ood_monitor.core.nonconformity import latent_stats

    base = float_variant("fp32", "fp32", parent)
    mu, logvar = base.encoder_fn(1)(frames.inputs(slice(0, 96), 1.0))
    with_stats = replace(card, score="kl_deviation", latent_stats=latent_stats(mu, logvar))
    pruned = float_variant("prune-0.5", "prune", prune_channels(parent, 0.5, global_ranking=False))
    own = scoring_card(with_stats, pruned, frames, 1)
    assert own.config == pruned.encoder.cfg and own.latent_stats != with_stats.latent_stats
    again = scoring_card(with_stats, base, frames, 1)  # the parent itself: its own statistics back
    np.testing.assert_allclose(again.latent_stats["kl_mean"], with_stats.latent_stats["kl_mean"], rtol=1e-5)


def test_compress_command_writes_guarded_variants_that_load(demo_dataset, tiny_image_model, tmp_path):
    from ood_monitor.cli.main import main as cli

    bags = demo_dataset / "bags"
    assert cli(["compress", "--model", str(tiny_image_model), "--methods", "int8,prune,kd", "--data-train", str(bags / "train"),
                "--data-eval", str(bags / "test"), "--ratios", "0.5", "--steps", "20", "--time-limit", "10",
                "--out-root", str(tmp_path), "--threads", "1"]) == 0
    parent = json.loads((tiny_image_model / "config.json").read_text())
    for name in ("int8", "prune-0.5", "kd"):
        folder = tmp_path / f"vae_image-{name}"
        card = json.loads((folder / "config.json").read_text())
        assert card["calibration"]["scored_by"] == name and "guard" in json.dumps(card)
        # scored as its folder scores: a texture head re-fitted on the variant's posteriors, its own part scales
        assert card["score"] == "kl_texture_photometric_structure" and card["texture"]["weights"] != parent["texture"]["weights"]
        assert card["photometric"]["parts"]["maxima"] != parent["photometric"]["parts"]["maxima"]
        try:
            trunk, tail, vcard = load_detector_backend(folder, "onnxruntime", "cpu", "", force=True)
        except BackendUnavailable:
            pytest.skip("onnxruntime not importable")
        mu, _ = tail(trunk(np.zeros((1, 3, 32, 32), np.float32)))
        assert mu.shape == (1, 6) and vcard.calibration["frames"] > 0


def test_a_variant_of_a_fused_score_gets_its_own_part_scales(parent, frames, card):
    """The variant's kl_texture part has its own spread, so `calibrate`'s part scales are measured again on
    its scores (the photometric part reads the frames alone and keeps its statistics)."""
    from dataclasses import replace

    from ood_monitor.core.nonconformity import latent_stats
    from ood_monitor.core.photometric import PhotometricStats
    from ood_monitor.core.texture import TextureHead

    base = float_variant("fp32", "fp32", parent)
    mu, logvar = base.encoder_fn(1)(frames.inputs(slice(0, 96), 1.0))
    photometric = {**PhotometricStats.fit_frames(frames.raw).to_dict(),
                   "parts": {"scales": [1.0, 1.0], "tolerances": [1.0, 1.0], "maxima": [1.0, 1.0], "measured": True}}
    fused = replace(card, score="kl_texture_photometric", latent_stats=latent_stats(mu, logvar),
                    texture=TextureHead.fit_frames(mu, logvar, frames.raw).to_dict(), photometric=photometric,
                    alarm={"target_false_alarms_per_1000": 1.0, "score_tolerance_measured": False,
                           "score_tolerance": 1.0, "tail": "pareto", "p_floor": 1e-5})
    pruned = float_variant("prune-0.5", "prune", prune_channels(parent, 0.5, global_ranking=False))
    out = variant_card(fused, pruned, frames, frames, 1, "test")
    parts = out.photometric["parts"]
    assert parts["scales"] != [1.0, 1.0] and parts["measured"] and min(parts["tolerances"]) >= 1.0
    assert max(out.calibration["scores"]) == pytest.approx(1.0 / min(parts["tolerances"]))
    assert out.alarm["score_tolerance"] == pytest.approx(min(parts["tolerances"]), abs=1e-4)
    assert out.photometric["mean"] == photometric["mean"]
