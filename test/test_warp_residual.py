"""The warp residual (core/flow.warp_residual) as ood/flow's third channel and the motion term fitted with
it (core/motion.MotionResidualStats): how well each flow field explains its next frame."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from ood_monitor.core.flow import FlowConfig, FlowEstimator, warp_residual
from ood_monitor.core.motion import (
    RESIDUAL_FEATURES,
    MotionResidualStats,
    MotionStats,
    fit_motion,
    motion_features,
    motion_from_dict,
    residual_features,
)
from ood_monitor.core.vae.dataset import auto_flow_scale, model_input

NS = 50_000_000  # 20 fps


def texture(seed: int = 0, size: int = 96) -> np.ndarray:
    """A smooth random grey texture DIS can track (uint8)."""
    noise = np.random.default_rng(seed).uniform(0, 255, (size // 4, size // 4)).astype(np.float32)
    return np.clip(cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)


def shifted(image: np.ndarray, dx: int) -> np.ndarray:
    return np.roll(image, dx, axis=1)


def test_flow_fields_carry_the_residual_by_default_and_not_when_off():
    frames = [shifted(texture(), 2 * i) for i in range(3)]
    with_residual, without = FlowEstimator(), FlowEstimator(FlowConfig(residual=False))
    for i, f in enumerate(frames):
        a, b = with_residual.update(f, i * NS).flow, without.update(f, i * NS).flow
    assert a.shape == (96, 96, 3) and a.dtype == np.float32 and b.shape == (96, 96, 2)
    np.testing.assert_array_equal(a[..., :2], b)  # the residual adds a channel, it changes no flow


def test_residual_is_small_where_the_flow_explains_the_motion_and_large_across_a_jump():
    """A steady 2 px pan: the next frame warped back matches the previous one; a different frame
    (a shuffled or dropped stretch of a drive) is not explained by any smooth flow."""
    est = FlowEstimator()
    base = texture(1)
    est.update(base, 0)
    steady = est.update(shifted(base, 2), NS).flow
    jump = est.update(texture(7), 2 * NS).flow
    inner = (slice(8, -8), slice(8, -8))  # borders: pixels that left the view
    assert steady[inner][..., 2].mean() < 4.0
    assert jump[inner][..., 2].mean() > 4 * steady[inner][..., 2].mean()
    assert np.median(steady[inner][..., 0]) == pytest.approx(2.0, abs=0.5)


def test_warp_residual_of_an_exact_flow_is_zero():
    prev = texture(2)
    nxt = shifted(prev, 3)
    flow = np.zeros(prev.shape + (2,), np.float32)
    flow[..., 0] = 3.0
    resid = warp_residual(prev, nxt, flow)
    assert resid.shape == prev.shape and resid.dtype == np.float32
    assert resid[:, :-3].max() == 0.0


def test_motion_term_with_the_residual_fits_scores_and_round_trips():
    rng = np.random.default_rng(0)
    flows = np.concatenate([rng.normal(1.0, 0.3, (60, 16, 16, 2)), rng.uniform(1, 4, (60, 16, 16, 1))],
                           axis=3).astype(np.float32)
    stats = fit_motion(flows)
    assert isinstance(stats, MotionResidualStats) and len(stats.FEATURES) == len(MotionStats.FEATURES) + 2
    np.testing.assert_allclose(stats.features(flows)[:, :-2], motion_features(flows[..., :2]))
    again = motion_from_dict(stats.to_dict())
    assert type(again) is MotionResidualStats
    np.testing.assert_allclose(again.distance(stats.features(flows)), stats.distance(stats.features(flows)))
    unexplained = flows[:5].copy()
    unexplained[..., 2] = 40.0  # same motion, frames the flow cannot explain
    assert again.distance(again.features(unexplained)).min() > np.percentile(stats.distance(stats.features(flows)), 99)
    assert type(fit_motion(flows[..., :2])) is MotionStats  # flow without the residual: the motion alone
    assert type(motion_from_dict(fit_motion(flows[..., :2]).to_dict())) is MotionStats


def test_a_repeated_frame_is_far_below_a_still_live_camera():
    """A still camera's residual is its noise (a grey level or two); a repeated frame's is exactly 0. On the
    log scale that gap is wider than the whole nominal spread, though the motion statistics are equal."""
    rng = np.random.default_rng(1)
    flows = np.concatenate([rng.normal(0.0, 0.05, (60, 16, 16, 2)), rng.uniform(1, 2.5, (60, 16, 16, 1))],
                           axis=3).astype(np.float32)
    stats = fit_motion(flows)
    repeated = flows[:3].copy()
    repeated[..., 2] = 0.0
    nominal = stats.distance(stats.features(flows))
    assert stats.distance(stats.features(repeated)).min() > 10 * nominal.max()


def test_a_card_with_the_earlier_linear_residual_is_refused_with_the_refit_command():
    rng = np.random.default_rng(2)
    card = fit_motion(rng.uniform(1, 3, (60, 8, 8, 3)).astype(np.float32)).to_dict()
    card["features"] = [*MotionStats.FEATURES, "resid_mean", "resid_p90"]
    with pytest.raises(ValueError, match="train motion"):
        motion_from_dict(card)


def test_a_residual_model_refuses_flow_without_the_residual():
    with pytest.raises(ValueError, match="flow_residual"):
        residual_features(np.zeros((2, 8, 8, 2), np.float32))


def test_model_input_and_flow_scale_read_only_u_and_v():
    flows = np.zeros((4, 8, 8, 3), np.float32)
    flows[..., 0], flows[..., 2] = 1.0, 200.0
    x = model_input(flows, "flow", 2.0)
    assert x.shape == (4, 2, 8, 8) and np.all(x[:, 0] == 0.5) and np.all(x[:, 1] == 0.0)
    assert auto_flow_scale(flows) == 1.0


@pytest.mark.slow
def test_train_motion_refits_a_flow_model_with_the_residual(demo_dataset, tmp_path):
    """`train motion` gives a flow model trained before the residual its motion term with it; the model
    then scores 32FC3-style flow (u, v, residual) and refuses flow without the residual, by name."""
    from ood_monitor.cli.main import main as cli
    from ood_monitor.core.detector import VaeDetector
    from ood_monitor.core.vae.io import load_encoder

    data, nominal = str(demo_dataset / "bags" / "test"), str(demo_dataset / "bags" / "calibration")
    model = tmp_path / "vae_flow"
    assert cli(["train", "vae", "--kind", "flow", "--data", data, "--out", str(model), "--size", "32", "--latent", "6",
                "--widths", "8,16", "--hidden", "32", "--epochs", "1", "--min-steps", "0", "--batch", "32",
                "--select-k", "3", "--threads", "2", "--score", "posterior_deviation"]) == 0
    assert cli(["train", "motion", "--model", str(model), "--data", data, "--score", "posterior_motion"]) == 0
    _, card = load_encoder(model)
    assert card.score == "posterior_motion" and card.motion["features"][-2:] == list(RESIDUAL_FEATURES)
    assert cli(["calibrate", "--model", str(model), "--data", nominal]) == 0
    detector = VaeDetector.from_model_dir(model)
    flow = np.random.default_rng(0).normal(0, 0.5, (32, 32, 3)).astype(np.float32)
    flow[..., 2] = np.abs(flow[..., 2]) * 4
    assert np.isfinite(detector.score_frame(flow).score)
    with pytest.raises(ValueError, match="flow_residual"):
        detector.score_frame(flow[..., :2].copy())


@pytest.mark.slow
def test_train_vae_flow_defaults_to_the_motion_term_and_falls_back_on_too_few_frames(demo_dataset, tmp_path, capsys):
    from ood_monitor.cli.main import main as cli
    from ood_monitor.core.vae.io import load_encoder

    data = str(demo_dataset / "bags" / "test")
    tiny = ["--size", "32", "--latent", "6", "--widths", "8,16", "--hidden", "32", "--epochs", "1", "--min-steps", "0",
            "--batch", "16", "--select-k", "3", "--threads", "2"]
    assert cli(["train", "vae", "--kind", "flow", "--data", data, "--out", str(tmp_path / "full"), *tiny]) == 0
    _, card = load_encoder(tmp_path / "full")
    assert card.score == "posterior_motion" and card.motion["features"][-2:] == list(RESIDUAL_FEATURES)
    assert cli(["train", "vae", "--kind", "flow", "--data", data, "--out", str(tmp_path / "few"), "--max-frames", "20",
                *tiny]) == 0
    assert load_encoder(tmp_path / "few")[1].score == "posterior_deviation"
    assert "too few for the motion statistics" in capsys.readouterr().out
