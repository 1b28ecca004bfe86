"""Image corruptions from public libraries (imagecorruptions, albumentations) for the real-footage benchmark.

The demo world's shifts are our own code; a benchmark that only tests what we wrote ourselves measures our
own blind spots. These come from the libraries used by the robustness literature instead: the ImageNet-C
set (Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations", arXiv:1903.12261, packaged as `imagecorruptions` by Michaelis et al., arXiv:1907.07484)
and the weather/lighting transforms of Albumentations (Buslaev et al., arXiv:1809.06839). Both libraries
are imported only when a corruption is applied, so nothing else in the package needs them.
"""
from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# ImageNet-C corruptions that run with numpy 2 / scikit-image 0.2x (fog, glass and gaussian blur call
# removed APIs in imagecorruptions 1.1.2; Albumentations supplies fog instead).
IMAGECORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "defocus_blur", "motion_blur",
    "zoom_blur", "snow", "frost", "brightness", "contrast", "elastic_transform", "pixelate",
    "jpeg_compression", "spatter", "saturate",
)
ALBUMENTATIONS = ("fog", "rain", "sun_flare", "shadow", "iso_noise")
# Sensor noise is drawn anew every frame on a real camera; the rest (frost and spatter on the lens, a
# shadow, a flare, fog banks, rain and snow layers, warps) stays where it is for a few frames. Redrawn every
# frame, those flicker, and the flow detector scored the flicker rather than the corruption.
PER_FRAME = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "iso_noise")
DEFAULT_CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "motion_blur", "zoom_blur", "snow",
    "frost", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression", "spatter",
    "fog", "rain", "sun_flare", "shadow", "iso_noise",
)


@dataclass(frozen=True)
class Corruption:
    """One named corruption at one severity; `apply` is deterministic in (image, seed)."""

    name: str
    severity: int = 3

    def __post_init__(self) -> None:
        if self.name not in IMAGECORRUPTIONS + ALBUMENTATIONS:
            raise ValueError(f"unknown corruption {self.name!r}; choose from "
                             f"{', '.join(IMAGECORRUPTIONS + ALBUMENTATIONS)}")
        if not 1 <= self.severity <= 5:
            raise ValueError(f"severity must be 1..5, got {self.severity}")

    @property
    def per_frame(self) -> bool:
        """Whether a real camera would see a new draw of this corruption every frame (sensor noise)."""
        return self.name in PER_FRAME

    @property
    def library(self) -> str:
        return "imagecorruptions" if self.name in IMAGECORRUPTIONS else "albumentations"

    def apply(self, image: np.ndarray, seed: int) -> np.ndarray:
        """HxWx3 uint8 RGB -> the corrupted HxWx3 uint8 RGB."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"corruptions take HxWx3 uint8 images, got {image.shape} {image.dtype}")
        if self.library == "imagecorruptions":
            out = _imagecorruption(image, self.name, self.severity, seed)
        else:
            out = _albumentation(self.name, self.severity)(image, seed)
        out = np.asarray(out)
        if out.shape != image.shape:  # some ImageNet-C corruptions return float or resized arrays
            import cv2

            out = cv2.resize(out, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_AREA)
        return np.clip(out, 0, 255).astype(np.uint8)


def _imagecorruption(image: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    try:
        with warnings.catch_warnings():  # it imports deprecated scipy / pkg_resources names
            warnings.simplefilter("ignore")
            from imagecorruptions import corrupt
    except ImportError as exc:  # pragma: no cover - a missing optional dependency
        raise RuntimeError("the real-footage benchmark needs `imagecorruptions` (pip install -c constraints.txt "
                           "imagecorruptions)") from exc
    import skimage.util

    # the library draws from numpy's global generator, and impulse noise from scikit-image's random_noise,
    # which takes its own generator (unseeded: a rebuild would differ): both seeded for this call only
    state, random_noise = np.random.get_state(), skimage.util.random_noise
    np.random.seed(seed % (2**32))
    skimage.util.random_noise = functools.partial(random_noise, rng=seed % (2**32))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return corrupt(image, corruption_name=name, severity=severity)
    finally:
        np.random.set_state(state)
        skimage.util.random_noise = random_noise


def _albumentation(name: str, severity: int) -> Callable[[np.ndarray, int], np.ndarray]:
    try:
        import albumentations as A
    except ImportError as exc:  # pragma: no cover - a missing optional dependency
        raise RuntimeError("the real-footage benchmark needs `albumentations` (pip install -c constraints.txt "
                           "albumentations)") from exc
    s = severity / 5.0
    transforms = {
        "fog": lambda: A.RandomFog(fog_coef_range=(0.2 + 0.5 * s, 0.3 + 0.6 * s), alpha_coef=0.12, p=1.0),
        "rain": lambda: A.RandomRain(drop_length=None, blur_value=3, brightness_coefficient=1.0 - 0.25 * s, p=1.0),
        "sun_flare": lambda: A.RandomSunFlare(flare_roi=(0.0, 0.0, 1.0, 0.5), src_radius=int(60 + 120 * s), p=1.0),
        "shadow": lambda: A.RandomShadow(shadow_roi=(0.0, 0.4, 1.0, 1.0), num_shadows_limit=(1, 1 + severity),
                                         shadow_dimension=5, p=1.0),
        "iso_noise": lambda: A.ISONoise(color_shift=(0.01, 0.02 + 0.04 * s), intensity=(0.2 + 0.4 * s, 0.3 + 0.6 * s),
                                        p=1.0),
    }
    transform = transforms[name]()

    def apply(image: np.ndarray, seed: int) -> np.ndarray:
        return A.Compose([transform], seed=int(seed % (2**31)))(image=image)["image"]

    return apply
