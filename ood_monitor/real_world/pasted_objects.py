"""Real photographed objects pasted into real camera frames, with pixel-exact masks and class labels.

The photographs are the demo world's object cutouts (ood_monitor/demo_world/anomalies.py: scikit-image's
bundled photos and LFW faces). Pasting uses a binary alpha, so the ground-truth mask is exactly the set of
pixels that changed source: no soft edge whose label would be a matter of opinion. An object stands on
the lower half of the frame (the road or floor ahead) and grows a little over its episode, as something
the camera approaches does.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ood_monitor.demo_world import anomalies

SCENE_CLASS = 0  # every pixel of the real footage that is not a pasted object
LARGE = ("astronaut", "rocket", "motorcycle", "horse")
SMALL = ("cat", "coffee", "face")
OBJECT_KINDS = ("object", "small_objects")
CLASS_IDS = {c.name: c.class_id for c in anomalies.OBJECT_CLASSES}


@dataclass(frozen=True)
class Placement:
    """One pasted object: class name, photo variant, foot point (fractions of width/height), height
    (fraction of the image height) at the episode's first frame, and growth over the episode."""

    name: str
    variant: int
    x: float
    y: float
    height: float
    growth: float = 0.3


def classes() -> dict[str, dict[str, object]]:
    """classes.json of a real-footage split: the scene (in distribution) and every object class."""
    table = {str(SCENE_CLASS): {"name": "scene", "colour": [128, 128, 128], "anomaly": False}}
    for cls in anomalies.OBJECT_CLASSES:
        table[str(cls.class_id)] = {"name": cls.name, "colour": list(cls.colour), "anomaly": True}
    return table


def plan(kind: str, rng: np.random.Generator) -> list[Placement]:
    """`object`: one large object ahead; `small_objects`: two small ones side by side."""
    if kind == "object":
        name = str(rng.choice(LARGE))
        return [Placement(name, int(rng.integers(0, 1000)), float(rng.uniform(0.35, 0.65)),
                          float(rng.uniform(0.75, 0.9)), float(rng.uniform(0.3, 0.42)))]
    if kind == "small_objects":
        names = rng.choice(SMALL, size=2, replace=False)
        xs = sorted(rng.uniform(0.2, 0.8, size=2))
        if xs[1] - xs[0] < 0.25:
            xs = [0.35, 0.65]
        return [Placement(str(n), int(rng.integers(0, 1000)), float(x), float(rng.uniform(0.75, 0.92)),
                          float(rng.uniform(0.14, 0.2))) for n, x in zip(names, xs, strict=True)]
    raise ValueError(f"unknown object kind {kind!r}; choose from {OBJECT_KINDS}")


def paste(image: np.ndarray, placements: list[Placement], progress: float
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image with the objects, mask 255 = object, semantic class ids) at `progress` in [0, 1] of the episode.

    Later placements are pasted over earlier ones; the labels follow the visible object."""
    out = image.copy()
    h, w = image.shape[:2]
    semantic = np.full((h, w), SCENE_CLASS, np.uint8)
    for p in placements:
        rgb, alpha = _cutout(p.name, p.variant)
        height = max(4, int(round(p.height * (1.0 + p.growth * progress) * h)))
        width = max(4, int(round(height * rgb.shape[1] / rgb.shape[0])))
        rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
        solid = cv2.resize(alpha, (width, height), interpolation=cv2.INTER_NEAREST) > 0.5
        bottom = min(h, int(round(p.y * h + 0.05 * h * progress)))
        left = int(round(p.x * w - width / 2))
        top = bottom - height
        y0, y1, x0, x1 = max(0, top), min(h, bottom), max(0, left), min(w, left + width)
        if y1 <= y0 or x1 <= x0:
            continue
        patch = solid[y0 - top : y1 - top, x0 - left : x1 - left]
        out[y0:y1, x0:x1][patch] = rgb[y0 - top : y1 - top, x0 - left : x1 - left][patch]
        semantic[y0:y1, x0:x1][patch] = CLASS_IDS[p.name]
    mask = np.where(semantic != SCENE_CLASS, 255, 0).astype(np.uint8)
    return out, mask, semantic


def _cutout(name: str, variant: int) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8, alpha in [0, 1]) of an object photo, cropped to its alpha's bounding box."""
    level = anomalies.object_sprite(name, variant).levels[0]
    alpha = level[..., 3]
    rgb = level[..., :3] / np.maximum(alpha, 1e-6)[..., None]
    ys, xs = np.nonzero(alpha > 0.5)
    crop = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    return (np.clip(rgb[crop], 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), alpha[crop]
