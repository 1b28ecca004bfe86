"""Out-of-distribution events of the demo drive: objects, global image shifts and abnormal motion.

Object anomalies are real photographs standing in the world (so they grow with perspective and are
occluded by nearer vegetation); global shifts act on the rendered image; motion anomalies change only
the vehicle's motion, so every single image still looks in distribution.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from ood_monitor.demo_world.scene import ANOMALY_CLASS_BASE, Billboard, Sprite, TrailPath, load_photo

OBJECT_KINDS = ("object", "small_objects")
GLOBAL_KINDS = ("night", "fog", "rain", "snow", "overexposure", "lens_dirt", "sensor_noise", "motion_blur")
MOTION_KINDS = ("swerve", "reversing", "vibration", "frozen")
OOD_KINDS = OBJECT_KINDS + GLOBAL_KINDS + MOTION_KINDS
NOMINAL = "nominal"


def category_of(kind: str) -> str:
    """FrameLabel category of a kind: in_distribution, object, global or motion."""
    if kind == NOMINAL:
        return "in_distribution"
    if kind in OBJECT_KINDS:
        return "object"
    if kind in GLOBAL_KINDS:
        return "global"
    if kind in MOTION_KINDS:
        return "motion"
    raise ValueError(f"unknown kind {kind!r}")


@dataclass(frozen=True)
class ObjectClass:
    """An anomaly object class: semantic id, bundled photograph and its real-world height range (m)."""

    class_id: int
    name: str
    photo: str
    height_m: tuple[float, float]
    colour: tuple[int, int, int]


OBJECT_CLASSES = (
    ObjectClass(ANOMALY_CLASS_BASE + 0, "astronaut", "astronaut.png", (1.6, 2.0), (255, 0, 0)),
    ObjectClass(ANOMALY_CLASS_BASE + 1, "rocket", "rocket.jpg", (1.4, 1.9), (255, 128, 0)),
    ObjectClass(ANOMALY_CLASS_BASE + 2, "motorcycle", "motorcycle_left.png", (1.0, 1.3), (255, 0, 255)),
    ObjectClass(ANOMALY_CLASS_BASE + 3, "cat", "chelsea.png", (0.5, 0.8), (255, 255, 0)),
    ObjectClass(ANOMALY_CLASS_BASE + 4, "coffee", "coffee.png", (0.4, 0.6), (0, 255, 255)),
    ObjectClass(ANOMALY_CLASS_BASE + 5, "face", "lfw_subset.npy", (0.5, 0.7), (255, 160, 200)),
    ObjectClass(ANOMALY_CLASS_BASE + 6, "horse", "horse.png", (1.4, 1.7), (160, 82, 45)),
)
LARGE_OBJECTS = ("astronaut", "rocket", "motorcycle")
SMALL_OBJECTS = ("cat", "coffee", "face", "horse")
LENS_DIRT_CLASS = ANOMALY_CLASS_BASE + 20
_BY_NAME = {c.name: c for c in OBJECT_CLASSES}


@functools.cache
def object_sprite(name: str, variant: int = 0) -> Sprite:
    """Billboard sprite of an object class: the photo (faces: one of the LFW crops; horse: its silhouette)."""
    photo = load_photo(_BY_NAME[name].photo)
    if name == "face":
        face = photo[variant % photo.shape[0]]
        rgb = np.repeat(cv2.resize(face, (100, 100), interpolation=cv2.INTER_CUBIC)[..., None], 3, axis=2)
        return Sprite.from_rgba(np.clip(rgb, 0.0, 1.0), np.ones(rgb.shape[:2], np.float32))
    if name == "horse":
        silhouette = (photo[..., :3].mean(axis=2) < 0.5).astype(np.float32)
        ys, xs = np.nonzero(silhouette)
        silhouette = silhouette[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        shade = np.linspace(0.5, 0.3, silhouette.shape[0], dtype=np.float32)[:, None, None]
        rgb = shade * np.array([0.75, 0.45, 0.25], np.float32) * np.ones((*silhouette.shape, 1), np.float32)
        return Sprite.from_rgba(rgb, silhouette)
    return Sprite.from_rgba(photo[..., :3], np.ones(photo.shape[:2], np.float32))


def object_billboard(name: str, rng: np.random.Generator, x: float, y: float) -> Billboard:
    cls = _BY_NAME[name]
    sprite = object_sprite(name, int(rng.integers(0, 200)) if name == "face" else 0)
    height = float(rng.uniform(*cls.height_m))
    return Billboard(x, y, height / sprite.aspect, height, sprite, cls.class_id)


def place_objects(
    kind: str, rng: np.random.Generator, path: TrailPath, end_s: float, trail_half_width: float
) -> list[Billboard]:
    """Objects on or beside the trail, placed so the vehicle reaches them near the episode's end."""
    if kind == "object":
        names = [str(rng.choice(LARGE_OBJECTS))]
    elif kind == "small_objects":
        names = [str(n) for n in rng.choice(SMALL_OBJECTS, size=3, replace=False)]
    else:
        raise ValueError(f"{kind!r} is not an object kind")
    boards = []
    for i, name in enumerate(names):
        ahead = (4.0 if kind == "object" else 2.5) + 1.8 * i + rng.uniform(0.0, 1.0)
        lateral = float(rng.uniform(-1.0, 1.0)) * (trail_half_width - 0.3) * (0.5 if i == 0 else 1.0)
        x, y, heading = path.pose_at(end_s + ahead)
        boards.append(
            object_billboard(name, rng, x - math.sin(heading) * lateral, y + math.cos(heading) * lateral)
        )
    return boards


# --- global shifts ---------------------------------------------------------------------------


def ramp(k: int, length: int) -> float:
    """Strength of an episode's effect at its k-th frame: ramps in over the first few frames."""
    frames = max(2, min(6, length // 3))
    return min(1.0, (k + 1) / frames)


@dataclass
class GlobalShift:
    """One episode of an image-wide shift; per-episode randomness (dirt blobs, blur direction) is fixed."""

    kind: str
    width: int
    height: int
    rng: np.random.Generator
    dirt_alpha: np.ndarray | None = field(default=None, init=False)
    blur_angle: float = field(default=0.0, init=False)
    flakes: np.ndarray | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.kind not in GLOBAL_KINDS:
            raise ValueError(f"{self.kind!r} is not a global kind")
        if self.kind == "lens_dirt":
            self.dirt_alpha = self._dirt_blobs()
        elif self.kind == "motion_blur":
            self.blur_angle = float(self.rng.uniform(-0.35, 0.35))
        elif self.kind == "snow":
            n = 350
            self.flakes = np.stack(
                [
                    self.rng.uniform(0, self.width, n),
                    self.rng.uniform(0, self.height, n),
                    self.rng.uniform(0.6, 2.6, n),  # radius px
                    self.rng.uniform(2.0, 7.0, n),  # fall px/frame
                ],
                axis=1,
            )

    def _dirt_blobs(self) -> np.ndarray:
        alpha = np.zeros((self.height, self.width), np.float32)
        scale = self.width / 320.0
        for _ in range(int(self.rng.integers(3, 6))):
            centre = (int(self.rng.uniform(0.1, 0.9) * self.width), int(self.rng.uniform(0.15, 0.95) * self.height))
            axes = (int(self.rng.uniform(12, 40) * scale), int(self.rng.uniform(10, 30) * scale))
            cv2.ellipse(alpha, centre, axes, float(self.rng.uniform(0, 180)), 0, 360, 1.0, -1)
        rough = cv2.GaussianBlur(self.rng.random(alpha.shape).astype(np.float32), (0, 0), 3.0 * scale)
        alpha = cv2.GaussianBlur(alpha, (0, 0), 4.0 * scale) * (0.7 + 1.2 * (rough - 0.5))
        return np.clip(alpha * 1.3, 0.0, 0.95).astype(np.float32)

    @property
    def mask(self) -> np.ndarray | None:
        """Anomalous pixels of this shift (lens dirt only), mono8 255/0."""
        if self.dirt_alpha is None:
            return None
        return np.where(self.dirt_alpha > 0.5, 255, 0).astype(np.uint8)

    def apply(
        self, image: np.ndarray, depth: np.ndarray, strength: float, k: int, frame_rng: np.random.Generator
    ) -> np.ndarray:
        """Shifted copy of a linear RGB float image (values may exceed 1; clipping happens on output)."""
        return getattr(self, f"_{self.kind}")(image, depth, np.float32(strength), k, frame_rng)

    def _night(self, image: np.ndarray, depth: np.ndarray, s: np.float32, k: int, rng: np.random.Generator) -> np.ndarray:
        """Moonlight plus headlights: only the near ground stays lit, with low-light sensor noise."""
        columns = (np.arange(self.width, dtype=np.float32) - self.width / 2) / np.float32(0.45 * self.width)
        beam = np.exp(-np.minimum(depth, 1e4) / np.float32(9.0)) * np.exp(-columns * columns)[None, :]
        light = (np.float32(0.05) + np.float32(1.1) * beam)[..., None] * np.array([0.85, 0.9, 1.1], np.float32)
        dark = image * (1.0 - s + s * light)
        return dark + rng.normal(0.0, 0.02 * s, image.shape).astype(np.float32)

    def _fog(self, image: np.ndarray, depth: np.ndarray, s: np.float32, k: int, rng: np.random.Generator) -> np.ndarray:
        visibility = np.exp(-np.minimum(depth, 1e4) / np.float32(14.0))[..., None]
        keep = 1.0 - s * (1.0 - visibility)
        return image * keep + np.array([0.78, 0.8, 0.82], np.float32) * (1.0 - keep)

    def _rain(self, image: np.ndarray, depth: np.ndarray, s: np.float32, k: int, rng: np.random.Generator) -> np.ndarray:
        grey = image.mean(axis=2, keepdims=True)
        wet = (image + 0.5 * s * (grey - image)) * (1.0 - 0.35 * s)
        streaks = np.zeros(image.shape[:2], np.float32)
        n = int(260 * s)
        x0 = rng.uniform(-20, self.width, n)
        y0 = rng.uniform(-20, self.height, n)
        length = rng.uniform(8, 22, n) * self.height / 240.0
        angle = math.radians(100.0)
        for x, y, ln in zip(x0, y0, length, strict=True):
            end = (int(x + ln * math.cos(angle)), int(y + ln * math.sin(angle)))
            cv2.line(streaks, (int(x), int(y)), end, 1.0, 1, cv2.LINE_AA)
        streaks = cv2.GaussianBlur(streaks, (3, 3), 0.6)[..., None]
        return wet * (1.0 - 0.55 * streaks) + 0.75 * streaks

    def _snow(self, image: np.ndarray, depth: np.ndarray, s: np.float32, k: int, rng: np.random.Generator) -> np.ndarray:
        assert self.flakes is not None
        white = image + 0.3 * s * (np.float32(0.88) - image)
        layer = np.zeros(image.shape[:2], np.float32)
        count = int(len(self.flakes) * s)
        for x, y, radius, fall in self.flakes[:count]:
            cy = (y + fall * k) % self.height
            cx = (x + 3.0 * math.sin(0.3 * k + y)) % self.width
            cv2.circle(layer, (int(cx), int(cy)), max(1, int(radius)), 1.0, -1, cv2.LINE_AA)
        layer = cv2.GaussianBlur(layer, (3, 3), 0.8)[..., None]
        return white * (1.0 - layer) + 0.95 * layer

    def _overexposure(self, image: np.ndarray, depth: np.ndarray, s: np.float32, k: int, rng: np.random.Generator) -> np.ndarray:
        return image * (1.0 + 2.2 * s) + 0.12 * s

    def _lens_dirt(self, image: np.ndarray, depth: np.ndarray, s: np.float32, k: int, rng: np.random.Generator) -> np.ndarray:
        assert self.dirt_alpha is not None
        alpha = (self.dirt_alpha * (0.3 + 0.7 * s))[..., None]
        smudge = cv2.GaussianBlur(image, (0, 0), 3.0) * 0.35 + np.array([0.16, 0.12, 0.08], np.float32)
        return image * (1.0 - alpha) + smudge * alpha

    def _sensor_noise(self, image: np.ndarray, depth: np.ndarray, s: np.float32, k: int, rng: np.random.Generator) -> np.ndarray:
        noisy = image + rng.normal(0.0, 0.13 * s, image.shape).astype(np.float32)
        noisy += rng.normal(0.0, 0.05 * s, (image.shape[0], 1, 1)).astype(np.float32)  # row banding
        hot = rng.random(image.shape[:2]) < 0.01 * s
        noisy[hot] = rng.choice(np.array([0.0, 1.0], np.float32), size=(int(hot.sum()), 1))
        return noisy

    def _motion_blur(self, image: np.ndarray, depth: np.ndarray, s: np.float32, k: int, rng: np.random.Generator) -> np.ndarray:
        length = max(1, int(round((3 + 15 * float(s)) * self.width / 320.0)))
        size = 2 * length + 1
        kernel = np.zeros((size, size), np.float32)
        dx, dy = math.cos(self.blur_angle) * length, math.sin(self.blur_angle) * length
        cv2.line(kernel, (int(length - dx), int(length - dy)), (int(length + dx), int(length + dy)), 1.0, 1, cv2.LINE_AA)
        return cv2.filter2D(image, -1, kernel / kernel.sum(), borderType=cv2.BORDER_REFLECT)


# --- motion anomalies ------------------------------------------------------------------------


@dataclass
class MotionPlan:
    """Per-frame vehicle motion: speed (m/s), yaw offset from the trail (rad), camera jitter (rad, m)."""

    speed: np.ndarray
    yaw_offset: np.ndarray
    pitch: np.ndarray
    roll: np.ndarray
    bounce: np.ndarray


def apply_motion_anomaly(plan: MotionPlan, kind: str, start: int, length: int, rng: np.random.Generator, fps: float) -> None:
    """Overwrite the episode's frames of `plan` with the abnormal motion of `kind` (in place)."""
    span = slice(start, start + length)
    phase = np.arange(length) / max(length - 1, 1)
    if kind == "swerve":
        # One full sine period of heading offset: a hard S-turn that ends back on the trail line.
        duration = length / fps
        amplitude = min(0.6, 1.4 * duration / math.tau)
        plan.yaw_offset[span] = amplitude * np.sin(math.tau * phase) * rng.choice([-1.0, 1.0])
    elif kind == "reversing":
        edge = np.minimum(1.0, np.minimum(phase, 1.0 - phase) * 5.0)
        nominal = plan.speed[span].copy()
        plan.speed[span] = nominal + edge * (-1.6 - nominal)
    elif kind == "vibration":
        plan.pitch[span] += rng.normal(0.0, math.radians(2.5), length)
        plan.roll[span] += rng.normal(0.0, math.radians(2.0), length)
        plan.bounce[span] += rng.normal(0.0, 0.05, length)
    elif kind == "frozen":
        return  # the pose is unchanged; the generator repeats the onset image instead
    else:
        raise ValueError(f"{kind!r} is not a motion kind")
