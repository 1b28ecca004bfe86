"""Ground-plane projection with known camera poses."""
from __future__ import annotations

import numpy as np
import pytest

from ood_monitor.core.analysis.geometry import (
    CameraPose,
    ground_to_pixel,
    mask_pixels,
    project_to_ground,
    quaternion_matrix,
)

K = np.array([[600.0, 0.0, 319.5], [0.0, 600.0, 239.5], [0.0, 0.0, 1.0]])


def roundtrip(pose: CameraPose, ground_xy, d=None, rounding=True):
    truth = np.array([[*ground_xy, 0.0]])
    uv = ground_to_pixel(truth, K, pose.matrix(), d)
    if rounding:
        uv = np.round(uv)  # a mask pixel, not a sub-pixel position
    pts, idx = project_to_ground(uv, K, pose.matrix(), d)
    assert list(idx) == [0]
    return pts[0], truth[0], uv[0]


@pytest.mark.parametrize("pose,xy", [
    (CameraPose(height=1.0, pitch=0.2), (5.0, 0.0)),
    (CameraPose(height=1.0, pitch=0.2), (5.0, 1.2)),
    (CameraPose(height=1.2, pitch=0.15, roll=0.1), (5.0, -0.8)),
    (CameraPose(height=0.8, pitch=0.2, yaw=0.5), (4.4, 2.4)),  # 5 m away, looking 0.5 rad left
    (CameraPose(height=1.0, pitch=0.25, roll=-0.05, yaw=-0.3, x=0.4, y=-0.1), (5.0, -1.5)),
])
def test_mask_pixel_lands_within_5cm_at_5m(pose, xy):
    got, truth, _ = roundtrip(pose, xy)
    assert np.linalg.norm(got - truth) < 0.05, (got, truth)
    exact, truth, _ = roundtrip(pose, xy, rounding=False)
    assert np.linalg.norm(exact - truth) < 1e-6


def test_conventions_pitch_down_and_yaw_left():
    pose = CameraPose(height=1.0, pitch=0.2)
    _, _, uv = roundtrip(pose, (3.0, 0.0), rounding=False)  # 0.32 rad below horizontal, camera at 0.2
    assert uv[0] == pytest.approx(319.5) and uv[1] > 239.5  # below the image centre
    _, _, uv = roundtrip(pose, (8.0, 0.0), rounding=False)  # 0.12 rad: above the optical axis
    assert uv[1] < 239.5
    left = CameraPose(height=1.0, pitch=0.2, yaw=0.3)
    _, _, uv = roundtrip(left, (3.0, 0.0), rounding=False)
    assert uv[0] > 319.5  # camera turned left: a point straight ahead appears on the right


def test_distortion_is_removed():
    d = np.array([-0.25, 0.08, 0.001, -0.001, 0.0])
    pose = CameraPose(height=1.0, pitch=0.2)
    got, truth, _ = roundtrip(pose, (3.0, 2.0), d=d)  # off-axis, where distortion is strong
    assert np.linalg.norm(got - truth) < 0.05
    uv = ground_to_pixel(np.array([[3.0, 2.0, 0.0]]), K, pose.matrix(), d)
    wrong, _ = project_to_ground(uv, K, pose.matrix(), None)  # ignoring D lands elsewhere
    assert np.linalg.norm(wrong[0] - truth) > 0.1


def test_horizon_and_sky_pixels_are_discarded():
    pose = CameraPose(height=1.0, pitch=0.0)  # level camera: the horizon is the middle row
    uv = np.array([[320.0, 100.0], [320.0, 239.5], [320.0, 400.0]])
    pts, idx = project_to_ground(uv, K, pose.matrix())
    assert list(idx) == [2]
    assert pts[0][0] == pytest.approx(600.0 / 160.5, rel=1e-6)  # h * f / (v - cy)
    pts, idx = project_to_ground(uv[2:], K, pose.matrix(), max_range=3.0)
    assert len(idx) == 0


def test_rolled_camera_tilts_the_horizon():
    pose = CameraPose(height=1.0, pitch=0.0, roll=0.2)
    # a row just below the centre: the side that roll lowers sees ground, the other side sky
    uv = np.array([[20.0, 250.0], [620.0, 250.0]])
    _, idx = project_to_ground(uv, K, pose.matrix())
    assert len(idx) == 1


def test_quaternion_matrix_matches_pose_matrix():
    pose = CameraPose(height=1.1, pitch=0.3, roll=0.1, yaw=-0.4, x=0.2, y=0.05)
    m = pose.matrix()
    from scipy.spatial.transform import Rotation

    q = Rotation.from_matrix(m[:3, :3]).as_quat()  # x, y, z, w
    np.testing.assert_allclose(quaternion_matrix(m[:3, 3], q), m, atol=1e-12)
    with pytest.raises(ValueError):
        quaternion_matrix((0, 0, 0), (0, 0, 0, 0))


def test_mask_pixels_subsamples_on_a_grid():
    mask = np.zeros((10, 10), np.uint8)
    mask[2:6, 2:6] = 255
    conf = np.full((10, 10), 0.7, np.float32)
    uv, c = mask_pixels(mask, conf, stride=2)
    assert sorted(map(tuple, uv.astype(int))) == [(2, 2), (2, 4), (4, 2), (4, 4)]
    assert np.allclose(c, 0.7)
