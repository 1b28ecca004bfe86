"""rosbag2 I/O without ROS: the `rosbags` library with our ood_msgs types registered.

Bags are how data moves between robots, the demo generator and the offline tools, so one typestore
(standard ROS 2 types plus ood_msgs parsed from the .msg files) serves both writing and reading.
"""
from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from rosbags.rosbag2 import Reader, ReaderError, StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

OOD_MSGS_PACKAGE = "ood_msgs"
_SOURCE_MSG_DIR = Path(__file__).resolve().parents[2] / OOD_MSGS_PACKAGE / "msg"

# Encoding -> (numpy dtype, channels) for the image encodings the project writes.
IMAGE_ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "mono8": (np.dtype(np.uint8), 1),
    "32FC1": (np.dtype(np.float32), 1),
    "32FC2": (np.dtype(np.float32), 2),
    "32FC3": (np.dtype(np.float32), 3),
}


def ood_msgs_dir() -> Path:
    """Folder with the ood_msgs .msg files: the installed share dir first, else this source tree."""
    try:
        from ament_index_python.packages import get_package_share_directory

        installed = Path(get_package_share_directory(OOD_MSGS_PACKAGE)) / "msg"
        if any(installed.glob("*.msg")):
            return installed
    except (ImportError, LookupError, ValueError):
        pass
    if any(_SOURCE_MSG_DIR.glob("*.msg")):
        return _SOURCE_MSG_DIR
    raise FileNotFoundError(
        f"ood_msgs message definitions not found: neither an installed '{OOD_MSGS_PACKAGE}' package "
        f"(ament index) nor {_SOURCE_MSG_DIR}"
    )


def _newest_ros2_store() -> Stores:
    """ROS2_HUMBLE when available (the robot's distribution), else the newest ROS 2 store."""
    if hasattr(Stores, "ROS2_HUMBLE"):
        return Stores.ROS2_HUMBLE
    ros2 = [store for store in Stores if store.name.startswith("ROS2_")]
    return ros2[-1] if ros2 else Stores.LATEST


@functools.lru_cache(maxsize=1)
def typestore() -> Typestore:
    """Standard ROS 2 message types plus ood_msgs, parsed once per process."""
    store = get_typestore(_newest_ros2_store())
    types: dict[str, Any] = {}
    for msg_file in sorted(ood_msgs_dir().glob("*.msg")):
        name = f"{OOD_MSGS_PACKAGE}/msg/{msg_file.stem}"
        types.update(get_types_from_msg(msg_file.read_text(encoding="utf-8"), name))
    store.register(types)
    return store


def _stamp(stamp_ns: int) -> Any:
    time_type = typestore().types["builtin_interfaces/msg/Time"]
    return time_type(sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000))


def header(stamp_ns: int, frame_id: str) -> Any:
    """std_msgs/Header with the stamp split into sec/nanosec."""
    return typestore().types["std_msgs/msg/Header"](stamp=_stamp(stamp_ns), frame_id=frame_id)


def stamp_ns_of(msg: Any) -> int:
    """Header stamp of a message in nanoseconds."""
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def image_msg(array: np.ndarray, encoding: str, stamp_ns: int, frame_id: str) -> Any:
    """sensor_msgs/Image from a row-major HxW or HxWxC array whose dtype/channels match `encoding`."""
    if encoding not in IMAGE_ENCODINGS:
        raise ValueError(f"unsupported image encoding {encoding!r}; use one of {sorted(IMAGE_ENCODINGS)}")
    dtype, channels = IMAGE_ENCODINGS[encoding]
    array = np.asarray(array)
    shape_ok = array.ndim == 2 and channels == 1 or array.ndim == 3 and array.shape[2] == channels
    if not shape_ok or array.dtype != dtype:
        raise ValueError(f"{encoding} needs {dtype} with {channels} channel(s), got {array.dtype} {array.shape}")
    data = np.ascontiguousarray(array)
    height, width = data.shape[:2]
    return typestore().types["sensor_msgs/msg/Image"](
        header=header(stamp_ns, frame_id),
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=0,
        step=width * channels * dtype.itemsize,
        data=data.reshape(-1).view(np.uint8),
    )


def image_array(msg: Any) -> np.ndarray:
    """HxW or HxWxC array (a copy) of a sensor_msgs/Image in one of IMAGE_ENCODINGS."""
    if msg.encoding not in IMAGE_ENCODINGS:
        raise ValueError(f"unsupported image encoding {msg.encoding!r}")
    dtype, channels = IMAGE_ENCODINGS[msg.encoding]
    raw = np.frombuffer(bytes(msg.data), dtype=np.uint8).reshape(msg.height, msg.step)
    row_bytes = msg.width * channels * dtype.itemsize
    pixels = raw[:, :row_bytes].copy().view(dtype.newbyteorder(">" if msg.is_bigendian else "<"))
    shape = (msg.height, msg.width) if channels == 1 else (msg.height, msg.width, channels)
    return pixels.astype(dtype).reshape(shape)


def camera_info_msg(
    width: int, height: int, fx: float, fy: float, cx: float, cy: float, stamp_ns: int, frame_id: str
) -> Any:
    """sensor_msgs/CameraInfo of an undistorted pinhole camera (plumb_bob, zero distortion)."""
    k = np.array([fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0])
    p = np.array([fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0])
    types = typestore().types
    return types["sensor_msgs/msg/CameraInfo"](
        header=header(stamp_ns, frame_id),
        height=height,
        width=width,
        distortion_model="plumb_bob",
        d=np.zeros(5),
        k=k,
        r=np.eye(3).reshape(-1),
        p=p,
        binning_x=0,
        binning_y=0,
        roi=types["sensor_msgs/msg/RegionOfInterest"](
            x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
        ),
    )


def label_msg(
    stamp_ns: int,
    frame_id: str,
    kind: str,
    category: str,
    episode: int,
    onset_frame: int,
    frame: int,
    is_ood: bool,
) -> Any:
    """ood_msgs/FrameLabel: the ground truth of one camera frame."""
    return typestore().types["ood_msgs/msg/FrameLabel"](
        header=header(stamp_ns, frame_id),
        kind=kind,
        category=category,
        episode=episode,
        onset_frame=onset_frame,
        frame=frame,
        is_ood=bool(is_ood),
    )


class BagWriter:
    """Context manager writing CDR messages to a new rosbag2 bag directory (MCAP by default)."""

    def __init__(self, path: Path | str, storage: str = "mcap") -> None:
        plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
        if storage not in plugins:
            raise ValueError(f"unknown bag storage {storage!r}; use 'mcap' or 'sqlite3'")
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f"bag already exists: {self.path}")
        self._writer = Writer(self.path, version=8, storage_plugin=plugins[storage])
        self._connections: dict[str, tuple[Any, str]] = {}

    # The message helpers, reachable from a writer too.
    image_msg = staticmethod(image_msg)
    camera_info_msg = staticmethod(camera_info_msg)
    label_msg = staticmethod(label_msg)

    def __enter__(self) -> BagWriter:
        self._writer.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._writer.close()

    def add_topic(self, topic: str, msgtype: str) -> None:
        """Declare a topic once before writing to it."""
        if topic in self._connections:
            raise ValueError(f"topic {topic} already added")
        connection = self._writer.add_connection(topic, msgtype, typestore=typestore())
        self._connections[topic] = (connection, msgtype)

    def write(self, topic: str, msg: Any, stamp_ns: int) -> None:
        """Serialize `msg` to CDR and write it with the bag timestamp `stamp_ns`."""
        if topic not in self._connections:
            raise KeyError(f"topic {topic} was not added to the bag")
        connection, msgtype = self._connections[topic]
        self._writer.write(connection, int(stamp_ns), typestore().serialize_cdr(msg, msgtype))


def _bag_dir(bag_path: Path | str) -> Path:
    """The rosbag2 directory of a bag given as its directory or one of its storage files."""
    path = Path(bag_path)
    if not path.exists():
        raise FileNotFoundError(f"bag not found: {path}")
    if path.is_file():
        if path.suffix not in (".mcap", ".db3"):
            raise ValueError(f"not a rosbag2 storage file (.mcap or .db3): {path}")
        path = path.parent
    if not (path / "metadata.yaml").is_file():
        raise ValueError(f"not a rosbag2 bag (no metadata.yaml): {path}")
    return path


def read_messages(
    bag_path: Path | str, topics: Iterable[str] | None = None
) -> Iterator[tuple[str, str, int, Any]]:
    """Yield (topic, msgtype, stamp_ns, message) in bag time order from an MCAP or sqlite3 rosbag2 bag.

    `stamp_ns` is the bag (receive) timestamp; use `stamp_ns_of(msg)` for the header stamp.
    """
    path = _bag_dir(bag_path)
    store = typestore()
    wanted = None if topics is None else set(topics)
    try:
        reader = Reader(path)
        reader.open()
    except Exception as exc:  # rosbags raises several unrelated types for damaged bags
        raise ValueError(f"cannot open bag {path}: {exc}") from exc
    try:
        connections = [c for c in reader.connections if wanted is None or c.topic in wanted]
        try:
            for connection, stamp_ns, raw in reader.messages(connections=connections):
                msg = store.deserialize_cdr(raw, connection.msgtype)
                yield connection.topic, connection.msgtype, stamp_ns, msg
        except (ReaderError, KeyError, TypeError, ValueError, IndexError, AssertionError) as exc:
            raise ValueError(f"corrupt bag {path}: {exc}") from exc
    finally:
        reader.close()


def bag_topics(bag_path: Path | str) -> dict[str, tuple[str, int]]:
    """topic -> (msgtype, message count) from a bag's index."""
    path = _bag_dir(bag_path)
    try:
        reader = Reader(path)
        reader.open()
    except Exception as exc:  # same as read_messages
        raise ValueError(f"cannot open bag {path}: {exc}") from exc
    try:
        return {c.topic: (c.msgtype, c.msgcount) for c in reader.connections}
    finally:
        reader.close()
