"""The flow detector's motion term: global camera-motion statistics against the training drives'."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ood_monitor.core.motion import (
    CONTRACTION_WEIGHT,
    EXPANSION,
    FEATURES,
    MotionStats,
    contraction,
    min_frames,
    motion_features,
)
from ood_monitor.core.nonconformity import Nonconformity

H = W = 32


def field(kind: str, speed: float = 1.0, n: int = 1, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """(n, H, W, 2) flows: forward motion (expansion), reversing (contraction), a pan, or a frozen camera."""
    y, x = np.mgrid[:H, :W].astype(np.float32)
    rx, ry = (x - (W - 1) / 2) / (W / 2), (y - (H - 1) / 2) / (H / 2)
    base = {"forward": np.stack([rx, ry], -1), "reverse": -np.stack([rx, ry], -1),
            "pan": np.stack([np.ones_like(rx), np.zeros_like(ry)], -1), "frozen": np.zeros((H, W, 2), np.float32),
            "turn": np.stack([-ry, rx], -1)}[kind] * speed
    rng = np.random.default_rng(seed)
    return (base[None] + noise * rng.normal(size=(n, H, W, 2))).astype(np.float32)


def test_features_read_the_camera_motion() -> None:
    f = dict(zip(FEATURES, motion_features(field("forward", 2.0))[0], strict=True))
    assert f["expansion"] > 0.5 and abs(f["rotation"]) < 1e-6 and abs(f["mean_u"]) < 1e-6
    assert motion_features(field("reverse", 2.0))[0, FEATURES.index("expansion")] == pytest.approx(-f["expansion"])
    assert motion_features(field("turn"))[0, FEATURES.index("rotation")] > 0.3
    assert motion_features(field("pan"))[0, FEATURES.index("mean_u")] == pytest.approx(1.0)
    assert np.all(motion_features(field("frozen")) == 0.0)
    with pytest.raises(ValueError, match=r"\(N, H, W, 2\)"):
        motion_features(np.zeros((2, H, W, 4), np.float32))  # 3 channels are flow with the warp residual


def reference_features(flows: np.ndarray) -> np.ndarray:
    """FEATURES pixel by pixel, as written in their definition (the module computes them from sums)."""
    out = []
    for f in flows[..., :2].astype(np.float64):
        h, w, _ = f.shape
        y, x = np.mgrid[:h, :w]
        rx, ry = (x - (w - 1) / 2) / (w / 2), (y - (h - 1) / 2) / (h / 2)
        u, v, speed = f[..., 0], f[..., 1], np.hypot(f[..., 0], f[..., 1])
        quads = [f[i * h // 2:(i + 1) * h // 2, j * w // 2:(j + 1) * w // 2].mean(axis=(0, 1)) for i in (0, 1) for j in (0, 1)]
        out.append([u.mean(), v.mean(), speed.mean(), np.percentile(speed, 90), (u * rx + v * ry).mean(),
                    (v * rx - u * ry).mean(), *np.concatenate(quads)])
    return np.array(out)


@pytest.mark.parametrize("shape", [(3, 32, 32, 2), (2, 7, 9, 3), (1, 5, 6, 2)])
def test_features_equal_their_pixelwise_definition(shape: tuple[int, ...]) -> None:
    flows = np.random.default_rng(sum(shape)).normal(0, 2, shape).astype(np.float32)
    np.testing.assert_allclose(motion_features(flows), reference_features(flows), rtol=1e-5, atol=1e-6)


def test_statistics_flag_frozen_reversing_and_jolts_but_not_ordinary_driving() -> None:
    train = np.concatenate([field("forward", s, 1, noise=0.2, seed=i) for i, s in
                            enumerate(np.random.default_rng(0).uniform(1.5, 2.5, 200))])
    stats = MotionStats.fit_flows(train)
    score = lambda flows: stats(np.zeros((len(flows), 1)), None, stats.features(flows))  # noqa: E731
    nominal = score(field("forward", 2.0, 20, noise=0.2, seed=99))
    for strange in (field("frozen", n=5), field("reverse", 2.0, 5, noise=0.2), field("forward", 6.0, 5, noise=0.2)):
        assert score(strange).min() > 5 * np.percentile(nominal, 95)
    again = MotionStats.from_dict(stats.to_dict())
    assert np.allclose(again.precision, stats.precision) and np.allclose(again.mean, stats.mean)
    with pytest.raises(ValueError, match="at least"):
        MotionStats.fit_flows(train[: min_frames() - 1])


def forward_drive() -> MotionStats:
    """A camera trained driving forward at speeds 1.5-2.5 (expansion well above 0)."""
    return MotionStats.fit_flows(np.concatenate([field("forward", s, 1, noise=0.2, seed=i) for i, s in
                                                 enumerate(np.random.default_rng(0).uniform(1.5, 2.5, 200))]))


def test_contraction_part_adds_weight_below_the_training_expansion_only() -> None:
    stats = forward_drive()
    without = dataclasses.replace(stats, expansion_sd=None)  # a card fitted before the part
    assert stats.expansion_sd > 0.0
    feats = stats.features(np.concatenate([field("reverse", 2.0, 3, noise=0.2), field("forward", 2.4, 3, noise=0.2)]))
    expected = CONTRACTION_WEIGHT * ((stats.mean[EXPANSION] - feats[:3, EXPANSION]) / stats.expansion_sd) ** 2
    np.testing.assert_allclose(stats.distance(feats[:3]) - without.distance(feats[:3]), expected, rtol=1e-9)
    assert np.all(feats[3:, EXPANSION] > stats.mean[EXPANSION])  # faster forward: above the mean, nothing added
    np.testing.assert_array_equal(stats.distance(feats[3:]), without.distance(feats[3:]))
    assert contraction(np.array([-1.0, 0.5, 2.0]), 0.5, 0.5).tolist() == [9.0, 0.0, 0.0]


def test_contraction_part_round_trips_and_old_cards_score_as_calibrated() -> None:
    stats = forward_drive()
    card = stats.to_dict()
    again = MotionStats.from_dict(card)
    assert again.expansion_sd == pytest.approx(stats.expansion_sd)
    old = {k: v for k, v in card.items() if k != "expansion_sd"}
    reverse = stats.features(field("reverse", 2.0, 2, noise=0.2))
    assert MotionStats.from_dict(old).expansion_sd is None
    assert np.all(MotionStats.from_dict(old).distance(reverse) < again.distance(reverse))
    for bad in (0.0, -1.0, float("nan"), "wide"):
        with pytest.raises(ValueError, match="expansion_sd"):
            MotionStats.from_dict({**card, "expansion_sd": bad})


def test_posterior_motion_adds_the_term_to_the_posterior_deviation() -> None:
    stats = {"mu_mean": [0.0, 0.0], "mu_std": [1.0, 1.0], "logvar_mean": [0.0, 0.0], "logvar_std": [1.0, 1.0],
             "kl_mean": [1.0, 1.0], "kl_std": [1.0, 1.0]}
    motion = MotionStats.fit_flows(np.concatenate([field("forward", 2.0, 40, noise=0.3, seed=1)]))
    plain = Nonconformity.from_stats("posterior_deviation", [0, 1], stats)
    both = Nonconformity.from_stats("posterior_motion", [0, 1], stats, motion=motion)
    mu, logvar = np.array([[1.0, 0.0]]), np.zeros((1, 2))
    flows = field("frozen")
    assert both(mu, logvar, both.frame_features(flows))[0] == pytest.approx(
        plain(mu, logvar)[0] + motion(mu, logvar, motion.features(flows))[0])
    with pytest.raises(ValueError, match="needs the motion statistics"):
        Nonconformity.from_stats("posterior_motion", [0, 1], stats)
