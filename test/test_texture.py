"""The image detector's texture term (core/texture): the map, the head, and what it detects."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from ood_monitor.core.texture import TextureConfig, TextureHead, texture_features, texture_map


def scenes(n: int, seed: int = 0, size: int = 64) -> np.ndarray:
    """Smooth random scenes with a little fine texture: blurred noise at two scales."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        coarse = cv2.GaussianBlur(rng.random((size, size, 3), np.float32), (0, 0), 6.0)
        fine = cv2.GaussianBlur(rng.random((size, size, 3), np.float32), (0, 0), 0.8)
        img = 0.2 + 2.5 * (coarse - coarse.mean()) + 0.5 + 0.25 * (fine - 0.5)
        out.append(np.clip(img * 255, 0, 255).astype(np.uint8))
    return np.stack(out)


def posteriors(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stand-in posteriors that describe a scene coarsely (mean colour per quadrant), as a latent does."""
    h, w = frames.shape[1:3]
    q = [frames[:, a:a + h // 2, b:b + w // 2].mean(axis=(1, 2)) / 255.0 for a in (0, h // 2) for b in (0, w // 2)]
    mu = np.concatenate(q, axis=1)
    return mu, np.full_like(mu, -2.0)


def test_map_values_shape_and_validation() -> None:
    cfg = TextureConfig(grid=4)
    flat = np.full((32, 32, 3), 128, np.uint8)
    np.testing.assert_array_equal(texture_map(flat, cfg), np.zeros(16))
    checker = ((np.indices((32, 32)).sum(0) % 2) * 255).astype(np.uint8)[..., None].repeat(3, 2)
    # |Laplacian| of a full-contrast checkerboard is 4 everywhere inside: 4 / (4 + 0.05)
    assert texture_map(checker, cfg)[5] == pytest.approx(4 / 4.05, rel=1e-5)
    half = flat.copy()
    half[:, 16:] = checker[:, 16:]
    cells = texture_map(half, cfg).reshape(4, 4)
    # left smooth, right textured; the cells beside the border see it through the averaging window
    assert np.all(cells[:, 0] == 0) and np.all(cells[:, 3] > 0.9) and np.all(cells[:, 1] < cells[:, 2])
    assert texture_features(np.stack([flat, checker]), cfg).shape == (2, 16)
    with pytest.raises(ValueError, match="window odd"):
        TextureConfig(window=4)


def test_noise_raises_and_blur_lowers_the_texture_cells() -> None:
    frames = scenes(4)
    rng = np.random.default_rng(1)
    noisy = np.clip(frames + rng.normal(0, 12, frames.shape), 0, 255).astype(np.uint8)
    blurred = np.stack([cv2.blur(f, (5, 1)) for f in frames])
    cfg = TextureConfig()
    base, up, down = (texture_features(x, cfg).mean() for x in (frames, noisy, blurred))
    assert up > base + 0.1 and down < base - 0.1


def test_head_learns_the_texture_of_a_scene_and_flags_what_does_not_fit() -> None:
    train, test = scenes(300, seed=2), scenes(60, seed=3)
    head = TextureHead.fit_frames(*posteriors(train), train)
    nominal = head(*posteriors(test), texture_features(test, head.cfg))
    # about chi-square with 16 degrees of freedom on unseen nominal scenes
    assert 8 < np.median(nominal) < 40
    rng = np.random.default_rng(4)
    noisy = np.clip(test + rng.normal(0, 12, test.shape), 0, 255).astype(np.uint8)
    blurred = np.stack([cv2.blur(f, (7, 1)) for f in test])
    for shifted in (noisy, blurred):  # the scene (posterior) is the same, its texture is not
        scores = head(*posteriors(shifted), texture_features(shifted, head.cfg))
        assert np.percentile(scores, 10) > np.percentile(nominal, 99)


def test_one_texture_row_is_broadcast_over_samples_and_round_trip() -> None:
    train = scenes(100, seed=5)
    mu, logvar = posteriors(train)
    head = TextureHead.fit_frames(mu, logvar, train)
    row = texture_features(train[:1], head.cfg)
    samples = mu[:1] + np.random.default_rng(6).normal(0, 0.01, (30, mu.shape[1]))
    out = head(samples, np.repeat(logvar[:1], 30, 0), row)
    assert out.shape == (30,) and len(np.unique(out)) == 30
    again = TextureHead.from_dict(head.to_dict(), latent=mu.shape[1])
    np.testing.assert_allclose(again(mu, logvar, texture_features(train, head.cfg)),
                               head(mu, logvar, texture_features(train, head.cfg)))
    with pytest.raises(ValueError, match="texture head has weights"):
        TextureHead.from_dict(head.to_dict(), latent=mu.shape[1] + 1)
    with pytest.raises(ValueError, match="needs at least"):
        TextureHead.fit_frames(mu[:5], logvar[:5], train[:5])
