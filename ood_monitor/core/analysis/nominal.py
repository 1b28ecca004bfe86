"""What the synthesizer gets wrong on nominal frames, so that the analysis discounts it.

A re-synthesis is never exact: trees, grass texture and the image border come back different on every
frame, anomaly or not. The published analysis (docs/methods.md#segment-pooling) thresholds the raw
discrepancy, so these regions compete with real anomalies: on the demo data the false-positive objects of F*
are vegetation and grass components, and small anomalies on the trail sit at the same raw level.
`NominalDiscrepancy` is fitted on nominal frames (a calibration split, synthesized by the deployed
synthesizer) and turns the discrepancy into a standardized excess over what is usual

    n = clip((z_loc + z_app) / (2 * z_scale), 0, 1),
    z_loc = (d - mean_xy) / std_xy            per pixel position (the camera is mounted: sky on top,
                                              ground below, a border the synthesizer always blurs)
    z_app = (d - mean_k) / std_k              per appearance cluster k (k-means on blurred CIE Lab colour:
                                              vegetation, grass, trail, sky ... wherever they are)

so a pixel counts as anomalous when its discrepancy is high *for that place and that kind of surface*.
z_scale is calibrated like confidence_gain (scripts/tune_analysis.py --current-only on tuning seeds): 23
puts the decision point at confidence 0.5 with the shipped gain, as without statistics. Position-only or
appearance-only normalisation each gives part of the gain, so both are used (figures:
docs/benchmarks.md#anomaly-masks).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

FORMAT = "ood_monitor.analysis_nominal/1"
CONFIG, WEIGHTS = "config.json", "model.safetensors"
ARRAYS = ("loc_mean", "loc_std", "centers", "cluster_mean", "cluster_std")


class NominalStatsError(ValueError):
    """A nominal-statistics folder that is missing, corrupt or does not fit."""


def lab_pixels(image: np.ndarray, blur_sigma: float = 1.0) -> np.ndarray:
    """(H*W, 3) float32 CIE Lab (OpenCV's 8-bit scaling) of a blurred RGB uint8 image."""
    smooth = cv2.GaussianBlur(image, (0, 0), blur_sigma) if blur_sigma > 0 else image
    return cv2.cvtColor(smooth, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float32)


@dataclass
class NominalDiscrepancy:
    """Per-position and per-appearance-cluster mean/std of the discrepancy on nominal frames."""

    loc_mean: np.ndarray  # (H, W) float32
    loc_std: np.ndarray  # (H, W) float32, > 0
    centers: np.ndarray  # (K, 3) float32 Lab cluster centres
    cluster_mean: np.ndarray  # (K,) float32
    cluster_std: np.ndarray  # (K,) float32, > 0
    z_scale: float = 23.0  # z units that map to 1.0: with confidence_gain 2.5 the tuned decision point is 0.5
    info: dict = field(default_factory=dict)
    _loc_cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        k = len(self.centers)
        if self.loc_mean.ndim != 2 or self.loc_std.shape != self.loc_mean.shape:
            raise NominalStatsError(f"position maps must be two equal HxW arrays, got {self.loc_mean.shape} "
                                    f"and {self.loc_std.shape}")
        if self.centers.shape != (k, 3) or self.cluster_mean.shape != (k,) or self.cluster_std.shape != (k,) or k < 1:
            raise NominalStatsError(f"cluster arrays disagree: centers {self.centers.shape}, mean "
                                    f"{self.cluster_mean.shape}, std {self.cluster_std.shape}")
        if min(self.loc_std.min(), self.cluster_std.min()) <= 0 or self.z_scale <= 0:
            raise NominalStatsError("standard deviations and z_scale must be positive")
        if not all(np.isfinite(a).all() for a in (self.loc_mean, self.loc_std, self.centers, self.cluster_mean,
                                                    self.cluster_std)):
            raise NominalStatsError("nominal statistics contain NaN or inf")

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) the position maps were fitted at."""
        return self.loc_mean.shape[1], self.loc_mean.shape[0]

    def clusters(self, image: np.ndarray) -> np.ndarray:
        """Appearance cluster of every pixel: (H, W) int."""
        lab = lab_pixels(image)
        # ‖x - c‖² = ‖x‖² - 2x·c + ‖c‖², and ‖x‖² is the same for every centre: one (N, 3) x (3, K) product
        # instead of an (N, K, 3) difference array (5x faster at 128x128)
        dist = (self.centers ** 2).sum(1)[None] - 2.0 * (lab @ self.centers.T)
        return dist.argmin(1).reshape(image.shape[:2])

    def _position_maps(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """Position statistics at another resolution: resized (positions are relative to the frame)."""
        if (w, h) == self.size:
            return self.loc_mean, self.loc_std
        if (h, w) not in self._loc_cache:
            self._loc_cache[(h, w)] = tuple(cv2.resize(a, (w, h), interpolation=cv2.INTER_LINEAR)
                                            for a in (self.loc_mean, self.loc_std))
        return self._loc_cache[(h, w)]

    def __call__(self, image: np.ndarray, disc: np.ndarray) -> np.ndarray:
        """Normalized discrepancy (H, W) float32 in [0, 1] of `image`'s raw discrepancy map `disc`."""
        h, w = disc.shape
        mean, std = self._position_maps(h, w)
        k = self.clusters(image)
        z = (disc - mean) / std + (disc - self.cluster_mean[k]) / self.cluster_std[k]
        return np.clip(z / np.float32(2.0 * self.z_scale), 0.0, 1.0).astype(np.float32)

    # ------------------------------------------------------------------------------------------ fit

    @classmethod
    def fit(cls, pairs: Iterable[tuple[np.ndarray, np.ndarray]], k: int = 12, z_scale: float = 23.0,
            min_std: float = 1e-3, seed: int = 0, info: dict | None = None) -> NominalDiscrepancy:
        """Fit from (image, raw discrepancy) pairs of nominal frames, all of one size."""
        images, discs = [], []
        for image, disc in pairs:
            if discs and disc.shape != discs[0].shape:
                raise ValueError(f"nominal frames must share one size, got {disc.shape} and {discs[0].shape}")
            images.append(image)
            discs.append(np.asarray(disc, np.float32))
        if len(discs) < 2:
            raise ValueError(f"fitting nominal statistics needs at least 2 frames, got {len(discs)}")
        d = np.stack(discs)
        lab = np.concatenate([lab_pixels(i) for i in images])
        rng = np.random.default_rng(seed)
        sample = lab[rng.choice(len(lab), min(len(lab), 200_000), replace=False)]
        cv2.setRNGSeed(seed)
        criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 30, 0.5)
        _, _, centers = cv2.kmeans(sample, k, None, criteria, 3, cv2.KMEANS_PP_CENTERS)
        stats = cls(d.mean(0), np.maximum(d.std(0), min_std), centers.astype(np.float32),
                    np.ones(k, np.float32), np.ones(k, np.float32), z_scale, dict(info or {}))
        labels = np.stack([stats.clusters(i) for i in images])
        overall = (float(d.mean()), max(float(d.std()), min_std))
        for c in range(k):
            v = d[labels == c]
            mean, std = (float(v.mean()), max(float(v.std()), min_std)) if v.size >= 100 else overall
            stats.cluster_mean[c], stats.cluster_std[c] = mean, std
        stats.info.update(frames=len(d), clusters=k)
        return stats

    # ------------------------------------------------------------------------------------------ files

    def save(self, out_dir: str | Path) -> Path:
        from safetensors.numpy import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file({n: np.ascontiguousarray(getattr(self, n), np.float32) for n in ARRAYS}, str(out / WEIGHTS))
        digest = hashlib.sha256((out / WEIGHTS).read_bytes()).hexdigest()
        card = {"format": FORMAT, "width": self.size[0], "height": self.size[1], "clusters": len(self.centers),
                "z_scale": self.z_scale, "weights_sha256": digest, **self.info}
        (out / CONFIG).write_text(json.dumps(card, indent=1) + "\n", encoding="utf-8")
        return out

    @classmethod
    def load(cls, model_dir: str | Path) -> NominalDiscrepancy:
        """Load a folder written by `save`; NominalStatsError says which file and what to run."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        folder = Path(model_dir)
        hint = f"run: ood-monitor calibrate-analysis --out {folder}"
        try:
            card = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise NominalStatsError(f"no nominal statistics at {folder / CONFIG} ({hint})") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise NominalStatsError(f"{folder / CONFIG} is not valid JSON ({hint})") from exc
        if not isinstance(card, dict) or card.get("format") != FORMAT:
            raise NominalStatsError(f"{folder / CONFIG} is not a nominal-statistics card (format {FORMAT}; {hint})")
        try:
            data = (folder / WEIGHTS).read_bytes()
            if card.get("weights_sha256") and hashlib.sha256(data).hexdigest() != card["weights_sha256"]:
                raise NominalStatsError(f"{folder / WEIGHTS} does not match its config.json hash ({hint})")
            arrays = load_file(str(folder / WEIGHTS))
        except FileNotFoundError as exc:
            raise NominalStatsError(f"missing {folder / WEIGHTS} ({hint})") from exc
        except (SafetensorError, OSError) as exc:
            raise NominalStatsError(f"{folder / WEIGHTS} is corrupt: {exc} ({hint})") from exc
        missing = [n for n in ARRAYS if n not in arrays]
        if missing:
            raise NominalStatsError(f"{folder / WEIGHTS} lacks {', '.join(missing)} ({hint})")
        info = {k: v for k, v in card.items() if k not in ("format", "width", "height", "clusters", "z_scale",
                                                           "weights_sha256")}
        return cls(*(arrays[n].astype(np.float32) for n in ARRAYS), z_scale=float(card.get("z_scale", 23.0)),
                   info=info)


DEFAULT_DIR = "analysis_nominal"  # under the models folder


def load_nominal(spec: str, models_dir: str | Path = "models") -> tuple[NominalDiscrepancy | None, str]:
    """The analysis node's `nominal_stats` parameter -> (statistics or None, what is used and why).

    auto: <models_dir>/analysis_nominal when it exists, else off; none or empty: off; anything else: that
    folder, which must load (a configured file that is missing or corrupt is an error, never skipped)."""
    if spec in ("", "none"):
        return None, "off (nominal_stats: none)"
    from ood_monitor.core.model_dirs import resolve_model_dir

    if spec == "auto":
        folder = resolve_model_dir(Path(models_dir) / DEFAULT_DIR)
        if not (folder / CONFIG).is_file():
            return None, f"off: no {folder} (ood-monitor calibrate-analysis writes it)"
    else:
        folder = resolve_model_dir(spec)
    stats = NominalDiscrepancy.load(folder)
    return stats, f"{folder} ({stats.info.get('frames', '?')} nominal frames, {len(stats.centers)} clusters)"


def settings_mismatch(stats: NominalDiscrepancy, cfg) -> str:
    """'' when `stats` were fitted with discrepancy settings `cfg` (a DiscrepancyConfig), else what differs:
    statistics of another discrepancy no longer describe the nominal level of this one."""
    fitted = stats.info.get("discrepancy")
    if not isinstance(fitted, dict):
        return ""
    now = vars(cfg)
    diff = [f"{k} {fitted[k]} -> {now[k]}" for k in sorted(fitted) if k in now and fitted[k] != now[k]]
    return ", ".join(diff)
