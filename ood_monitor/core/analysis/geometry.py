"""Ground-plane projection of image pixels: where on the ground an anomalous pixel lies.

Frames follow REP-103: the base frame is x forward, y left, z up with the ground at z = 0; the camera's
optical frame is x right, y down, z forward. A camera pose is either parameters (height, pitch positive
looking down, roll, yaw, x/y offset) or a 4x4 base <- camera transform from tf2. Pixels whose ray does
not hit the ground in front of the camera (above the horizon) or hits it beyond `max_range` are dropped.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OPTICAL_TO_BODY = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
"""Rotation body <- optical: optical z (forward) is body x, optical x (right) is body -y, y (down) is -z."""


def rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_y(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class CameraPose:
    """Camera mounting in the base frame (metres, radians; yaw-pitch-roll about z, y, x of the body)."""

    height: float = 1.0
    pitch: float = 0.2
    roll: float = 0.0
    yaw: float = 0.0
    x: float = 0.0
    y: float = 0.0

    def matrix(self) -> np.ndarray:
        """4x4 transform base <- camera optical frame."""
        t = np.eye(4)
        t[:3, :3] = rot_z(self.yaw) @ rot_y(self.pitch) @ rot_x(self.roll) @ OPTICAL_TO_BODY
        t[:3, 3] = (self.x, self.y, self.height)
        return t


def quaternion_matrix(translation, rotation_xyzw) -> np.ndarray:
    """4x4 transform from a translation (x, y, z) and a unit quaternion (x, y, z, w), e.g. a tf2
    TransformStamped's transform."""
    x, y, z, w = (float(v) for v in rotation_xyzw)
    n = x * x + y * y + z * z + w * w
    if not np.isfinite(n) or n < 1e-12:
        raise ValueError(f"invalid quaternion {(x, y, z, w)}")
    s = 2.0 / n
    t = np.eye(4)
    t[:3, :3] = [[1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w)],
                 [s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w)],
                 [s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y)]]
    t[:3, 3] = [float(v) for v in translation]
    return t


def pixel_rays(uv: np.ndarray, k: np.ndarray, d: np.ndarray | None = None) -> np.ndarray:
    """Nx3 unnormalised ray directions in the optical frame (z = 1); distortion D is removed with
    cv2.undistortPoints when any coefficient is non-zero."""
    uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    k = np.asarray(k, dtype=np.float64).reshape(3, 3)
    if d is not None and np.any(np.asarray(d, dtype=np.float64) != 0):
        import cv2

        xy = cv2.undistortPoints(uv.reshape(-1, 1, 2), k, np.asarray(d, dtype=np.float64)).reshape(-1, 2)
    else:
        xy = (uv - k[:2, 2]) / np.array([k[0, 0], k[1, 1]])
        xy[:, 0] -= k[0, 1] * xy[:, 1] / k[0, 0]  # skew
    return np.column_stack([xy, np.ones(len(xy))])


def project_to_ground(uv: np.ndarray, k: np.ndarray, base_from_camera: np.ndarray, d: np.ndarray | None = None,
                      max_range: float = np.inf) -> tuple[np.ndarray, np.ndarray]:
    """(points Mx3 on z = 0 in the base frame, indices into uv of the pixels kept)."""
    rays = pixel_rays(uv, k, d) @ base_from_camera[:3, :3].T
    origin = base_from_camera[:3, 3]
    down = np.flatnonzero(rays[:, 2] < -1e-9)  # the ray descends: below the horizon
    s = -origin[2] / rays[down, 2]
    points = origin + rays[down] * s[:, None]
    dist = np.hypot(points[:, 0] - origin[0], points[:, 1] - origin[1])
    keep = (s > 0) & (dist <= max_range)
    pts = points[keep]
    pts[:, 2] = 0.0
    return pts, down[keep]


def ground_to_pixel(points: np.ndarray, k: np.ndarray, base_from_camera: np.ndarray,
                    d: np.ndarray | None = None) -> np.ndarray:
    """Nx2 pixels of base-frame points (the forward model; used to check the projection)."""
    import cv2

    cam_from_base = np.linalg.inv(base_from_camera)
    rvec, _ = cv2.Rodrigues(cam_from_base[:3, :3])
    dist = np.zeros(5) if d is None else np.asarray(d, dtype=np.float64)
    uv, _ = cv2.projectPoints(np.asarray(points, np.float64).reshape(-1, 1, 3), rvec, cam_from_base[:3, 3],
                              np.asarray(k, np.float64).reshape(3, 3), dist)
    return uv.reshape(-1, 2)


def mask_pixels(mask: np.ndarray, confidence: np.ndarray | None, stride: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(Nx2 pixel centres (u, v), N confidences) of the anomalous pixels on a `stride` grid."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    sub = mask[::stride, ::stride] > 0
    v, u = np.nonzero(sub)
    v, u = v * stride, u * stride
    conf = np.ones(len(u), np.float32) if confidence is None else confidence[v, u].astype(np.float32)
    return np.column_stack([u, v]).astype(np.float64), conf
