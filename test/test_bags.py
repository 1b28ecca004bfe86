"""rosbag2 I/O without ROS: message helpers, MCAP/sqlite3 round trips, errors, reading frames back."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from ood_monitor.data import bags
from ood_monitor.data.labeled_frames import LabeledFrame, iter_frames

STAMP = 1_700_000_123_456_789_012


def test_typestore_has_ood_msgs_and_standard_types() -> None:
    store = bags.typestore()
    assert bags.typestore() is store  # cached
    for name in ("FrameLabel", "OODScore", "AnomalyMask", "AnomalyRegion", "SynthesisResult"):
        assert f"ood_msgs/msg/{name}" in store.types
    label = bags.label_msg(STAMP, "camera", "fog", "global", 3, 40, 45, True)
    assert (label.kind, label.category, label.episode, label.onset_frame, label.frame) == ("fog", "global", 3, 40, 45)
    assert bags.stamp_ns_of(label) == STAMP
    assert label.header.stamp.sec == STAMP // 10**9 and label.header.stamp.nanosec == STAMP % 10**9


def test_msg_definitions_fall_back_to_the_source_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ament_index_python.packages", None)  # import fails
    found = bags.ood_msgs_dir()
    assert (found / "FrameLabel.msg").is_file()
    assert found == Path(bags.__file__).resolve().parents[2] / "ood_msgs" / "msg"


@pytest.mark.parametrize(
    ("encoding", "shape", "dtype", "step"),
    [("rgb8", (5, 7, 3), np.uint8, 21), ("mono8", (5, 7), np.uint8, 7),
     ("32FC1", (5, 7), np.float32, 28), ("32FC2", (5, 7, 2), np.float32, 56)],
)
def test_image_msg_round_trip(encoding: str, shape: tuple[int, ...], dtype: type, step: int) -> None:
    rng = np.random.default_rng(0)
    array = (rng.random(shape) * 200).astype(dtype)
    msg = bags.image_msg(array, encoding, STAMP, "camera")
    assert (msg.height, msg.width, msg.step, msg.encoding) == (5, 7, step, encoding)
    assert len(msg.data) == step * 5
    # row-major: the first row's bytes come first
    assert bytes(msg.data[:step]) == np.ascontiguousarray(array[0]).tobytes()
    wire = bags.typestore().serialize_cdr(msg, "sensor_msgs/msg/Image")
    back = bags.image_array(bags.typestore().deserialize_cdr(wire, "sensor_msgs/msg/Image"))
    np.testing.assert_array_equal(back, array)


def test_image_msg_rejects_mismatched_arrays() -> None:
    with pytest.raises(ValueError, match="rgb8"):
        bags.image_msg(np.zeros((4, 4), np.uint8), "rgb8", 0, "camera")
    with pytest.raises(ValueError, match="32FC1"):
        bags.image_msg(np.zeros((4, 4), np.uint8), "32FC1", 0, "camera")
    with pytest.raises(ValueError, match="unsupported"):
        bags.image_msg(np.zeros((4, 4), np.uint8), "yuv422", 0, "camera")


def test_camera_info_is_an_undistorted_pinhole() -> None:
    info = bags.camera_info_msg(320, 240, 256.0, 250.0, 159.5, 119.5, STAMP, "camera")
    assert (info.width, info.height, info.distortion_model) == (320, 240, "plumb_bob")
    np.testing.assert_array_equal(info.d, np.zeros(5))
    np.testing.assert_array_equal(info.k.reshape(3, 3), [[256, 0, 159.5], [0, 250, 119.5], [0, 0, 1]])
    np.testing.assert_array_equal(info.p.reshape(3, 4)[:, :3], info.k.reshape(3, 3))
    np.testing.assert_array_equal(info.r.reshape(3, 3), np.eye(3))
    bags.typestore().serialize_cdr(info, "sensor_msgs/msg/CameraInfo")


def _write_small_bag(path: Path, storage: str) -> list[np.ndarray]:
    """Three frames written out of time order: bgr8 / mono8 images, masks, labels (one label missing)."""
    rng = np.random.default_rng(1)
    rgbs = [(rng.random((6, 8, 3)) * 255).astype(np.uint8) for _ in range(3)]
    with bags.BagWriter(path, storage=storage) as writer:
        writer.add_topic("/camera/image_raw", "sensor_msgs/msg/Image")
        writer.add_topic("/ood/gt/mask", "sensor_msgs/msg/Image")
        writer.add_topic("/ood/gt/label", "ood_msgs/msg/FrameLabel")
        for i in (2, 0, 1):
            stamp = STAMP + i * 66_666_667
            if i == 1:
                image = bags.image_msg(rgbs[i].mean(axis=2).astype(np.uint8), "mono8", stamp, "camera")
                rgbs[i] = np.repeat(rgbs[i].mean(axis=2).astype(np.uint8)[..., None], 3, axis=2)
            else:
                image = bags.image_msg(np.ascontiguousarray(rgbs[i][..., ::-1]), "bgr8", stamp, "camera")
            writer.write("/camera/image_raw", image, stamp)
            writer.write("/ood/gt/mask", bags.image_msg(np.full((6, 8), 255 * (i == 2), np.uint8), "mono8", stamp, "camera"), stamp)
            if i != 0:
                label = bags.label_msg(stamp, "camera", "fog" if i == 2 else "nominal",
                                       "global" if i == 2 else "in_distribution", i, i, i, i == 2)
                writer.write("/ood/gt/label", label, stamp)
    return rgbs


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bag_round_trip(tmp_path: Path, storage: str) -> None:
    bag = tmp_path / f"bag_{storage}"
    rgbs = _write_small_bag(bag, storage)
    suffix = ".mcap" if storage == "mcap" else ".db3"
    assert (bag / "metadata.yaml").is_file() and any(bag.glob(f"*{suffix}"))
    messages = list(bags.read_messages(bag))
    assert [s for _, _, s, _ in messages] == sorted(s for _, _, s, _ in messages)  # time order
    assert len(messages) == 8
    assert {t for t, _, _, _ in bags.read_messages(bag, topics=["/ood/gt/label"])} == {"/ood/gt/label"}
    assert bags.bag_topics(bag)["/camera/image_raw"] == ("sensor_msgs/msg/Image", 3)

    frames = list(iter_frames(next(bag.glob(f"*{suffix}"))))  # the storage file works too
    assert [f.stamp_ns for f in frames] == [STAMP + i * 66_666_667 for i in range(3)]
    for frame, rgb in zip(frames, rgbs, strict=True):
        assert isinstance(frame, LabeledFrame)
        np.testing.assert_array_equal(frame.image, rgb)  # bgr8 and mono8 both come back as RGB
        assert frame.semantic is None
    assert (frames[0].kind, frames[0].is_ood, frames[0].index) == ("nominal", False, 0)  # no label: nominal
    assert (frames[2].kind, frames[2].category, frames[2].is_ood, frames[2].episode) == ("fog", "global", True, 2)
    assert frames[2].mask is not None and frames[2].mask.min() == 255 and frames[0].mask.max() == 0


def test_missing_and_corrupt_bags_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="bag not found"):
        list(bags.read_messages(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError):
        list(iter_frames(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="metadata.yaml"):
        list(bags.read_messages(tmp_path / "empty"))
    for storage in ("mcap", "sqlite3"):
        bag = tmp_path / f"broken_{storage}"
        _write_small_bag(bag, storage)
        storage_file = next(p for p in bag.iterdir() if p.suffix in (".mcap", ".db3"))
        storage_file.write_bytes(storage_file.read_bytes()[:200])
        with pytest.raises(ValueError, match="bag"):
            list(bags.read_messages(bag))
    shutil.rmtree(tmp_path / "broken_mcap")
    with pytest.raises(FileExistsError):
        bags.BagWriter(tmp_path / "broken_sqlite3")
    with pytest.raises(ValueError, match="storage"):
        bags.BagWriter(tmp_path / "x", storage="rosbag1")


def test_plain_image_folder_reads_as_nominal(tmp_path: Path) -> None:
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"img_{i}.jpg"), np.full((10, 12, 3), (10 * i, 50, 200), np.uint8))
    frames = list(iter_frames(tmp_path))
    assert [f.index for f in frames] == [0, 1, 2]
    assert all(f.kind == "nominal" and not f.is_ood and f.mask is None for f in frames)
    assert frames[0].image.shape == (10, 12, 3)
    assert abs(int(frames[0].image[0, 0, 0]) - 200) <= 3  # BGR on disk -> RGB in memory
    assert frames[1].stamp_ns > frames[0].stamp_ns
    with pytest.raises(ValueError, match="no images"):
        list(iter_frames(tmp_path / "sub" if (tmp_path / "sub").mkdir() is None else tmp_path))
