"""The in-distribution world of the demo data: an off-road trail seen by a forward pinhole camera.

Every pixel's ray is intersected with the ground plane in world coordinates and the ground textures
(real grass/gravel photographs bundled with scikit-image) are sampled there with `cv2.remap`, so image
motion is that of a real camera: the ground expands from the focus of expansion, near ground moves
faster, and turning rotates the view. Vegetation and anomaly objects are upright billboards drawn back
to front, which gives correct occlusion and exact per-pixel labels.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

# Semantic class ids of the in-distribution world; anomaly classes use ids >= ANOMALY_CLASS_BASE.
UNKNOWN, GRASS, TRAIL, SKY, VEGETATION = 0, 1, 2, 3, 4
ANOMALY_CLASS_BASE = 10


@dataclass(frozen=True)
class Camera:
    """Forward-looking pinhole camera on the vehicle (no distortion)."""

    width: int = 320
    height: int = 240
    focal_scale: float = 0.8  # fx = fy = focal_scale * width
    mount_height_m: float = 1.0
    pitch_rad: float = math.radians(7.0)  # downward tilt

    @property
    def fx(self) -> float:
        return self.focal_scale * self.width

    @property
    def fy(self) -> float:
        return self.focal_scale * self.width

    @property
    def cx(self) -> float:
        return (self.width - 1) / 2.0

    @property
    def cy(self) -> float:
        return (self.height - 1) / 2.0


@dataclass(frozen=True)
class CameraPose:
    """Camera position (m) on the ground plane, yaw about world up, plus pitch/roll jitter (rad)."""

    x: float
    y: float
    yaw: float
    pitch: float = 0.0  # added to the camera's mounting pitch, positive looks down
    roll: float = 0.0
    height: float = 0.0  # added to the mounting height


@dataclass(frozen=True)
class WorldConfig:
    """Sizes of the world's features, in metres unless named otherwise."""

    trail_half_width: float = 1.4
    grass_tile_m: float = 1.6
    gravel_tile_m: float = 1.1
    patch_period_m: float = 64.0
    trail_raster_m: float = 0.1
    cloud_altitude: float = 350.0
    cloud_period_m: float = 1800.0
    wind_mps: tuple[float, float] = (4.0, 1.5)
    sun_direction: tuple[float, float, float] = (0.45, 0.3, 0.84)
    vegetation_spacing_m: float = 1.4
    vegetation_min_clearance: float = 1.7  # beyond the trail edge
    treeline_distance: float = 220.0
    haze_distance: float = 260.0


def skimage_data_path(name: str) -> Path:
    """Path of an image bundled inside the installed scikit-image package (never downloaded)."""
    import skimage.data

    path = Path(skimage.data.__file__).parent / name
    if not path.is_file():
        raise FileNotFoundError(f"bundled scikit-image data file missing: {path}")
    return path


@functools.cache
def load_photo(name: str) -> np.ndarray:
    """Bundled photograph as float32 in [0, 1]: HxW (grey) or HxWx3 RGB or HxWx4 RGBA."""
    path = skimage_data_path(name)
    if path.suffix == ".npy":
        return np.load(path).astype(np.float32)
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"cannot decode {path}")
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return image.astype(np.float32) / 255.0


def periodic_noise(rng: np.random.Generator, size: int, falloff: float = 2.2) -> np.ndarray:
    """Tileable fractal noise in [0, 1] made in the Fourier domain (so tiles wrap seamlessly)."""
    freq = np.fft.fftfreq(size) * size
    radius = np.hypot(freq[:, None], freq[None, :])
    radius[0, 0] = 1.0
    spectrum = (rng.standard_normal((size, size)) + 1j * rng.standard_normal((size, size))) / radius**falloff
    spectrum[0, 0] = 0.0
    field_ = np.real(np.fft.ifft2(spectrum))
    field_ = (field_ - field_.min()) / (np.ptp(field_) + 1e-9)
    return field_.astype(np.float32)


def periodic_noise_1d(rng: np.random.Generator, size: int, falloff: float) -> np.ndarray:
    """Periodic 1-D fractal noise in [0, 1] (a closed profile around the horizon)."""
    freq = np.fft.rfftfreq(size) * size
    freq[0] = 1.0
    spectrum = (rng.standard_normal(freq.size) + 1j * rng.standard_normal(freq.size)) / freq**falloff
    spectrum[0] = 0.0
    profile = np.fft.irfft(spectrum, n=size)
    return ((profile - profile.min()) / (np.ptp(profile) + 1e-9)).astype(np.float32)


def seamless(gray: np.ndarray) -> np.ndarray:
    """Make a photo texture tile seamlessly by cross-fading it with its half-shifted copy."""
    size_y, size_x = gray.shape
    wy = np.sin(np.linspace(0.0, np.pi, size_y, dtype=np.float32))
    wx = np.sin(np.linspace(0.0, np.pi, size_x, dtype=np.float32))
    weight = np.sqrt(np.clip(np.outer(wy, wx), 0.0, 1.0))
    shifted = np.roll(gray, (size_y // 2, size_x // 2), axis=(0, 1))
    mean = float(gray.mean())
    blend = weight * gray + (1.0 - weight) * shifted
    contrast = np.sqrt(weight**2 + (1.0 - weight) ** 2)
    return np.clip(mean + (blend - mean) / contrast, 0.0, 1.0).astype(np.float32)


def colorize(gray: np.ndarray, dark: tuple[float, float, float], light: tuple[float, float, float]) -> np.ndarray:
    """Map a grey texture onto a colour ramp (RGB in [0, 1])."""
    dark_a = np.asarray(dark, np.float32)
    light_a = np.asarray(light, np.float32)
    return (dark_a + gray[..., None] * (light_a - dark_a)).astype(np.float32)


def mip_levels(image: np.ndarray, smallest: int = 4) -> list[np.ndarray]:
    """Box-filtered 2x pyramid; 2x2 averaging keeps tileable textures tileable."""
    levels = [np.ascontiguousarray(image, dtype=np.float32)]
    while min(levels[-1].shape[:2]) >= 2 * smallest:
        top = levels[-1]
        h, w = (top.shape[0] // 2) * 2, (top.shape[1] // 2) * 2
        top = top[:h, :w]
        down = top.reshape(h // 2, 2, w // 2, 2, *top.shape[2:]).mean(axis=(1, 3))
        levels.append(np.ascontiguousarray(down, dtype=np.float32))
    return levels


def smoothstep(x: np.ndarray, edge0: float, edge1: float) -> np.ndarray:
    """Hermite step from 0 at edge0 to 1 at edge1 (keeps float32 inputs float32)."""
    t = np.minimum(np.maximum((x - np.float32(edge0)) * np.float32(1.0 / (edge1 - edge0)), 0), 1)
    return t * t * (3.0 - 2.0 * t)


@dataclass
class Sprite:
    """Premultiplied RGBA billboard image with its mip pyramid (largest first)."""

    levels: list[np.ndarray]

    @classmethod
    def from_rgba(cls, rgb: np.ndarray, alpha: np.ndarray) -> Sprite:
        rgba = np.dstack([rgb * alpha[..., None], alpha]).astype(np.float32)
        return cls(mip_levels(rgba, smallest=2))

    @property
    def aspect(self) -> float:
        """Height over width of the image."""
        h, w = self.levels[0].shape[:2]
        return h / w


@dataclass
class Billboard:
    """An upright picture standing on the ground at (x, y), always facing the camera."""

    x: float
    y: float
    width_m: float
    height_m: float
    sprite: Sprite
    class_id: int


@dataclass
class TrailPath:
    """The trail's centre line sampled every `step_m` metres of arc length from `start_s`."""

    xs: np.ndarray
    ys: np.ndarray
    headings: np.ndarray
    start_s: float
    step_m: float

    def pose_at(self, s: float) -> tuple[float, float, float]:
        """(x, y, heading) at arc length `s`, linearly interpolated."""
        pos = np.clip((s - self.start_s) / self.step_m, 0.0, len(self.xs) - 1.000001)
        i = int(pos)
        f = pos - i
        heading = self.headings[i] + f * math.remainder(self.headings[i + 1] - self.headings[i], math.tau)
        return (
            float(self.xs[i] + f * (self.xs[i + 1] - self.xs[i])),
            float(self.ys[i] + f * (self.ys[i + 1] - self.ys[i])),
            float(heading),
        )


def make_trail(rng: np.random.Generator, start_s: float, end_s: float, step_m: float = 0.25) -> TrailPath:
    """A smoothly winding trail: curvature follows a smoothed random process (radius >= ~12 m)."""
    n = int(math.ceil((end_s - start_s) / step_m)) + 2
    raw = rng.standard_normal(n + 400)
    kernel = np.hanning(161)
    curvature = np.convolve(raw, kernel / kernel.sum(), mode="same")[200 : 200 + n]
    curvature = np.clip(curvature * 0.45, -0.08, 0.08)
    headings = rng.uniform(-math.pi, math.pi) + np.cumsum(curvature) * step_m
    xs = np.concatenate([[0.0], np.cumsum(np.cos(headings[:-1]) * step_m)])
    ys = np.concatenate([[0.0], np.cumsum(np.sin(headings[:-1]) * step_m)])
    zero = int(round(-start_s / step_m)) if start_s < 0 else 0
    return TrailPath(xs - xs[zero], ys - ys[zero], headings, start_s, step_m)


@dataclass
class TrailRaster:
    """World-space raster of the trail: channel 0 gravel coverage, channel 1 tyre-rut darkness."""

    layers: np.ndarray  # HxWx2 float32
    clearance_m: np.ndarray  # HxW float32: distance from the trail centre line
    origin: tuple[float, float]
    resolution_m: float

    @classmethod
    def build(cls, path: TrailPath, config: WorldConfig, rng: np.random.Generator) -> TrailRaster:
        res = config.trail_raster_m
        margin = 40.0  # beyond this the ground is grass anyway
        x0, y0 = path.xs.min() - margin, path.ys.min() - margin
        width = int((path.xs.max() + margin - x0) / res) + 1
        height = int((path.ys.max() + margin - y0) / res) + 1
        centre = np.full((height, width), 255, np.uint8)
        points = np.stack([(path.xs - x0) / res, (path.ys - y0) / res], axis=1)
        cv2.polylines(centre, [np.round(points * 16).astype(np.int32)], False, 0, 1, cv2.LINE_8, 4)
        dist = cv2.distanceTransform(centre, cv2.DIST_L2, 5)
        dist *= np.float32(res)
        wobble = cls._world_noise(rng, (height, width), res, scale_m=6.0) - np.float32(0.5)
        grit = cls._world_noise(rng, (height, width), res, scale_m=0.6) - np.float32(0.5)
        edge = np.float32(config.trail_half_width) + np.float32(0.5) * wobble + np.float32(0.25) * grit - dist
        gravel = smoothstep(edge, -0.15, 0.25)
        rut = (dist - np.float32(0.75)) * np.float32(1.0 / 0.16)
        rut = np.exp(-rut * rut) * (np.float32(0.6) + np.float32(0.8) * wobble)
        layers = np.empty((height, width, 2), np.float32)
        layers[..., 0] = gravel
        layers[..., 1] = np.minimum(np.maximum(rut, 0), 1)
        return cls(layers, dist, (float(x0), float(y0)), res)

    @staticmethod
    def _world_noise(rng: np.random.Generator, shape: tuple[int, int], res: float, scale_m: float) -> np.ndarray:
        """Smooth noise in [0, 1] with features of about `scale_m`, sized to the raster."""
        coarse_shape = (max(2, int(shape[0] * res / scale_m) + 2), max(2, int(shape[1] * res / scale_m) + 2))
        coarse = rng.random(coarse_shape).astype(np.float32)
        fine = cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
        return np.minimum(np.maximum(fine, 0), 1, out=fine)

    def clearance_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Distance (m) from world points to the trail centre line (large outside the raster)."""
        col = np.round((x - self.origin[0]) / self.resolution_m).astype(int)
        row = np.round((y - self.origin[1]) / self.resolution_m).astype(int)
        inside = (row >= 0) & (row < self.clearance_m.shape[0]) & (col >= 0) & (col < self.clearance_m.shape[1])
        out = np.full(x.shape, 1e3, np.float32)
        out[inside] = self.clearance_m[row[inside], col[inside]]
        return out


def _bush_sprite(rng: np.random.Generator, leaves: np.ndarray) -> Sprite:
    size = 128
    mask = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(5, 10))):
        cx, cy = rng.uniform(30, 98), rng.uniform(45, 105)
        axes = (int(rng.uniform(18, 34)), int(rng.uniform(16, 30)))
        cv2.ellipse(mask, (int(cx), int(cy)), axes, 0, 0, 360, 1.0, -1)
    mask[120:] = 0.0
    return _foliage(rng, mask, leaves, trunk=None)


def _tree_sprite(rng: np.random.Generator, leaves: np.ndarray, bark: np.ndarray) -> Sprite:
    width, height = 128, 256
    mask = np.zeros((height, width), np.float32)
    crown_bottom = int(rng.uniform(150, 185))
    for _ in range(int(rng.integers(7, 13))):
        cx, cy = rng.uniform(34, 94), rng.uniform(30, crown_bottom - 20)
        axes = (int(rng.uniform(18, 32)), int(rng.uniform(20, 38)))
        cv2.ellipse(mask, (int(cx), int(cy)), axes, 0, 0, 360, 1.0, -1)
    trunk_w = int(rng.uniform(8, 14))
    trunk = (slice(crown_bottom - 40, height), slice(64 - trunk_w // 2, 64 + trunk_w // 2))
    return _foliage(rng, mask, leaves, trunk=(trunk, bark))


def _foliage(
    rng: np.random.Generator,
    mask: np.ndarray,
    leaves: np.ndarray,
    trunk: tuple[tuple[slice, slice], np.ndarray] | None,
) -> Sprite:
    """Leafy RGBA sprite: ragged alpha edge, leaf texture, top-lit shading, optional trunk."""
    h, w = mask.shape
    soft = cv2.GaussianBlur(mask, (0, 0), 5.0)
    speckle = rng.random((h, w)).astype(np.float32)
    alpha = smoothstep(soft - 0.35 * speckle, 0.25, 0.4)
    oy, ox = rng.integers(0, leaves.shape[0] - h), rng.integers(0, leaves.shape[1] - w)
    texture = leaves[oy : oy + h, ox : ox + w]
    shade = np.linspace(1.15, 0.55, h, dtype=np.float32)[:, None] * (0.75 + 0.5 * soft)
    hue = np.asarray(rng.uniform([0.75, 0.85, 0.6], [1.1, 1.1, 0.95]), np.float32)
    rgb = np.clip(texture * shade[..., None] * hue, 0.0, 1.0)
    if trunk is not None:
        (rows, cols), bark = trunk
        trunk_alpha = np.zeros_like(alpha)
        trunk_alpha[rows, cols] = 1.0
        behind = trunk_alpha * (1.0 - alpha)
        rgb = rgb * (1.0 - behind[..., None]) + bark[:h, :w] * behind[..., None]
        alpha = np.maximum(alpha, trunk_alpha)
    return Sprite.from_rgba(rgb.astype(np.float32), cv2.GaussianBlur(alpha, (3, 3), 0.7))


@dataclass
class Textures:
    """All photographic and procedural textures of the world, built once per world seed."""

    grass: list[np.ndarray]
    gravel: list[np.ndarray]
    patches: np.ndarray  # tileable HxWx2: lushness, brightness
    clouds: np.ndarray  # tileable HxW cloud density
    treeline: np.ndarray  # per-azimuth bin: elevation (rad) of the distant tree line
    distant: np.ndarray  # small tileable texture for the tree line
    vegetation: list[Sprite]
    n_bushes: int

    @classmethod
    def build(cls, rng: np.random.Generator) -> Textures:
        grass_gray = seamless(load_photo("grass.png"))
        gravel_gray = seamless(load_photo("gravel.png"))
        grass = colorize(grass_gray, (0.07, 0.12, 0.03), (0.55, 0.66, 0.28))
        gravel = colorize(gravel_gray, (0.2, 0.17, 0.13), (0.78, 0.72, 0.62))
        leaves = colorize(grass_gray, (0.02, 0.06, 0.02), (0.3, 0.45, 0.16))
        bark = colorize(gravel_gray, (0.1, 0.07, 0.05), (0.42, 0.33, 0.24))
        bushes = [_bush_sprite(rng, leaves) for _ in range(6)]
        trees = [_tree_sprite(rng, leaves, bark) for _ in range(4)]
        hills = periodic_noise_1d(rng, 1024, 1.5)
        crowns = periodic_noise_1d(rng, 1024, 0.6)
        treeline = (0.004 + 0.03 * hills + 0.012 * crowns).astype(np.float32)
        return cls(
            grass=mip_levels(grass),
            gravel=mip_levels(gravel),
            patches=np.dstack([periodic_noise(rng, 128, 2.0), periodic_noise(rng, 128, 1.6)]),
            clouds=periodic_noise(rng, 256, 1.9),
            treeline=treeline,
            distant=cv2.resize(leaves, (64, 64), interpolation=cv2.INTER_AREA),
            vegetation=bushes + trees,
            n_bushes=len(bushes),
        )


@dataclass
class VegetationField:
    """Bushes and trees placed beside the trail: world positions, sizes and sprite indices."""

    xs: np.ndarray
    ys: np.ndarray
    widths: np.ndarray
    heights: np.ndarray
    sprites: np.ndarray

    @classmethod
    def scatter(
        cls, rng: np.random.Generator, path: TrailPath, raster: TrailRaster, textures: Textures, config: WorldConfig
    ) -> VegetationField:
        stride = max(1, int(round(config.vegetation_spacing_m / path.step_m)))
        idx = np.arange(0, len(path.xs), stride)
        side = rng.choice([-1.0, 1.0], size=idx.size)
        lateral = side * (config.trail_half_width + config.vegetation_min_clearance + rng.exponential(4.0, idx.size))
        along = rng.uniform(-1.0, 1.0, idx.size)
        heading = path.headings[idx]
        xs = path.xs[idx] + np.cos(heading) * along - np.sin(heading) * lateral
        ys = path.ys[idx] + np.sin(heading) * along + np.cos(heading) * lateral
        keep = raster.clearance_at(xs, ys) > config.trail_half_width + config.vegetation_min_clearance
        n_trees = len(textures.vegetation) - textures.n_bushes
        is_tree = rng.random(idx.size) < 0.3
        sprites = np.where(
            is_tree,
            textures.n_bushes + rng.integers(0, n_trees, idx.size),
            rng.integers(0, textures.n_bushes, idx.size),
        )
        heights = np.where(is_tree, rng.uniform(3.5, 7.5, idx.size), rng.uniform(0.5, 1.5, idx.size))
        aspect = np.array([textures.vegetation[i].aspect for i in sprites])
        widths = heights / aspect * rng.uniform(0.8, 1.25, idx.size)
        return cls(xs[keep], ys[keep], widths[keep], heights[keep], sprites[keep])


@dataclass
class World:
    """Everything static (or wind-driven) in one drive's world."""

    config: WorldConfig
    path: TrailPath
    textures: Textures
    trail: TrailRaster
    vegetation: VegetationField
    vegetation_boards: list[Billboard] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        veg = self.vegetation
        self.vegetation_boards = [
            Billboard(float(x), float(y), float(w), float(h), self.textures.vegetation[int(i)], VEGETATION)
            for x, y, w, h, i in zip(veg.xs, veg.ys, veg.widths, veg.heights, veg.sprites, strict=True)
        ]

    @classmethod
    def build(cls, rng: np.random.Generator, path: TrailPath, config: WorldConfig | None = None) -> World:
        config = config or WorldConfig()
        textures = Textures.build(rng)
        trail = TrailRaster.build(path, config, rng)
        vegetation = VegetationField.scatter(rng, path, trail, textures, config)
        return cls(config, path, textures, trail, vegetation)


@dataclass
class RenderedFrame:
    """One rendered view: linear RGB in [0, 1], per-pixel distance (m) and semantic class ids."""

    image: np.ndarray  # HxWx3 float32
    depth: np.ndarray  # HxW float32, inf for sky
    semantic: np.ndarray  # HxW uint8


def camera_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """3x3 matrix whose columns are the camera's x (right), y (down), z (optical) axes in world."""
    forward = np.array([math.cos(yaw), math.sin(yaw), 0.0])
    left = np.array([-math.sin(yaw), math.cos(yaw), 0.0])
    up = np.array([0.0, 0.0, 1.0])
    z_axis = math.cos(pitch) * forward - math.sin(pitch) * up
    y_axis = -math.sin(pitch) * forward - math.cos(pitch) * up
    x_axis = -left
    x_rolled = math.cos(roll) * x_axis + math.sin(roll) * y_axis
    y_rolled = -math.sin(roll) * x_axis + math.cos(roll) * y_axis
    return np.stack([x_rolled, y_rolled, z_axis], axis=1)


@dataclass
class Renderer:
    """Renders a World from camera poses; per-pixel rays are precomputed once."""

    camera: Camera
    world: World
    _rays: np.ndarray = field(init=False, repr=False)
    _dry: np.ndarray = field(init=False, repr=False)
    _lush: np.ndarray = field(init=False, repr=False)
    _haze: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        cam = self.camera
        u = (np.arange(cam.width, dtype=np.float32) - cam.cx) / cam.fx
        v = (np.arange(cam.height, dtype=np.float32) - cam.cy) / cam.fy
        self._rays = np.stack(np.broadcast_arrays(u[None, :], v[:, None], np.float32(1.0))).astype(np.float32)
        self._dry = np.array([1.25, 1.05, 0.65], np.float32)
        self._lush = np.array([0.8, 1.0, 0.85], np.float32)
        self._haze = np.array([0.68, 0.74, 0.8], np.float32)

    def render(
        self, pose: CameraPose, time_s: float, objects: list[Billboard] | None = None, gain: float = 1.0
    ) -> RenderedFrame:
        """Draw ground, tree line and sky, then billboards (vegetation and `objects`) far to near."""
        cam = self.camera
        rot = camera_rotation(pose.yaw, cam.pitch_rad + pose.pitch, pose.roll)
        dirs = np.tensordot(rot.astype(np.float32), self._rays, axes=1)  # 3xHxW world ray directions
        height = cam.mount_height_m + pose.height
        image = np.zeros((cam.height, cam.width, 3), np.float32)
        depth = np.full((cam.height, cam.width), np.inf, np.float32)
        semantic = np.zeros((cam.height, cam.width), np.uint8)
        sky_rows = self._draw_ground(image, depth, semantic, dirs, pose, height, time_s)
        self._draw_sky(image, depth, semantic, dirs, pose, time_s, sky_rows)
        self._draw_billboards(image, depth, semantic, rot, pose, height, time_s, objects or [])
        if gain != 1.0:
            image *= np.float32(gain)
        return RenderedFrame(image, depth, semantic)

    # --- ground -------------------------------------------------------------------------------

    def _draw_ground(
        self,
        image: np.ndarray,
        depth: np.ndarray,
        semantic: np.ndarray,
        dirs: np.ndarray,
        pose: CameraPose,
        height: float,
        time_s: float,
    ) -> int:
        """Fill the rows that contain ground; return the number of top rows that may contain sky."""
        cfg = self.world.config
        down_all = -dirs[2]
        has_ground = (down_all > 1e-3).any(axis=1)
        has_sky = (down_all <= 1e-3).any(axis=1)
        sky_rows = int(np.flatnonzero(has_sky).max()) + 1 if has_sky.any() else 0
        if not has_ground.any():
            return sky_rows
        g0 = int(np.flatnonzero(has_ground)[0])
        dx, dy, dz = (d[g0:] for d in dirs)
        down = -dz
        is_ground = down > 1e-3
        t = np.float32(height) / np.maximum(down, np.float32(1e-3))
        t = np.minimum(t, np.float32(cfg.treeline_distance * 2))
        gx = t * dx  # ground point relative to the camera
        gy = t * dy
        norm = np.sqrt(dx * dx + dy * dy + dz * dz)
        dist = t * norm
        graze = np.maximum(down / norm, np.float32(0.04))
        footprint = dist / (np.float32(self.camera.fx) * np.sqrt(graze))
        grass = self._mip_sample(self.world.textures.grass, gx, gy, pose, cfg.grass_tile_m, footprint)
        gravel = self._mip_sample(self.world.textures.gravel, gx, gy, pose, cfg.gravel_tile_m, footprint)
        trail = self._sample_trail(gx, gy, pose)
        patches = self._sample_tile(self.world.textures.patches, gx + np.float32(pose.x), gy + np.float32(pose.y),
                                    cfg.patch_period_m)
        lush = patches[..., 0:1]
        grass *= np.float32(0.7) + np.float32(0.5) * patches[..., 1:2]
        grass *= self._dry + lush * (self._lush - self._dry)
        coverage = trail[..., 0:1]
        gravel *= np.float32(1.0) - np.float32(0.35) * trail[..., 1:2]
        ground = grass + coverage * (gravel - grass)
        ground *= self._cloud_shadow(gx + np.float32(pose.x), gy + np.float32(pose.y), time_s)[..., None]
        haze = (np.float32(1.0) - np.exp(-dist / np.float32(cfg.haze_distance)))[..., None]
        ground += haze * (self._haze - ground)
        image[g0:] = ground
        depth[g0:] = np.where(is_ground, dist, np.float32(np.inf))
        semantic[g0:] = np.where(coverage[..., 0] > 0.5, TRAIL, GRASS)
        return sky_rows

    def _mip_sample(
        self,
        levels: list[np.ndarray],
        gx: np.ndarray,
        gy: np.ndarray,
        pose: CameraPose,
        tile_m: float,
        footprint: np.ndarray,
    ) -> np.ndarray:
        """Trilinear texture lookup: per-pixel level from the ground footprint, one remap per row band.

        Within a level's band the texture coordinates stay within a few hundred texels of the
        camera, so remap's BORDER_WRAP does the tiling without any modulo here.
        """
        texels_per_m = levels[0].shape[0] / tile_m
        level = np.log2(np.maximum(footprint * np.float32(texels_per_m), np.float32(1.0)))
        level = np.minimum(level, np.float32(len(levels) - 1))
        row_min, row_max = level.min(axis=1), level.max(axis=1)
        out = np.zeros((*gx.shape, 3), np.float32)
        for index, texture in enumerate(levels):
            rows = np.flatnonzero((row_min < index + 1) & (row_max > index - 1))
            if rows.size == 0:
                continue
            r0, r1 = int(rows[0]), int(rows[-1]) + 1
            weight = np.maximum(np.float32(1.0) - np.abs(level[r0:r1] - np.float32(index)), np.float32(0.0))
            scale = texels_per_m / 2**index
            period = texture.shape[0]
            map_x = gx[r0:r1] * np.float32(scale) + np.float32((pose.x * scale) % period)
            map_y = gy[r0:r1] * np.float32(scale) + np.float32((pose.y * scale) % period)
            sample = cv2.remap(texture, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
            out[r0:r1] += sample * weight[..., None]
        return out

    def _sample_trail(self, gx: np.ndarray, gy: np.ndarray, pose: CameraPose) -> np.ndarray:
        raster = self.world.trail
        map_x = (gx + np.float32(pose.x - raster.origin[0])) / np.float32(raster.resolution_m)
        map_y = (gy + np.float32(pose.y - raster.origin[1])) / np.float32(raster.resolution_m)
        return cv2.remap(raster.layers, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)

    @staticmethod
    def _sample_tile(tile: np.ndarray, wx: np.ndarray, wy: np.ndarray, period_m: float) -> np.ndarray:
        scale = np.float32(tile.shape[0] / period_m)
        map_x = (wx * scale).astype(np.float32)
        map_y = (wy * scale).astype(np.float32)
        return cv2.remap(tile, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)

    def _cloud_density(self, wx: np.ndarray, wy: np.ndarray, time_s: float) -> np.ndarray:
        cfg = self.world.config
        wind_x, wind_y = cfg.wind_mps
        raw = self._sample_tile(
            self.world.textures.clouds, wx - np.float32(wind_x * time_s), wy - np.float32(wind_y * time_s),
            cfg.cloud_period_m,
        )
        return smoothstep(raw, 0.42, 0.7)

    def _cloud_shadow(self, wx: np.ndarray, wy: np.ndarray, time_s: float) -> np.ndarray:
        """Ground brightness under the clouds: the cloud layer seen along the sun direction."""
        cfg = self.world.config
        sx, sy, sz = cfg.sun_direction
        lift = cfg.cloud_altitude / sz
        density = self._cloud_density(wx + np.float32(sx * lift), wy + np.float32(sy * lift), time_s)
        return np.float32(1.0) - np.float32(0.45) * density

    # --- sky and distant tree line -------------------------------------------------------------

    def _draw_sky(
        self,
        image: np.ndarray,
        depth: np.ndarray,
        semantic: np.ndarray,
        dirs: np.ndarray,
        pose: CameraPose,
        time_s: float,
        sky_rows: int,
    ) -> None:
        if sky_rows == 0:
            return
        cfg = self.world.config
        dx, dy, dz = (d[:sky_rows] for d in dirs)
        horizontal = np.sqrt(dx * dx + dy * dy)
        elevation = np.arctan2(dz, horizontal)
        azimuth = np.arctan2(dy, dx)
        sky = dz >= np.float32(-1e-3)  # exactly the pixels the ground pass left out
        up = np.sqrt(np.clip(elevation, 0.0, None) / np.float32(math.pi / 2))[..., None]
        colour = np.array([0.72, 0.8, 0.88], np.float32) + up * np.array([-0.45, -0.35, -0.15], np.float32)
        lift = np.float32(cfg.cloud_altitude) / np.maximum(dz, np.float32(0.02))
        clouds = self._cloud_density(dx * lift + np.float32(pose.x), dy * lift + np.float32(pose.y), time_s)
        clouds *= smoothstep(elevation, 0.03, 0.2)
        cloud_colour = np.float32(0.93) - np.float32(0.25) * clouds[..., None]
        colour += clouds[..., None] * (cloud_colour - colour)
        region = (slice(0, sky_rows),)
        image[region] = np.where(sky[..., None], colour, image[region])
        semantic[region] = np.where(sky, SKY, semantic[region])
        self._draw_treeline(image, depth, semantic, elevation, azimuth)

    def _draw_treeline(
        self,
        image: np.ndarray,
        depth: np.ndarray,
        semantic: np.ndarray,
        elevation: np.ndarray,
        azimuth: np.ndarray,
    ) -> None:
        """Distant hazy forest on the horizon; it turns with the camera, so yaw shows at the horizon."""
        cfg = self.world.config
        tex = self.world.textures
        near_horizon = np.flatnonzero((elevation.min(axis=1) < tex.treeline.max()) & (elevation.max(axis=1) > -0.01))
        if near_horizon.size == 0:
            return
        rows = slice(int(near_horizon[0]), int(near_horizon[-1]) + 1)
        elevation, azimuth = elevation[rows], azimuth[rows]
        bins = tex.treeline.size
        position = (azimuth + np.float32(math.pi)) * np.float32(bins / math.tau)
        index = position.astype(np.int32)
        frac = position - index
        top = tex.treeline[index % bins] * (1 - frac) + tex.treeline[(index + 1) % bins] * frac
        inside = (elevation < top) & (depth[rows] > cfg.treeline_distance)
        if not inside.any():
            return
        map_x = (azimuth + np.float32(math.pi)) * np.float32(500.0)
        map_y = elevation * np.float32(500.0) + np.float32(32.0)
        leaves = cv2.remap(tex.distant, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
        lit = (np.float32(0.6) + np.float32(12.0) * np.maximum(elevation, np.float32(0.0)))[..., None]
        colour = leaves * lit * np.float32(0.7) + self._haze * np.float32(0.3)
        image[rows] = np.where(inside[..., None], colour, image[rows])
        depth[rows] = np.where(inside, np.float32(cfg.treeline_distance), depth[rows])
        semantic[rows] = np.where(inside, VEGETATION, semantic[rows])

    # --- billboards ----------------------------------------------------------------------------

    def _draw_billboards(
        self,
        image: np.ndarray,
        depth: np.ndarray,
        semantic: np.ndarray,
        rot: np.ndarray,
        pose: CameraPose,
        height: float,
        time_s: float,
        objects: list[Billboard],
    ) -> None:
        veg = self.world.vegetation
        cam_pos = np.array([pose.x, pose.y, height])
        forward = np.array([math.cos(pose.yaw), math.sin(pose.yaw)])
        rel_x, rel_y = veg.xs - pose.x, veg.ys - pose.y
        ahead = rel_x * forward[0] + rel_y * forward[1]
        side = np.abs(-rel_x * forward[1] + rel_y * forward[0])
        tall_enough = veg.heights * self.camera.fy > 3.0 * np.maximum(ahead, 1e-3)  # >= 3 px on screen
        visible = (ahead > 0.5) & (ahead < 75.0) & (side < ahead * 0.75 + veg.widths) & tall_enough
        boards = self.world.vegetation_boards
        draw = [(float(np.hypot(rel_x[i], rel_y[i])), boards[i]) for i in np.flatnonzero(visible)]
        for board in objects:
            draw.append((float(np.hypot(board.x - pose.x, board.y - pose.y)), board))
        draw.sort(key=lambda item: -item[0])
        if not draw:
            return
        quads = self._project_boards(draw, rot, cam_pos)
        positions = np.array([[b.x, b.y] for _, b in draw], np.float32)
        shade = self._cloud_shadow(positions[:, 0:1], positions[:, 1:2], time_s)[:, 0]
        for (distance, board), (u, v, ok), light in zip(draw, quads, shade, strict=True):
            if ok:
                self._draw_billboard(image, depth, semantic, board, u, v, distance, float(light))

    def _project_boards(
        self, draw: list[tuple[float, Billboard]], rot: np.ndarray, cam_pos: np.ndarray
    ) -> list[tuple[np.ndarray, np.ndarray, bool]]:
        """Screen corners (bottom-left, bottom-right, top-left, top-right) of every board, vectorised."""
        cam = self.camera
        dist = np.array([d for d, _ in draw])
        base = np.array([[b.x, b.y, 0.0] for _, b in draw])
        size = np.array([[b.width_m, b.height_m] for _, b in draw])
        view = (base[:, :2] - cam_pos[:2]) / np.maximum(dist, 1e-6)[:, None]
        right = np.stack([view[:, 1], -view[:, 0], np.zeros(len(draw))], axis=1) * (size[:, 0:1] / 2)
        up = np.zeros_like(base)
        up[:, 2] = size[:, 1]
        corners = np.stack([base - right, base + right, base - right + up, base + right + up], axis=1)
        cam_pts = (corners - cam_pos) @ rot  # N x 4 x 3 camera coordinates
        z = np.maximum(cam_pts[..., 2], 1e-6)
        u = cam.fx * cam_pts[..., 0] / z + cam.cx
        v = cam.fy * cam_pts[..., 1] / z + cam.cy
        ok = cam_pts[..., 2].min(axis=1) >= 0.2
        return list(zip(u, v, ok, strict=True))

    def _draw_billboard(
        self,
        image: np.ndarray,
        depth: np.ndarray,
        semantic: np.ndarray,
        board: Billboard,
        u: np.ndarray,
        v: np.ndarray,
        distance: float,
        light: float,
    ) -> None:
        """Affine-warp the sprite onto its screen quad and composite it (premultiplied alpha)."""
        cam = self.camera
        x0, x1 = max(int(math.floor(u.min())), 0), min(int(math.ceil(u.max())) + 1, cam.width)
        y0, y1 = max(int(math.floor(v.min())), 0), min(int(math.ceil(v.max())) + 1, cam.height)
        if x1 <= x0 or y1 <= y0:
            return
        screen_w = max(math.hypot(u[1] - u[0], v[1] - v[0]), 1e-3)
        level = min(int(math.log2(max(board.sprite.levels[0].shape[1] / screen_w, 1.0))),
                    len(board.sprite.levels) - 1)
        sprite = board.sprite.levels[level]
        sh, sw = sprite.shape[:2]
        src = np.float32([[-0.5, sh - 0.5], [sw - 0.5, sh - 0.5], [-0.5, -0.5]])
        dst = np.float32([[u[0] - x0, v[0] - y0], [u[1] - x0, v[1] - y0], [u[2] - x0, v[2] - y0]])
        warp = cv2.getAffineTransform(src, dst)
        patch = cv2.warpAffine(sprite, warp, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0))
        alpha = patch[..., 3:4]
        roi = image[y0:y1, x0:x1]
        roi *= np.float32(1.0) - alpha
        roi += patch[..., :3] * np.float32(light)
        solid = alpha[..., 0] > 0.5
        depth[y0:y1, x0:x1][solid] = distance
        semantic[y0:y1, x0:x1][solid] = board.class_id
