"""VAE models, model files, dataset conversion and training (core/vae)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from ood_monitor.core.model_input import FrameConfig, prepare_frame
from ood_monitor.core.nonconformity import Nonconformity, kl_score, latent_kl, latent_stats, select_dims
from ood_monitor.core.vae import BetaVAE, HierarchicalVAE, HvaeConfig, VaeConfig, build_model
from ood_monitor.core.vae.beta_vae import gaussian_kl
from ood_monitor.core.vae.dataset import FrameSet, auto_flow_scale, collect, model_input
from ood_monitor.core.vae.io import (
    CONFIG,
    WEIGHTS,
    ModelCard,
    ModelFileError,
    load_encoder,
    load_model,
    read_card,
    save_model,
    write_card,
)
from ood_monitor.core.vae.train import (
    AugmentConfig,
    TrainConfig,
    augment_batch,
    choose_dims,
    evaluate_loss,
    kl_weight,
    split_blocks,
    train_vae,
)

torch.set_num_threads(2)
TINY = dict(height=32, width=32, latent=6, widths=(8, 16), hidden=32)


@dataclass
class FakeFrame:
    index: int
    stamp_ns: int
    image: np.ndarray
    episode: int = 0
    is_ood: bool = False
    category: str = "in_distribution"
    kind: str = "none"


def blob_images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Smooth structured frames (a moving bright disc on a gradient) that a VAE can learn quickly."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(0.25, 0.75, 2)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < 0.03).astype(np.float64)
        base = 0.3 + 0.3 * yy
        out[i] = (255 * np.clip(np.stack([base + 0.5 * disc, base, base + 0.2 * disc], -1), 0, 1)).astype(np.uint8)
    return out


def image_frameset(n: int = 96, seed: int = 0) -> FrameSet:
    raw = blob_images(n, seed=seed)
    return FrameSet("image", raw, np.zeros(n, bool), np.array(["in_distribution"] * n, object),
                    np.array(["none"] * n, object), np.zeros(n, np.int64), np.arange(n), "h")


def saved_model(tmp_path: Path, arch: str = "beta_vae", **kw) -> tuple[torch.nn.Module, Path]:
    cfg = HvaeConfig(**TINY, ratio=0.5, **kw) if arch == "hvae" else VaeConfig(**TINY, **kw)
    torch.manual_seed(0)
    model = build_model(arch, cfg).eval()
    card = ModelCard(arch, cfg, selected_dims=[0, 2, 4], latent_kl=[0.1] * cfg.latent, data={"hash": "abc"})
    save_model(tmp_path / "m", model, card)
    return model, tmp_path / "m"


@pytest.mark.parametrize("kind,channels", [("image", 3), ("flow", 2)])
def test_one_class_for_images_and_flow(kind: str, channels: int) -> None:
    model = BetaVAE(VaeConfig(kind=kind, **TINY)).eval()
    out = model(torch.rand(2, channels, 32, 32))
    assert out.recon.shape == (2, channels, 32, 32)
    assert out.mu.shape == out.logvar.shape == (2, 6)
    if kind == "image":  # sigmoid output for images, linear for flow
        assert out.recon.min() >= 0 and out.recon.max() <= 1


def test_config_rejects_bad_geometry() -> None:
    with pytest.raises(ValueError, match="divisible"):
        VaeConfig(height=30, width=32, widths=(8, 16))
    with pytest.raises(ValueError, match="channels"):
        VaeConfig(kind="flow", channels=3)
    assert VaeConfig.from_dict(VaeConfig(**TINY).to_dict()) == VaeConfig(**TINY)


def test_encoder_alone_matches_full_model(tmp_path: Path) -> None:
    model, path = saved_model(tmp_path)
    encoder, _ = load_encoder(path)
    assert not any(k.startswith("decoder") for k in encoder.state_dict())
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        full = model(x)
        mu, logvar = encoder(x)
    assert torch.equal(mu, full.mu) and torch.equal(logvar, full.logvar)


def test_hvae_budget_split_and_standardised_kl() -> None:
    cfg = HvaeConfig(**{**TINY, "latent": 10}, ratio=0.3)
    assert cfg.level_dims == (3, 7)
    assert HvaeConfig(**{**TINY, "latent": 10}, ratio=0.01).level_dims == (1, 9)
    model = HierarchicalVAE(cfg).eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        g = model.encoder.tail.levels(model.encoder.trunk(x), sample=False)
        direct = (gaussian_kl(g["mu1"], g["lv1"], g["mu_p"], g["lv_p"]).sum(1) + gaussian_kl(g["mu2"], g["lv2"]).sum(1))
        mu, logvar = model.encoder(x)
    assert mu.shape == (4, 10)
    np.testing.assert_allclose(latent_kl(mu.numpy(), logvar.numpy()).sum(1), direct.numpy(), rtol=1e-4)
    assert model.reconstruct(x).shape == x.shape


def test_kl_score_numbers() -> None:
    mu = np.array([[1.0, 0.0, 2.0]])
    logvar = np.zeros((1, 3))
    np.testing.assert_allclose(latent_kl(mu, logvar), [[0.5, 0.0, 2.0]])
    assert kl_score(mu, logvar, [0, 2])[0] == pytest.approx(2.5)
    assert select_dims(np.array([0.1, 3.0, 0.5, 2.0]), 2) == [1, 3]
    with pytest.raises(ValueError):
        select_dims(np.ones(4), 5)


def training_posteriors(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Posteriors like a trained encoder's on its training data: informative means, narrow variances."""
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 2.0, (n, 4)), rng.normal(-3.0, 0.2, (n, 4))


def test_two_sided_scores_flag_posteriors_that_are_too_close_to_the_prior() -> None:
    mu, logvar = training_posteriors()
    stats = latent_stats(mu, logvar)
    kl = Nonconformity.from_stats("kl", [0, 1, 2], None)
    post = Nonconformity.from_stats("posterior_deviation", [0, 1, 2], stats)
    kl_dev = Nonconformity.from_stats("kl_deviation", [0, 1, 2], stats)
    prior_like = (np.zeros((1, 4)), np.zeros((1, 4)))  # frozen camera / noise: uninformative posterior
    far = (np.full((1, 4), 9.0), np.full((1, 4), -3.0))  # a posterior far out in latent space
    # one-sided KL: the prior-like frame is the most "normal" of all
    assert kl(*prior_like)[0] < kl(mu, logvar).min() and kl(*far)[0] > kl(mu, logvar).max()
    # posterior deviation: both are stranger than every training posterior
    assert post(*prior_like)[0] > post(mu, logvar).max() and post(*far)[0] > post(mu, logvar).max()
    # KL deviation only lifts the prior-like frame above the typical one (the KL spread is wide)
    assert np.median(kl_dev(mu, logvar)) < kl_dev(*prior_like)[0] < kl_dev(mu, logvar).max()
    # a training frame scores its number of standardised features on average (chi-square mean)
    assert np.mean(post(mu, logvar)) == pytest.approx(6, rel=1e-6)
    assert np.mean(kl_dev(mu, logvar)) == pytest.approx(3, rel=1e-6)


def test_two_sided_score_numbers_and_validation() -> None:
    stats = {"mu_mean": [1.0, 0.0], "mu_std": [2.0, 1.0], "logvar_mean": [-1.0, 0.0], "logvar_std": [0.5, 0.0],
             "kl_mean": [3.0, 1.0], "kl_std": [1.0, 1.0]}
    post = Nonconformity.from_stats("posterior_deviation", [0], stats)
    assert post.center == (1.0, -1.0) and post.scale == (2.0, 0.5)
    # ((3 - 1) / 2)^2 + ((0 + 1) / 0.5)^2 = 1 + 4
    assert post(np.array([[3.0, 7.0]]), np.array([[0.0, 7.0]]))[0] == pytest.approx(5.0)
    # a dim that never varied on training data is floored at 5% of the median selected std (1e-3 at least)
    assert Nonconformity.from_stats("posterior_deviation", [1], stats).scale == (1.0, 0.025)
    flat = {**stats, "mu_std": [0.0, 0.0]}
    assert Nonconformity.from_stats("posterior_deviation", [1], flat).scale == (1e-3, 1e-3)
    kl_dev = Nonconformity.from_stats("kl_deviation", [0], stats)
    assert kl_dev(np.array([[0.0, 0.0]]), np.zeros((1, 2)))[0] == pytest.approx(9.0)  # KL 0 vs mean 3, std 1
    with pytest.raises(ValueError, match="training"):
        Nonconformity.from_stats("posterior_deviation", [0], None)
    with pytest.raises(ValueError, match="score must be one of"):
        Nonconformity("mahalanobis", (0,))


def test_kl_warmup_ramps_the_weight() -> None:
    assert kl_weight(0, 0) == 1.0 and kl_weight(5, 0) == 1.0
    assert [kl_weight(s, 4) for s in (0, 1, 2, 4, 9)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    with pytest.raises(ValueError):
        TrainConfig(kl_warmup=-1)


def test_training_stats_match_the_selected_dims() -> None:
    data = image_frameset(24)
    torch.manual_seed(0)
    model = BetaVAE(VaeConfig(**TINY)).eval()
    dims, usage, stats, _texture = choose_dims(model.encoder, data, 1.0, 3)
    assert dims == select_dims(usage, 3) and len(stats["mu_std"]) == TINY["latent"]
    np.testing.assert_allclose(stats["kl_mean"], usage)


@pytest.mark.parametrize("arch", ["beta_vae", "hvae"])
def test_save_load_round_trip_is_bit_exact(tmp_path: Path, arch: str) -> None:
    model, path = saved_model(tmp_path, arch)
    loaded, card = load_model(path)
    assert card.architecture == arch and card.config == model.cfg and card.selected_dims == [0, 2, 4]
    ref = model.state_dict()
    assert ref.keys() == loaded.state_dict().keys()
    assert all(torch.equal(ref[k], v) for k, v in loaded.state_dict().items())
    assert json.loads((path / CONFIG).read_text())["input"] == {"height": 32, "width": 32, "channels": 3}
    assert b"pickle" not in (path / WEIGHTS).read_bytes()[:64]


def test_missing_files_name_file_and_command(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match=r"nowhere/config.json not found: run `ood-monitor train vae"):
        load_encoder(tmp_path / "nowhere")
    _, path = saved_model(tmp_path)
    (path / WEIGHTS).unlink()
    with pytest.raises(ModelFileError, match=r"model.safetensors not found: run `ood-monitor train vae --kind image"):
        load_encoder(path)


def test_corrupt_files_raise_model_file_error(tmp_path: Path) -> None:
    _, path = saved_model(tmp_path)
    blob = (path / WEIGHTS).read_bytes()
    (path / WEIGHTS).write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ModelFileError, match="sha256 differs"):
        load_encoder(path)
    card = read_card(path)
    card.weights_sha256 = ""  # without the recorded hash the parser itself must catch it
    (path / CONFIG).write_text(json.dumps(card.to_dict()))
    with pytest.raises(ModelFileError, match="model.safetensors is corrupt"):
        load_encoder(path)
    (path / CONFIG).write_text("{not json")
    with pytest.raises(ModelFileError, match="config.json is corrupt"):
        read_card(path)
    (path / CONFIG).write_text(json.dumps({"architecture": "beta_vae"}))
    with pytest.raises(ModelFileError, match="not a valid model config"):
        read_card(path)


def test_mismatched_architecture_is_refused(tmp_path: Path) -> None:
    _, path = saved_model(tmp_path)
    data = json.loads((path / CONFIG).read_text())
    data["model"]["latent"] = 9
    data["weights_sha256"] = ""
    (path / CONFIG).write_text(json.dumps(data))
    with pytest.raises(ModelFileError, match="does not fit the architecture"):
        load_encoder(path)


def test_missing_calibration_says_what_to_run(tmp_path: Path) -> None:
    _, path = saved_model(tmp_path)
    card = read_card(path)
    with pytest.raises(ModelFileError, match=rf"{path}/config.json has no calibration scores: run "
                       rf"`ood-monitor calibrate --model {path} --data DIR/bags/calibration`"):
        card.calibration_scores(path)
    card.calibration = {"scores": [3.0, 1.0, 2.0], "selected_dims": [0, 2, 4]}
    np.testing.assert_array_equal(card.calibration_scores(path), [1.0, 2.0, 3.0])
    card.calibration["selected_dims"] = [1]
    with pytest.raises(ModelFileError, match="other latent dims"):
        card.calibration_scores(path)


def test_card_keeps_the_score_and_refuses_mismatched_calibration(tmp_path: Path) -> None:
    _, path = saved_model(tmp_path)
    card = read_card(path)
    assert card.score == "kl" and card.nonconformity.method == "kl"  # arXiv 2409.00880's score
    mu, logvar = training_posteriors()
    card.score, card.latent_stats = "posterior_deviation", latent_stats(np.tile(mu, 2)[:, :6], np.tile(logvar, 2)[:, :6])
    card.calibration = {"scores": [1.0, 2.0], "selected_dims": [0, 2, 4], "score": "posterior_deviation"}
    again = ModelCard.from_dict(json.loads(json.dumps(card.to_dict())))
    assert again.score == "posterior_deviation" and again.nonconformity == card.nonconformity
    np.testing.assert_array_equal(again.calibration_scores(path), [1.0, 2.0])
    again.calibration["score"] = "kl"
    with pytest.raises(ModelFileError, match="calibrated with another score"):
        again.calibration_scores(path)
    broken = {**card.to_dict(), "latent_stats": {}}
    with pytest.raises(ModelFileError, match="not a valid model config"):
        ModelCard.from_dict(broken)


def test_rewriting_a_card_keeps_the_sections_other_tools_added(tmp_path: Path) -> None:
    """`ood-monitor calibrate` on a compressed variant rewrites config.json: its compression record,
    runtime graphs and OOD-guard verdict must survive, or the node would lose the guard."""
    _, path = saved_model(tmp_path)
    raw = json.loads((path / CONFIG).read_text())
    added = {"compression": {"method": "int8"}, "runtime": {"files": {"trunk": "trunk.onnx"}},
             "guard": {"flagged": True}}
    (path / CONFIG).write_text(json.dumps({**raw, **added}))
    card = read_card(path)
    card.calibration = {"scores": [1.0], "selected_dims": card.selected_dims, "score": card.score}
    write_card(path, card)
    rewritten = json.loads((path / CONFIG).read_text())
    assert {k: rewritten[k] for k in added} == added and rewritten["calibration"]["scores"] == [1.0]


def test_collect_images_and_flow_restarts_at_stamp_gaps() -> None:
    imgs = blob_images(10, size=48)
    # two drives: the second starts 2 s after the first ended (a cut), its OOD episode starts at frame 7
    frames = [FakeFrame(i, i * 100_000_000 + (2_000_000_000 if i >= 5 else 0), imgs[i], episode=i // 5,
                        is_ood=i >= 7) for i in range(10)]
    cfg = FrameConfig(32, 32)
    image = collect(frames, "image", cfg)
    assert image.raw.shape == (10, 32, 32, 3) and image.raw.dtype == np.uint8
    assert image.is_ood.sum() == 3 and list(image.episode) == [0] * 5 + [1] * 5
    flow = collect(frames, "flow", cfg)
    assert flow.raw.shape == (8, 32, 32, 3) and flow.raw.dtype == np.float32  # no flow across the cut
    assert list(flow.index) == [1, 2, 3, 4, 6, 7, 8, 9] and flow.is_ood.sum() == 3  # onset frame 7 has flow
    assert collect(frames, "image", cfg).data_hash == image.data_hash
    frames[3].image = 255 - frames[3].image
    assert collect(frames, "image", cfg).data_hash != image.data_hash
    x = model_input(flow.raw[:2], "flow", 2.0)
    assert x.shape == (2, 2, 32, 32)
    np.testing.assert_allclose(x[:, 0], flow.raw[:2, ..., 0] / 2.0)
    assert auto_flow_scale(np.full((4, 4, 2), 1.1, np.float32)) == 1.25


def test_load_frames_from_image_folder(tmp_path: Path) -> None:
    pytest.importorskip("ood_monitor.data.labeled_frames")
    import cv2

    from ood_monitor.core.vae.dataset import load_frames

    for i, img in enumerate(blob_images(6, size=40)):
        cv2.imwrite(str(tmp_path / f"{i:04d}.png"), img[..., ::-1])
    image = load_frames(tmp_path, "image", FrameConfig(32, 32))
    assert image.raw.shape == (6, 32, 32, 3)
    np.testing.assert_array_equal(image.raw[0], prepare_frame(blob_images(6, size=40)[0], FrameConfig(32, 32)))
    assert load_frames(tmp_path, "flow", FrameConfig(32, 32)).raw.shape == (5, 32, 32, 3)  # u, v, warp residual


def test_flow_flip_negates_u() -> None:
    x = torch.randn(16, 2, 8, 8)
    out = augment_batch(x, "flow", AugmentConfig(brightness=0, contrast=0, shift=0, hflip=True),
                        torch.Generator().manual_seed(1))
    flipped = [i for i in range(16) if not torch.equal(out[i], x[i])]
    assert 0 < len(flipped) < 16
    for i in flipped:
        assert torch.equal(out[i, 0], -x[i, 0].flip(-1)) and torch.equal(out[i, 1], x[i, 1].flip(-1))


def test_image_augment_stays_in_range_and_shifts() -> None:
    x = torch.rand(8, 3, 16, 16)
    out = augment_batch(x, "image", AugmentConfig(brightness=0.3, contrast=0.3, shift=2, hflip=False),
                        torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1 and not torch.equal(out, x)


def test_block_split_is_disjoint_and_contiguous() -> None:
    tr, va = split_blocks(320, 0.1, 32, np.random.default_rng(0))
    assert len(tr) + len(va) == 320 and not set(tr) & set(va)
    assert len(va) == 32 and np.all(np.diff(va) == 1)


def test_tiny_training_reduces_loss() -> None:
    data = image_frameset(96)
    torch.manual_seed(0)
    model = BetaVAE(VaeConfig(**TINY))
    rows = np.arange(len(data))
    before = evaluate_loss(model, data, rows, 1.0, 64)["loss"]
    res = train_vae(model, data, 1.0, TrainConfig(epochs=8, batch=16, lr=2e-3, val_split=0.2, patience=8,
                                                  augment=AugmentConfig(enabled=True, shift=2)), log=lambda _: None)
    after = evaluate_loss(model, data, rows, 1.0, 64)["loss"]
    assert after < 0.5 * before
    assert 1 <= res.best_epoch <= len(res.curve)
    assert res.curve[-1]["val_loss"] is not None and res.steps > 0


def test_training_device_is_checked_before_any_frame_is_read(tmp_path: Path, capsys) -> None:
    from ood_monitor.cli.main import main

    with pytest.raises(ValueError, match="--device must be cpu, cuda or cuda:N"):
        train_vae(BetaVAE(VaeConfig(**TINY)), image_frameset(16), 1.0, TrainConfig(epochs=1, device="gpu"),
                  log=lambda _: None)
    out = tmp_path / "m"
    code = main(["train", "vae", "--kind", "image", "--data", str(tmp_path / "absent"), "--out", str(out),
                 "--device", "mps"])
    assert code == 2 and "--device must be cpu, cuda or cuda:N" in capsys.readouterr().err and not out.exists()
    if torch.cuda.is_available():
        return  # the refusal below is for machines without a GPU (test_gpu.py trains on one)
    code = main(["train", "vae", "--kind", "image", "--data", str(tmp_path / "absent"), "--out", str(out),
                 "--device", "cuda"])
    assert code == 2 and "finds no CUDA GPU here" in capsys.readouterr().err and not out.exists()
