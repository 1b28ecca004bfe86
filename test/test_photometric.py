"""The image detector's photometric part and the fused score: global light, colour and sharpness against
the training frames', each part of the fused score on its own calibrated scale."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from ood_monitor.core.alarm_calibration import (
    AlarmCalibrationError,
    AlarmTarget,
    alarm_blocks,
    calibrate_alarms,
    calibrate_fused,
    fuse_parts,
)
from ood_monitor.core.conformal import p_values
from ood_monitor.core.nonconformity import Nonconformity
from ood_monitor.core.photometric import FEATURES, PhotometricStats, photometric_features
from ood_monitor.core.structure import StructureStats, structure_features

S = 64


def scenes(n: int, seed: int = 0) -> np.ndarray:
    """(n, S, S, 3) uint8 frames of one textured scene under slightly varying light."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:S, :S]
    base = 110 + 60 * np.sin(xx / 3.0) * np.cos(yy / 4.0)
    colour = np.stack([base, 0.8 * base + 20, 0.6 * base + 30], -1)
    frames = [colour * rng.uniform(0.95, 1.05) + rng.normal(0, 3, colour.shape) for _ in range(n)]
    return np.clip(frames, 0, 255).astype(np.uint8)


def feature(frames: np.ndarray, name: str) -> np.ndarray:
    return photometric_features(frames)[:, FEATURES.index(name)]


def test_statistics_move_the_way_the_shifts_do() -> None:
    frame = scenes(1)
    brighter = np.clip(frame.astype(int) + 60, 0, 255).astype(np.uint8)
    blurred = cv2.GaussianBlur(frame[0], (7, 7), 3)[None]
    fogged = (0.5 * frame + 0.5 * 220).astype(np.uint8)
    assert feature(brighter, "mean_g") > feature(frame, "mean_g") + 0.15
    assert feature(blurred, "log_sharpness") < feature(frame, "log_sharpness") - 1.0
    assert feature(fogged, "dark_channel") > feature(frame, "dark_channel") + 0.2
    assert feature(fogged, "luma_std") < 0.6 * feature(frame, "luma_std")
    with pytest.raises(ValueError, match="uint8 RGB"):
        photometric_features(np.zeros((2, S, S, 3), np.float32))


def test_edge_coherence_falls_under_an_elastic_warp() -> None:
    """A random smooth displacement of about a pixel (what imagecorruptions' elastic transform does) makes
    straight edges wavy: light and colour barely move, the structure tensor sees it."""
    yy, xx = np.mgrid[:S, :S].astype(np.float32)
    stripes = np.clip(np.stack([128 + 80 * np.sign(np.sin((xx + 0.3 * yy) / 4.0))] * 3, -1), 0, 255).astype(np.uint8)
    rng = np.random.default_rng(0)
    dx, dy = (cv2.GaussianBlur(rng.uniform(-1, 1, (S, S)).astype(np.float32), (0, 0), 1.0) * 6 for _ in range(2))
    warped = cv2.remap(stripes, xx + dx, yy + dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    (edge, _), (wavy, _) = structure_features(np.stack([stripes, warped]))
    assert edge > 0.85 and wavy < edge - 0.15
    assert abs(feature(warped[None], "mean_g") - feature(stripes[None], "mean_g")) < 0.02
    with pytest.raises(ValueError, match="uint8 RGB"):
        structure_features(np.zeros((2, S, S, 3), np.float32))


def test_statistics_flag_shifted_frames_and_survive_the_card() -> None:
    stats = PhotometricStats.fit_frames(scenes(120))
    nominal = stats.distance(stats.features(scenes(20, seed=1)))
    dark = stats.distance(stats.features((scenes(20, seed=2) * 0.5).astype(np.uint8)))
    assert nominal.max() < dark.min()
    again = PhotometricStats.from_dict(stats.to_dict())
    np.testing.assert_allclose(again.distance(again.features(scenes(3))), stats.distance(stats.features(scenes(3))))
    with pytest.raises(ValueError, match="photometric statistics need at least"):
        PhotometricStats.fit_frames(scenes(PhotometricStats.min_frames() - 1))
    with pytest.raises(ValueError, match="expected"):
        PhotometricStats.from_dict({**stats.to_dict(), "features": ["mean_r"]})


def test_photometric_score_alone() -> None:
    stats = PhotometricStats.fit_frames(scenes(60))
    dims, n = (0, 1), 6
    center, scale = (0.5, 0.5), (0.2, 0.2)
    main = Nonconformity("kl_deviation", dims, center, scale)
    with pytest.raises(ValueError, match="texture head"):
        Nonconformity("kl_texture_photometric", dims, center, scale, photometric=stats, part_scales=(4.0, 10.0))
    photo = Nonconformity("photometric", dims, photometric=stats)
    rng = np.random.default_rng(0)
    mu, logvar = rng.normal(size=(n, 4)), rng.normal(-1, 0.1, size=(n, 4))
    frames = scenes(n, seed=5)
    np.testing.assert_allclose(photo(mu, logvar, photo.frame_features(frames)),
                               stats.distance(stats.features(frames)))
    assert main(mu, logvar).shape == (n,)


def test_fused_score_is_the_larger_part_on_its_own_scale() -> None:
    from ood_monitor.core.texture import TextureHead

    frames = scenes(80)
    rng = np.random.default_rng(1)
    mu, logvar = rng.normal(size=(80, 4)), rng.normal(-1, 0.1, size=(80, 4))
    head = TextureHead.fit_frames(mu, logvar, frames)
    stats = PhotometricStats.fit_frames(frames)
    dims, center, scale = (0, 1), (0.5, 0.5), (0.2, 0.2)
    kw = dict(texture=head, photometric=stats)
    main = Nonconformity("kl_texture", dims, center, scale, texture=head)
    fused = Nonconformity("kl_texture_photometric", dims, center, scale, **kw, part_scales=(4.0, 10.0))
    test = scenes(5, seed=9)
    m, p = main(mu[:5], logvar[:5], main.frame_features(test)), stats.distance(stats.features(test))
    np.testing.assert_allclose(fused(mu[:5], logvar[:5], fused.frame_features(test)), np.maximum(m / 4.0, p / 10.0))
    # MC dropout: one frame's features broadcast over several posterior samples
    one = fused(mu[:7], logvar[:7], fused.frame_features(test[:1]))
    assert one.shape == (7,) and np.all(one >= p[0] / 10.0 - 1e-12)
    with pytest.raises(ValueError, match="2 positive part scales"):
        Nonconformity("kl_texture_photometric", dims, center, scale, **kw)
    # the third part: local structure, on its own scale beside the other two
    structure = StructureStats.fit_frames(frames)
    three = Nonconformity("kl_texture_photometric_structure", dims, center, scale, **kw, structure=structure,
                          part_scales=(4.0, 10.0, 2.0))
    s = structure.distance(structure.features(test))
    np.testing.assert_allclose(three(mu[:5], logvar[:5], three.frame_features(test)),
                               np.max([m / 4.0, p / 10.0, s / 2.0], axis=0))
    assert three(mu[:7], logvar[:7], three.frame_features(test[:1])).shape == (7,)
    with pytest.raises(ValueError, match="structure statistics"):
        Nonconformity("kl_texture_photometric_structure", dims, center, scale, **kw, part_scales=(4.0, 10.0, 2.0))
    with pytest.raises(ValueError, match="3 positive part scales"):
        Nonconformity("kl_texture_photometric_structure", dims, center, scale, **kw, structure=structure,
                      part_scales=(4.0, 10.0))


def test_each_part_keeps_its_own_tolerance() -> None:
    """A part that drifts 3x between blocks gets tolerance 3; a steady one ~1. A frame passes the fused
    calibration's range exactly when one part passes its tolerance times its largest nominal score."""
    rng = np.random.default_rng(0)
    n = 200
    drifting = rng.uniform(1, 2, n) * np.where(np.arange(n) < 160, 1.0, 3.0)
    steady = rng.uniform(1, 2, n)
    target = AlarmTarget(blocks=5, score_tolerance=0.0)
    blocks = alarm_blocks(n, None, target)[1]
    fusion = fuse_parts(np.column_stack([drifting, steady]), blocks, target)
    assert fusion.tolerances[0] == pytest.approx(drifting[160:].max() / drifting[:160].max())
    assert fusion.tolerances[1] < 1.2 and fusion.tolerance == min(fusion.tolerances)
    cal = np.sort(fusion.fuse(np.column_stack([drifting, steady])))

    def beyond(part: int, factor: float) -> bool:
        row = np.array([[0.0, 0.0]])
        row[0, part] = factor * fusion.tolerances[part] * fusion.maxima[part]
        return bool(p_values(cal, fusion.fuse(row), 1e-5, 0.0, fusion.tolerance)[0] < 1.0 / (cal.size + 1) - 1e-12
                    or fusion.fuse(row)[0] / fusion.tolerance > cal[-1])

    assert beyond(1, 1.1) and not beyond(1, 0.9)  # the steady part alarms just past its own narrow margin
    assert beyond(0, 1.1) and not beyond(0, 0.9)  # the drifting part only past its wide one
    fixed = fuse_parts(np.column_stack([drifting, steady]), blocks, AlarmTarget(score_tolerance=2.0))
    assert fixed.tolerances == (2.0, 2.0)
    with pytest.raises(AlarmCalibrationError, match=r"\(N, parts >= 2\)"):
        fuse_parts(drifting, blocks, target)
    three = fuse_parts(np.column_stack([drifting, steady, 2 * steady]), blocks, target)
    assert len(three.scales) == 3 and three.maxima[2] == pytest.approx(2 * steady.max())


def test_held_out_blocks_get_part_scales_fitted_without_them() -> None:
    """calibrate's held-out check fits the part scales without the block it checks: a last stretch whose
    second part jumps 3x past the others is strange to the other blocks, though scales fitted on every
    block (that stretch included) would have hidden it."""
    rng = np.random.default_rng(1)
    n = 200
    steady = rng.uniform(1, 2, n)
    jump = rng.uniform(1, 2, n) * np.where(np.arange(n) < 160, 1.0, 3.0)
    parts = np.column_stack([steady, jump])
    target = AlarmTarget(blocks=5, score_tolerance=0.0, tail="pareto", p_floor=1e-5)
    fusion, scores, fixed, honest = calibrate_fused(parts, None, target)
    np.testing.assert_allclose(scores, fusion.fuse(parts))
    assert fixed.score_tolerance == pytest.approx(fusion.tolerance, abs=1e-4)
    optimistic = calibrate_alarms(scores, None, fixed)  # scales fitted on every block, the held-out one too
    assert honest.block_coverage[-1] > 0.5 > optimistic.block_coverage[-1]
