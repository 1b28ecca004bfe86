"""Between rosbag2 files and live ROS: play a bag into DDS paced by its recorded times, and record
live topics into a bag. Bags are read and written with `rosbags`, so neither needs rosbag2_py."""
from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from builtin_interfaces.msg import Time
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message, serialize_message
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosgraph_msgs.msg import Clock

from ood_monitor.ros.stage_node import stamp_ns


def message_class(msgtype: str):
    """'sensor_msgs/msg/Image' -> the rclpy class; a clear error when its package is missing."""
    parts = msgtype.split("/")
    if len(parts) != 3:
        raise ValueError(f"not a ROS 2 message type name: {msgtype!r}")
    pkg, kind, name = parts
    try:
        return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"message type {msgtype} is not available in this environment "
                         f"(is its package built and sourced?): {exc}") from exc


def open_reader(bag: str | Path) -> Reader:
    path = Path(bag)
    if not path.exists():
        raise FileNotFoundError(f"bag not found: {path}")
    if path.is_file():  # a .mcap/.db3 inside its bag directory
        path = path.parent
    try:
        reader = Reader(path)
        reader.open()
    except Exception as exc:
        raise ValueError(f"cannot open bag {path}: {exc}") from exc
    return reader


@dataclass
class PlaybackConfig:
    rate: float = 1.0
    loop: bool = False
    topics: list[str] = field(default_factory=list)
    remap: dict[str, str] = field(default_factory=dict)
    start_delay_s: float = 0.5
    clock: bool = False  # publish /clock with the bag's time, for nodes running with use_sim_time
    restamp: bool = False  # shift header stamps to "now" (each loop continues forward, like a live camera)
    on_publish: Callable[[str, object], None] | None = None  # (topic, msg) after each publication

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise ValueError(f"rate must be positive, got {self.rate}")


class BagPlayer:
    """Publishes a bag's messages on `node`, paced by the recorded receive times (divided by rate)."""

    def __init__(self, node: Node, bag: str | Path, cfg: PlaybackConfig | None = None) -> None:
        self.node = node
        self.bag = Path(bag)
        self.cfg = cfg or PlaybackConfig()
        self.published = 0
        self._pass_origin: tuple[int, int] | None = None
        reader = open_reader(self.bag)
        try:
            wanted = set(self.cfg.topics)
            missing = wanted - {c.topic for c in reader.connections}
            if missing:
                raise ValueError(f"topics not in {self.bag}: {sorted(missing)}")
            self._connections = [c for c in reader.connections if not wanted or c.topic in wanted]
            self.total = sum(c.msgcount for c in self._connections)
        finally:
            reader.close()
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self._types = {c.topic: message_class(c.msgtype) for c in self._connections}
        self._pubs = {t: node.create_publisher(cls, self.cfg.remap.get(t, t), qos) for t, cls in self._types.items()}
        self._clock_pub = node.create_publisher(Clock, "/clock", qos) if self.cfg.clock else None

    def play(self, stop: threading.Event | None = None) -> int:
        """Blocks until the bag is played (forever with loop, until `stop` is set)."""
        stop = stop or threading.Event()
        if stop.wait(self.cfg.start_delay_s):
            return self.published
        while not stop.is_set():
            self._play_once(stop)
            if not self.cfg.loop:
                break
        return self.published

    def _play_once(self, stop: threading.Event) -> None:
        reader = open_reader(self.bag)
        try:
            ids = {c.id for c in self._connections}
            conns = [c for c in reader.connections if c.id in ids]
            wall0 = time.monotonic()
            bag0 = None
            self._pass_origin = None
            for conn, stamp, raw in reader.messages(connections=conns):
                bag0 = stamp if bag0 is None else bag0
                delay = wall0 + (stamp - bag0) * 1e-9 / self.cfg.rate - time.monotonic()
                if delay > 0 and stop.wait(delay):
                    return
                if self._clock_pub is not None:
                    self._clock_pub.publish(Clock(clock=Time(sec=stamp // 10**9, nanosec=stamp % 10**9)))
                msg = deserialize_message(bytes(raw), self._types[conn.topic])
                if self.cfg.restamp:
                    self._restamp(msg)
                self._pubs[conn.topic].publish(msg)
                self.published += 1
                if self.cfg.on_publish is not None:
                    self.cfg.on_publish(conn.topic, msg)
        finally:
            reader.close()

    def _restamp(self, msg) -> None:
        """Stamps from the pass's start time on, spaced by recorded time over rate: a looped bag reads as
        one camera that keeps running at the played rate, with no jump back at each loop. Image and
        camera_info of one frame keep equal stamps."""
        header = getattr(msg, "header", None)
        if header is None:
            return
        stamp = stamp_ns(header)
        if self._pass_origin is None:
            self._pass_origin = (stamp, self.node.get_clock().now().nanoseconds)
        bag0, now0 = self._pass_origin
        shifted = now0 + int(round((stamp - bag0) / self.cfg.rate))
        header.stamp = Time(sec=shifted // 10**9, nanosec=shifted % 10**9)


class BagRecorder:
    """Records live topics (raw CDR, no conversion) into a rosbag2 bag (MCAP by default); reliable,
    keep-all subscriptions, so nothing a reliable publisher sends is lost while the executor is busy."""

    def __init__(self, node: Node, out: str | Path, topics: Iterable[tuple[str, str]],
                 storage: str = "mcap", qos: QoSProfile | None = None,
                 edits: dict[str, Callable] | None = None) -> None:
        """`edits`: topic -> function taking a message and returning the one to write (e.g. without a bulky
        field); those topics are deserialized and serialized again, the others written as received."""
        from ood_monitor.data.bags import typestore

        self.out = Path(out)
        if self.out.exists():
            raise FileExistsError(f"output bag exists: {self.out}")
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._writer = Writer(self.out, version=8, storage_plugin=storage_plugin(storage))
        self._writer.open()
        ts = typestore()
        # KEEP_ALL: a recorder never drops. With KEEP_LAST(50) the reader cache overwrote messages whenever the
        # executor fell behind for 50 frames (seen on a loaded 2-core machine: 76 of 96 frames recorded)
        qos = qos or QoSProfile(depth=1000, history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE)
        self._subs = []
        edits = edits or {}
        for topic, msgtype in topics:
            conn = self._writer.add_connection(topic, msgtype, typestore=ts)
            write = self._writer_callback(topic, conn)
            edit = edits.get(topic)
            callback = write if edit is None else (lambda msg, e=edit, w=write: w(serialize_message(e(msg))))
            self._subs.append(node.create_subscription(message_class(msgtype), topic, callback, qos,
                                                       raw=edit is None))
        self._node = node

    def _writer_callback(self, topic: str, conn):
        def write(raw: bytes) -> None:
            with self._lock:
                if self._writer is None:
                    return
                self._writer.write(conn, self._node.get_clock().now().nanoseconds, raw)
                self.counts[topic] = self.counts.get(topic, 0) + 1
        return write

    def close(self) -> None:
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        for sub in self._subs:
            self._node.destroy_subscription(sub)
        self._subs = []


def storage_plugin(name: str) -> StoragePlugin:
    plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
    if name not in plugins:
        raise ValueError(f"storage must be one of {sorted(plugins)}, got {name!r}")
    return plugins[name]
