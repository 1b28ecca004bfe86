"""Frame geometry for the models: crop to the model's aspect ratio, resize, grey, float tensors.

The same functions run in the preprocess node, in training and in evaluation, so a model always sees
frames prepared exactly as they were at training time.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

CROP_MODES = ("center", "stretch")


@dataclass(frozen=True)
class FrameConfig:
    """Model input geometry. `center` crops the largest centred window of the target aspect ratio."""

    width: int = 128
    height: int = 128
    crop: str = "center"

    def __post_init__(self) -> None:
        if self.width < 8 or self.height < 8:
            raise ValueError(f"model input size must be at least 8x8, got {self.width}x{self.height}")
        if self.crop not in CROP_MODES:
            raise ValueError(f"crop must be one of {CROP_MODES}, got {self.crop!r}")


@dataclass(frozen=True)
class CropWindow:
    """Where the model input came from in the source image: x0, y0, width, height (pixels)."""

    x0: int
    y0: int
    width: int
    height: int


def crop_window(src_width: int, src_height: int, cfg: FrameConfig) -> CropWindow:
    """The source window that `prepare_frame` resizes to the model input."""
    if cfg.crop == "stretch":
        return CropWindow(0, 0, src_width, src_height)
    target = cfg.width / cfg.height
    if src_width / src_height > target:
        w = max(1, round(src_height * target))
        return CropWindow((src_width - w) // 2, 0, w, src_height)
    h = max(1, round(src_width / target))
    return CropWindow(0, (src_height - h) // 2, src_width, h)


def prepare_frame(rgb: np.ndarray, cfg: FrameConfig) -> np.ndarray:
    """HxWx3 uint8 RGB of any size -> cfg.height x cfg.width x 3 uint8 RGB (contiguous)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected HxWx3 uint8 RGB, got shape {rgb.shape} dtype {rgb.dtype}")
    win = crop_window(rgb.shape[1], rgb.shape[0], cfg)
    view = rgb[win.y0:win.y0 + win.height, win.x0:win.x0 + win.width]
    if view.shape[0] == cfg.height and view.shape[1] == cfg.width:
        return np.ascontiguousarray(view)
    shrinking = view.shape[0] > cfg.height or view.shape[1] > cfg.width
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(view, (cfg.width, cfg.height), interpolation=interp)


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB -> HxW uint8 luminance."""
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def image_tensor(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB (or NxHxWx3) -> float32 CHW (or NCHW) in [0, 1]: the image models' input."""
    arr = np.asarray(rgb, dtype=np.float32) / 255.0
    return np.ascontiguousarray(np.moveaxis(arr, -1, -3))



def image_transform(src_width: int, src_height: int, cfg: FrameConfig) -> np.ndarray:
    """3x3 pixel transform source -> prepared frame (pixel-centre convention). Left-multiplying a
    camera's K (3x3) or P (3x4) by it gives the matrices of the prepared frame."""
    win = crop_window(src_width, src_height, cfg)
    sx, sy = cfg.width / win.width, cfg.height / win.height
    return np.array([[sx, 0.0, (0.5 - win.x0) * sx - 0.5],
                     [0.0, sy, (0.5 - win.y0) * sy - 0.5],
                     [0.0, 0.0, 1.0]])
