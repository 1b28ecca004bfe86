"""The texture term of the image detector's score: fine texture the frame has vs what its latent predicts.

Why: a β-VAE trained to reconstruct spends its latent on low-frequency content, so shifts that change
mostly fine texture barely move its posterior. On the demo test split the latent KL deviation scores
sensor noise 0.36, lens dirt 0.53, rain 0.64 and motion blur 0.66 AUROC, while the same frames' texture
is plainly different (noise and rain add fine structure, blur and lens dirt remove it). A blurred frame
even looks *more* typical to the latent than a nominal frame of an unseen drive: it maps towards the
centre of the training posteriors.

What: the frame's fine-texture map (local mean of |Laplacian of luma|, squashed to [0, 1) by
e / (e + softness)) pooled over a grid x grid layout, compared with the texture a linear head predicts
from the posterior (mu, logvar): the latent says what scene this is (sky, trail, vegetation and where),
the head what texture such a scene has on in-distribution data. The residual's Mahalanobis distance,
with the cross-validated residual covariance of the training frames, is the term. Fitted by ridge
regression on the training split at train time; at run time a few hundred multiply-adds and one
128x128 filter, on the encoder's outputs only (no decoder), with any backend.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass(frozen=True)
class TextureConfig:
    grid: int = 4  # the map is pooled to grid x grid cells (lens dirt is local: 1x1 misses it)
    window: int = 5  # px at model size over which |Laplacian| is averaged
    softness: float = 0.05  # e / (e + softness): nominal frames' mean lands near 0.4

    def __post_init__(self) -> None:
        if self.grid < 1 or self.window < 1 or self.window % 2 == 0 or self.softness <= 0:
            raise ValueError("texture grid >= 1, window odd >= 1 and softness > 0 are required")

    @classmethod
    def from_dict(cls, d: dict) -> TextureConfig:
        return cls(int(d["grid"]), int(d["window"]), float(d["softness"]))


def texture_map(rgb: np.ndarray, cfg: TextureConfig) -> np.ndarray:
    """One HxWx3 uint8 RGB frame -> its grid x grid fine-texture cells, flattened (grid^2,) float64."""
    gray = (rgb.astype(np.float32) @ LUMA) / np.float32(255.0)
    lap = np.abs(cv2.Laplacian(gray, cv2.CV_32F, ksize=1, borderType=cv2.BORDER_REPLICATE))
    energy = cv2.blur(lap, (cfg.window, cfg.window), borderType=cv2.BORDER_REPLICATE)
    squashed = energy / (energy + np.float32(cfg.softness))
    return cv2.resize(squashed, (cfg.grid, cfg.grid), interpolation=cv2.INTER_AREA).astype(np.float64).ravel()


def texture_features(frames: np.ndarray, cfg: TextureConfig) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB frames -> (N, grid^2) texture cells."""
    return np.stack([texture_map(f, cfg) for f in frames]) if len(frames) else np.zeros((0, cfg.grid ** 2))


def min_frames(latent: int, folds: int = 5) -> int:
    """Fewest training frames the head can be fitted on (more than its inputs and two per fold)."""
    return max(2 * latent + 1, 2 * folds) + 1


def latent_design(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """Regression inputs of the head: [mu, logvar, 1] per frame."""
    mu, logvar = np.asarray(mu, np.float64), np.asarray(logvar, np.float64)
    return np.concatenate([mu, logvar, np.ones((len(mu), 1))], axis=1)


def shrunk_precision(residual: np.ndarray, jitter: float = 1e-6) -> np.ndarray:
    """Inverse of the Ledoit-Wolf shrinkage covariance of (N, F) residuals (plus a tiny ridge)."""
    from sklearn.covariance import LedoitWolf

    cov = LedoitWolf(assume_centered=False).fit(residual).covariance_
    return np.linalg.inv(np.atleast_2d(cov) + jitter * np.eye(residual.shape[1]))


@dataclass(frozen=True)
class TextureHead:
    """texture ≈ [mu, logvar, 1] @ weights; score = residual' precision residual."""

    cfg: TextureConfig
    weights: np.ndarray  # (2D + 1, grid^2)
    precision: np.ndarray  # (grid^2, grid^2): inverse residual covariance on the training frames

    @classmethod
    def fit(cls, mu: np.ndarray, logvar: np.ndarray, texture: np.ndarray, cfg: TextureConfig,
            ridge: float = 50.0, folds: int = 5, jitter: float = 1e-6) -> TextureHead:
        """Ridge regression of the training frames' texture cells on their standardised posteriors.

        The residual covariance comes from `folds` contiguous cross-validation folds (neighbouring
        frames are near-duplicates), not from the fit's own residuals: in-sample residuals are smaller
        than on new drives, which made nominal frames of an unseen drive look strange (on the demo test
        split 10% of nominal frames had p < 0.05 with in-sample residuals, 0% with cross-validated
        ones, at equal AUROC). The covariance is Ledoit-Wolf shrunk: with a few hundred frames of a real
        camera the sample covariance of 16 cells is near-singular, and an unusual scene then scored
        ~1e12 through the near-zero directions. `ridge` acts on standardised inputs; the intercept is
        not shrunk."""
        x = latent_design(mu, logvar)
        n, d = x.shape
        if n < min_frames(mu.shape[1], folds):
            raise ValueError(f"the texture head needs at least {min_frames(mu.shape[1], folds)} training "
                             f"frames, got {n}")
        mean, std = x[:, :-1].mean(axis=0), x[:, :-1].std(axis=0) + 1e-6
        z = np.concatenate([(x[:, :-1] - mean) / std, x[:, -1:]], axis=1)
        penalty = ridge * np.eye(d)
        penalty[-1, -1] = 0.0

        def solve(rows: np.ndarray) -> np.ndarray:
            return np.linalg.solve(z[rows].T @ z[rows] + penalty, z[rows].T @ texture[rows])

        fold = np.arange(n) * folds // n
        residual = np.empty_like(texture, dtype=np.float64)
        for f in range(folds):
            held = fold == f
            residual[held] = texture[held] - z[held] @ solve(~held)
        w = solve(np.ones(n, bool))
        weights = np.concatenate([w[:-1] / std[:, None], w[-1:] - (mean / std) @ w[:-1]], axis=0)
        return cls(cfg, weights, shrunk_precision(residual, jitter))

    @classmethod
    def fit_frames(cls, mu: np.ndarray, logvar: np.ndarray, frames: np.ndarray,
                   cfg: TextureConfig | None = None) -> TextureHead:
        """`fit` on (N, H, W, 3) uint8 training frames and their posteriors."""
        cfg = cfg or TextureConfig()
        return cls.fit(mu, logvar, texture_features(frames, cfg), cfg)

    def __call__(self, mu: np.ndarray, logvar: np.ndarray, texture: np.ndarray) -> np.ndarray:
        """(N,) squared Mahalanobis distances of the texture residuals; one texture row is broadcast over
        N posteriors (MC-dropout samples of one frame)."""
        residual = np.asarray(texture, np.float64) - latent_design(mu, logvar) @ self.weights
        return np.einsum("ij,jk,ik->i", residual, self.precision, residual)

    def to_dict(self) -> dict:
        return {"grid": self.cfg.grid, "window": self.cfg.window, "softness": self.cfg.softness,
                "weights": self.weights.tolist(), "precision": self.precision.tolist()}

    @classmethod
    def from_dict(cls, d: dict, latent: int) -> TextureHead:
        cfg = TextureConfig.from_dict(d)
        weights, precision = np.asarray(d["weights"], np.float64), np.asarray(d["precision"], np.float64)
        cells = cfg.grid ** 2
        if weights.shape != (2 * latent + 1, cells) or precision.shape != (cells, cells):
            raise ValueError(f"texture head has weights {weights.shape} and precision {precision.shape}, "
                             f"expected {(2 * latent + 1, cells)} and {(cells, cells)}")
        return cls(cfg, weights, precision)
