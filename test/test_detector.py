"""ROS-free VaeDetector (core/detector): loading, input validation, train/serve parity, alarms."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ood_monitor.core.alarm_calibration import AlarmTarget, calibrate_alarms
from ood_monitor.core.conformal import AlarmConfig
from ood_monitor.core.detector import VaeDetector, score_frameset
from ood_monitor.core.nonconformity import Nonconformity, encode, latent_stats
from ood_monitor.core.texture import TextureHead
from ood_monitor.core.vae import VaeConfig, build_model
from ood_monitor.core.vae.dataset import FrameSet
from ood_monitor.core.vae.io import ModelCard, ModelFileError, load_encoder, read_card, save_model, write_card

torch.set_num_threads(2)
SIZE = 32


def frameset(kind: str, n: int, seed: int = 0) -> FrameSet:
    rng = np.random.default_rng(seed)
    if kind == "image":
        raw = rng.integers(60, 120, size=(n, SIZE, SIZE, 3), dtype=np.uint8)
    else:
        raw = rng.normal(0.0, 0.5, size=(n, SIZE, SIZE, 2)).astype(np.float32)
    labels = np.zeros(n, bool)
    return FrameSet(kind, raw, labels, np.array(["in_distribution"] * n, object), np.array(["none"] * n, object),
                    np.zeros(n, np.int64), np.arange(n), "hash")


def model_dir(tmp_path: Path, kind: str = "image", calibrate: bool = True, score: str = "kl") -> Path:
    cfg = VaeConfig(kind=kind, height=SIZE, width=SIZE, latent=8, widths=(8, 16), hidden=32, dropout=0.2)
    torch.manual_seed(0)
    path = tmp_path / f"vae_{kind}_{score}"
    model = build_model("beta_vae", cfg).eval()
    scale = 2.0 if kind == "flow" else 1.0
    train = frameset(kind, 64, seed=4)
    posteriors = encode(model.encoder, lambda s: train.inputs(s, scale), 64)
    stats = latent_stats(*posteriors) if score != "kl" else {}
    texture = TextureHead.fit_frames(*posteriors, train.raw).to_dict() if score == "kl_texture" else {}
    card = ModelCard("beta_vae", cfg, flow_scale=scale, selected_dims=[1, 2, 5], score=score, latent_stats=stats,
                     texture=texture)
    save_model(path, model, card)
    if calibrate:
        encoder, card = load_encoder(path)
        stream = score_frameset(encoder, card, frameset(kind, 200, seed=1))
        card.calibration = {"scores": np.sort(stream).tolist(), "selected_dims": card.selected_dims, "score": score}
        card.alarm = calibrate_alarms(stream).to_dict(AlarmTarget())
        write_card(path, card)
    return path


@pytest.mark.parametrize("kind", ["image", "flow"])
def test_scores_match_offline_scoring(tmp_path: Path, kind: str) -> None:
    path = model_dir(tmp_path, kind)
    det = VaeDetector.from_model_dir(path, AlarmConfig(), kind=kind, expect_size=(SIZE, SIZE))
    test = frameset(kind, 5, seed=2)
    offline = score_frameset(*load_encoder(path), test)
    online = [det.score_frame(f) for f in test.raw]
    np.testing.assert_allclose([r.score for r in online], offline, rtol=1e-5)
    r = online[-1]
    assert 0.005 <= r.p_value <= 1 and np.isnan(r.uncertainty) and not r.uncertain and not r.is_ood


@pytest.mark.parametrize("score", ["kl_deviation", "posterior_deviation"])
def test_detector_runs_the_score_of_its_model_card(tmp_path: Path, score: str) -> None:
    path = model_dir(tmp_path, "flow", score=score)
    det = VaeDetector.from_model_dir(path, kind="flow", mc_samples=10)
    assert det.score.method == score and det.mc.score == det.score
    test = frameset("flow", 4, seed=2)
    online = [det.score_frame(f).score for f in test.raw]
    np.testing.assert_allclose(online, score_frameset(*load_encoder(path), test), rtol=1e-5)
    mu, logvar = encode(det.encoder, lambda s: test.inputs(s, 2.0), 4)
    kl = Nonconformity("kl", (1, 2, 5))(mu, logvar)
    assert not np.allclose(online, kl)  # not the one-sided KL
    card = read_card(path)
    card.score = "kl"  # calibrated for the two-sided score: refused, with the command that fixes it
    write_card(path, card)
    with pytest.raises(ModelFileError, match="calibrated with another score"):
        VaeDetector.from_model_dir(path)


def test_kl_texture_online_equals_offline_and_mc_dropout_scores_the_texture_term(tmp_path: Path) -> None:
    path = model_dir(tmp_path, "image", score="kl_texture")
    det = VaeDetector.from_model_dir(path, kind="image", mc_samples=12)
    assert det.score.method == "kl_texture" and det.score.texture is not None
    test = frameset("image", 4, seed=2)
    online = [det.score_frame(f) for f in test.raw]
    offline = score_frameset(*load_encoder(path), test)
    np.testing.assert_allclose([r.score for r in online], offline, rtol=1e-5)
    assert all(r.uncertainty > 0 for r in online)
    mu, logvar = encode(det.encoder, lambda s: test.inputs(s, 1.0), 4)
    card = read_card(path)
    kd = Nonconformity.from_stats("kl_deviation", card.selected_dims, card.latent_stats)(mu, logvar)
    term = det.score.texture(mu, logvar, det.score.frame_features(test.raw))
    np.testing.assert_allclose(offline, kd + term, rtol=1e-6)  # kl_deviation plus the texture term
    assert np.all(term > 0)
    smooth = np.full_like(test.raw[0], 90)  # no texture at all: far from what training frames have
    assert det.score_frame(smooth).score > max(r.score for r in online)


def test_kl_texture_without_a_fitted_head_or_the_frames_texture_is_refused(tmp_path: Path) -> None:
    card = read_card(model_dir(tmp_path, "image", score="kl_texture", calibrate=False))
    score = card.nonconformity
    with pytest.raises(ValueError, match="need the frames' features"):
        score(np.zeros((1, 8)), np.zeros((1, 8)))
    card.texture = {}
    with pytest.raises(ValueError, match="kl_texture needs the texture head"):
        card.nonconformity  # noqa: B018


def test_refuses_wrong_frames(tmp_path: Path) -> None:
    image = VaeDetector.from_model_dir(model_dir(tmp_path, "image"))
    flow = VaeDetector.from_model_dir(model_dir(tmp_path, "flow"))
    bad = [np.zeros((SIZE, SIZE + 8, 3), np.uint8), np.zeros((SIZE, SIZE, 3), np.float32),
           np.zeros((SIZE, SIZE), np.uint8), np.zeros((SIZE, SIZE, 4), np.uint8)]
    for frame in bad:
        with pytest.raises(ValueError, match=f"expects {SIZE}x{SIZE}x3 uint8 RGB"):
            image.score_frame(frame)
    with pytest.raises(ValueError, match="float32 flow"):
        flow.score_frame(np.zeros((SIZE, SIZE, 2), np.float64))
    nan_flow = np.zeros((SIZE, SIZE, 2), np.float32)
    nan_flow[3, 4, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        flow.score_frame(nan_flow)
    assert len(image.monitor._log_p) == 0  # nothing was scored


def test_refuses_unusable_models(tmp_path: Path) -> None:
    path = model_dir(tmp_path, "image", calibrate=False)
    with pytest.raises(ModelFileError, match=r"has no calibration scores: run `ood-monitor calibrate --model"):
        VaeDetector.from_model_dir(path)
    path = model_dir(tmp_path, "image")
    with pytest.raises(ModelFileError, match=r"is for 32x32 input but frames are prepared at 128x128"):
        VaeDetector.from_model_dir(path, expect_size=(128, 128))
    with pytest.raises(ModelFileError, match="is a image model but a flow detector"):
        VaeDetector.from_model_dir(path, kind="flow")
    with pytest.raises(ModelFileError, match="not found"):
        VaeDetector.from_model_dir(tmp_path / "missing")


def test_alarm_on_strange_frames_and_reset(tmp_path: Path) -> None:
    path = model_dir(tmp_path, "image")
    card = read_card(path)
    card.calibration["scores"] = [-1.0] * 50  # every real score is stranger than all of calibration
    write_card(path, card)
    det = VaeDetector.from_model_dir(path, AlarmConfig(test="cusum", cusum_delta=2.0, cusum_threshold=10.0))
    frame = frameset("image", 1).raw[0]
    results = [det.score_frame(frame) for _ in range(7)]
    # each frame adds -log(1/51) - 2 = 1.93 to the CUSUM: above 10 from the 6th frame on
    assert [r.is_ood for r in results] == [False] * 5 + [True, True]
    assert results[0].p_value == pytest.approx(1 / 51)
    det.reset()
    assert det.score_frame(frame).cusum == pytest.approx(-np.log(1 / 51) - 2.0)


def test_mc_dropout_reports_uncertainty(tmp_path: Path) -> None:
    path = model_dir(tmp_path, "image")
    det = VaeDetector.from_model_dir(path, mc_samples=20)
    plain = VaeDetector.from_model_dir(path)
    frame = frameset("image", 1, seed=3).raw[0]
    torch.manual_seed(0)
    r = det.score_frame(frame)
    assert r.uncertainty > 0 and np.isfinite(r.uncertainty)
    assert r.score == pytest.approx(plain.score_frame(frame).score)  # MC never changes the decision score
    assert not det.encoder.training


def cli(*argv: str) -> int:
    import argparse

    from ood_monitor.cli import calibrate_cmd, train_cmd

    parser = argparse.ArgumentParser(prog="ood-monitor")
    sub = parser.add_subparsers(dest="command", required=True)
    train_cmd.register(sub)
    calibrate_cmd.register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def png_folder(path: Path, n: int, seed: int) -> Path:
    import cv2

    path.mkdir()
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:48, :64]
    for i in range(n):  # a drifting sinusoid texture: consecutive frames have real optical flow
        phase = i * 0.3 + rng.uniform(0, 0.05)
        grey = 128 + 80 * np.sin(xx / 5.0 + phase) * np.cos(yy / 7.0)
        cv2.imwrite(str(path / f"{i:05d}.png"), np.repeat(grey[..., None], 3, -1).astype(np.uint8))
    return path


@pytest.mark.parametrize("kind,extra", [("image", []), ("flow", ["--hvae-ratio", "0.5"])])
def test_train_and_calibrate_commands(tmp_path: Path, kind: str, extra: list[str],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("ood_monitor.data.labeled_frames")
    train, cal = png_folder(tmp_path / "train", 40, 0), png_folder(tmp_path / "cal", 30, 1)
    out = tmp_path / "models" / f"vae_{kind}"
    assert cli("train", "vae", "--kind", kind, "--data", str(train), "--out", str(out), "--size", "32",
               "--latent", "6", "--widths", "8,16", "--hidden", "32", "--epochs", "2", "--min-steps", "0", "--batch", "16",
               "--select-k", "3", "--threads", "2", *extra) == 0
    card = read_card(out)
    assert card.architecture == ("hvae" if extra else "beta_vae") and card.kind == kind
    assert len(card.selected_dims) == 3 and len(card.training["curve"]) == 2 and len(card.data["hash"]) == 64
    if kind == "flow":  # auto scale: a percentile of |flow| rounded up to 0.25 px
        assert card.flow_scale >= 0.25 and card.flow_scale % 0.25 == 0
        assert card.score == "posterior_motion" and card.motion and not card.texture  # the shipped flow model's score
    else:
        assert card.flow_scale == 1.0
        assert card.score == "kl_texture_photometric_structure" and len(card.texture["weights"]) == 2 * 6 + 1  # default
        assert card.photometric["parts"]["tolerances"] == [1.0] * 3  # training maxima until calibrate measures them
        assert card.photometric["structure"]["features"] == ["edge_coherence", "laplacian_gradient_ratio"]
    with pytest.raises(ValueError, match="training data"):
        cli("calibrate", "--model", str(out), "--data", str(train))
    assert cli("calibrate", "--model", str(out), "--data", str(cal)) == 0
    scores = read_card(out).calibration["scores"]
    assert len(scores) == (30 if kind == "image" else 29) and scores == sorted(scores)
    assert "epoch   2/2" in capsys.readouterr().out
    det = VaeDetector.from_model_dir(out, kind=kind, expect_size=(32, 32))
    frame = np.zeros((32, 32, 3), np.uint8) if kind == "image" else np.zeros((32, 32, 3), np.float32)  # u, v, residual
    assert np.isfinite(det.score_frame(frame).score)


def test_calibrate_takes_several_recordings_and_stores_alarm_thresholds(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    train = png_folder(tmp_path / "train", 40, 0)
    out = tmp_path / "vae"
    assert cli("train", "vae", "--kind", "image", "--data", str(train), "--out", str(out), "--size", "32",
               "--latent", "6", "--widths", "8,16", "--hidden", "32", "--epochs", "1", "--min-steps", "0",
               "--batch", "16", "--select-k", "3", "--threads", "2", "--score", "kl_deviation") == 0
    a, b = png_folder(tmp_path / "day1", 30, 5), png_folder(tmp_path / "day2", 30, 6)
    assert cli("calibrate", "--model", str(out), "--data", str(a), str(b), "--false-alarms-per-1000", "5",
               "--blocks", "4") == 0
    card = read_card(out)
    assert card.calibration["frames"] == 60 and [s["path"] for s in card.calibration["sources"]] == [str(a), str(b)]
    alarm = card.alarm
    assert alarm["target_false_alarms_per_1000"] == 5.0 and alarm["heldout"]["frames"] == 60
    assert alarm["martingale_threshold"] >= np.log(200) and alarm["window"] >= 1
    printed = capsys.readouterr().out
    assert "coverage:" in printed and f"martingale window {alarm['window']}" in printed
    det = VaeDetector.from_model_dir(out)  # the stored thresholds are what a detector runs by default
    assert (det.monitor.cfg.window, det.monitor.cfg.martingale_threshold) == (alarm["window"],
                                                                              alarm["martingale_threshold"])
    # the score tolerance: measured between the blocks by default, fixed when given, refused below 1
    assert alarm["score_tolerance_measured"] and det.monitor.cfg.score_tolerance == alarm["score_tolerance"] >= 1.0
    assert cli("calibrate", "--model", str(out), "--data", str(a), str(b), "--score-tolerance", "1.5") == 0
    assert read_card(out).alarm["score_tolerance"] == 1.5 and not read_card(out).alarm["score_tolerance_measured"]
    with pytest.raises(SystemExit):
        cli("calibrate", "--model", str(out), "--data", str(a), "--score-tolerance", "0.5")


def test_calibrate_puts_each_part_of_a_fused_score_on_its_own_scale(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """`train vae` stores the photometric statistics of image models; `calibrate --score
    kl_texture_photometric` measures each part's tolerance and largest score on the nominal data, stores
    them and the fused calibration, and a detector then runs the fused score."""
    import cv2

    train = png_folder(tmp_path / "train", 40, 0)
    out = tmp_path / "vae"
    assert cli("train", "vae", "--kind", "image", "--data", str(train), "--out", str(out), "--size", "32",
               "--latent", "6", "--widths", "8,16", "--hidden", "32", "--epochs", "1", "--min-steps", "0",
               "--batch", "16", "--select-k", "3", "--threads", "2", "--score", "kl_texture") == 0
    assert read_card(out).photometric["features"] and "parts" not in read_card(out).photometric
    a, b = png_folder(tmp_path / "day1", 30, 5), png_folder(tmp_path / "day2", 30, 6)
    assert cli("calibrate", "--model", str(out), "--data", str(a), str(b), "--score", "kl_texture_photometric") == 0
    card = read_card(out)
    parts = card.photometric["parts"]
    assert card.score == card.calibration["score"] == "kl_texture_photometric"
    assert min(parts["tolerances"]) >= 1.0
    assert parts["scales"] == pytest.approx([k * m for k, m in zip(parts["tolerances"], parts["maxima"], strict=True)])
    assert max(card.calibration["scores"]) == pytest.approx(1.0 / min(parts["tolerances"]))
    assert card.alarm["score_tolerance"] == pytest.approx(min(parts["tolerances"]), abs=1e-4)
    assert "on their own scales" in capsys.readouterr().out
    assert f"photometric tolerance {parts['tolerances'][1]:.2f}" in card.score_description
    det = VaeDetector.from_model_dir(out)
    nominal = cv2.resize(cv2.imread(str(a / "00000.png"))[..., ::-1], (32, 32), interpolation=cv2.INTER_AREA)
    dark = (nominal // 3).astype(np.uint8)
    assert det.score_frame(dark).score > det.score_frame(nominal).score
    kl_only = tmp_path / "kl_only"
    assert cli("train", "vae", "--kind", "image", "--data", str(train), "--out", str(kl_only), "--size", "32",
               "--latent", "6", "--widths", "8,16", "--hidden", "32", "--epochs", "1", "--min-steps", "0",
               "--batch", "16", "--select-k", "3", "--threads", "2", "--score", "kl_deviation", "--max-frames", "20") == 0
    with pytest.raises(ValueError, match="photometric statistics fitted at training"):
        cli("calibrate", "--model", str(kl_only), "--data", str(a), "--score", "kl_texture_photometric")


def test_small_recordings_get_enough_optimizer_steps(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from ood_monitor.cli.train_cmd import schedule_for

    args = argparse.Namespace(val_split=0.1, batch=64, epochs=30, patience=5, kl_warmup=2.0, min_steps=800)
    small = schedule_for(200, args)  # 180 training frames: 3 steps an epoch, 90 steps by the defaults
    assert small["epochs"] * 3 >= 800 and small["patience"] == math.ceil(5 * 800 / 90)
    assert small["kl_warmup"] == pytest.approx(2.0 * 800 / 90)
    assert "small data: 200 frames give 3 steps an epoch" in capsys.readouterr().out
    assert schedule_for(5000, args) == {"epochs": 30, "patience": 5, "kl_warmup": 2.0}  # enough steps already
    assert capsys.readouterr().out == ""


def test_models_trained_on_the_demo_world_say_so_once_on_other_footage(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from ood_monitor.cli.provenance import DEMO_WORLD, data_origin, note_if_foreign

    demo = tmp_path / "demo"
    (demo / "bags" / "train").mkdir(parents=True)
    (demo / "dataset.json").write_text(json.dumps({"generator": "ood_monitor.demo_world.generator"}))
    own = png_folder(tmp_path / "own", 2, 0)
    assert data_origin(demo / "bags" / "train") == DEMO_WORLD and data_origin(own) == str(own.resolve())
    (demo / "dataset.json").write_text(json.dumps({"generator": "ood_monitor." + "data.demo"}))  # made earlier
    assert data_origin(demo / "bags" / "train") == DEMO_WORLD
    card_data = {"origin": DEMO_WORLD}
    assert note_if_foreign("models/vae_image", card_data, demo / "bags" / "train") is None
    assert "trained on the rendered demo world" in note_if_foreign("models/vae_image", card_data, own)
    assert note_if_foreign("models/vae_image", card_data, own) is None  # once
    assert note_if_foreign("models/vae_image", {}, own) is None  # a card without an origin says nothing
    assert capsys.readouterr().out.count("note:") == 1
