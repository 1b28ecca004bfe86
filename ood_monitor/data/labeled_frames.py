"""Labelled camera frames read back from a rosbag2 bag or an image folder, for training and evaluation.

Both sources give the same `LabeledFrame`s, so evaluation code never cares where the data came from.
Bag topics are paired by exact header stamp; frames without ground truth count as nominal.
"""
from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ood_monitor.data import bags
from ood_monitor.data.labels import UNLABELLED, ClassInfo, LabelSet, LabelSpec, load_colormap

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
BAG_SUFFIXES = (".mcap", ".db3")
DEFAULT_FPS = 15.0
DEFAULT_MASK_TOPIC = "/ood/gt/mask"
PAIRING_WINDOW = 64  # frames kept waiting for their other topics before being emitted incomplete


@dataclass
class LabeledFrame:
    """One camera frame with its ground truth (mask/semantic None when the source has none)."""

    index: int
    stamp_ns: int
    image: np.ndarray  # HxWx3 uint8 RGB
    mask: np.ndarray | None  # HxW uint8, 255 = anomalous
    semantic: np.ndarray | None  # HxW uint8 class ids (classes.json or a colour map; 255 = unlabelled)
    kind: str = "nominal"
    category: str = "in_distribution"
    episode: int = 0
    onset_frame: int = 0
    is_ood: bool = False


def load_classes(path: Path | str) -> dict[int, ClassInfo]:
    """Classes from a classes.json file, or from the classes.json of a dataset containing `path`."""
    path = Path(path)
    candidates = [path] if path.is_file() else [p / "classes.json" for p in (path, *path.parents[:3])]
    for candidate in candidates:
        if candidate.is_file():
            return {c.id: c for c in load_colormap(candidate)}
    raise FileNotFoundError(f"no classes.json at or above {path}")


def is_bag(path: Path | str) -> bool:
    """True for a rosbag2 directory (metadata.yaml) or one of its .mcap/.db3 files."""
    path = Path(path)
    return (path.is_file() and path.suffix in BAG_SUFFIXES) or (path / "metadata.yaml").is_file()


def iter_frames(
    path: Path | str,
    image_topic: str = "/camera/image_raw",
    mask_topic: str = DEFAULT_MASK_TOPIC,
    semantic_topic: str = "/ood/gt/semantic",
    label_topic: str = "/ood/gt/label",
    labels: LabelSpec | None = None,
    start: int = 0,
) -> Iterator[LabeledFrame]:
    """Frames in order from a rosbag2 bag (dir or file) or an image folder (with or without labels).

    `labels` reads ground truth the way datasets such as RUGD give it: colour label PNGs (folders only)
    and a class colour file naming the anomaly classes; without label PNGs, the semantic class ids of
    the data become masks. A frame without a label row/message is OOD when its mask has any pixel.
    `start`: begin at that frame (a chunk of a long recording); the frames before it still number the
    positions and mask episodes, but images are decoded only where their labels need them."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such bag or image folder: {path}")
    label_set = labels.resolve(path) if labels is not None else None
    if is_bag(path):
        if label_set is not None and label_set.labels_dir is not None:
            raise ValueError(f"label PNGs ({label_set.labels_dir}) go with an image folder, not a bag ({path})")
        yield from _bag_frames(path, image_topic, mask_topic, semantic_topic, label_topic, label_set, start)
    elif path.is_dir():
        yield from _folder_frames(path, label_set, start)
    else:
        raise ValueError(f"not a rosbag2 bag or an image folder: {path}")


def frame_count(path: Path | str, image_topic: str = "/camera/image_raw") -> int | None:
    """How many frames `iter_frames` yields, from the bag's index or the folder's listing (no frame is
    read; images sharing a stamp in a bag count once each here); None when the input cannot say, e.g. it
    cannot be opened: reading it will report why."""
    path = Path(path)
    try:
        if is_bag(path):
            return bags.bag_topics(path).get(image_topic, ("", 0))[1]
        frames_dir = path / "frames"
        return len(_images_in(frames_dir if frames_dir.is_dir() else path))
    except (OSError, ValueError):
        return None


@dataclass
class _MaskEpisodes:
    """Labels for frames whose only ground truth is a mask: each run of frames with anomaly pixels is
    one OOD episode (1, 2, ...) with its first frame as onset, numbered as the demo's labels.csv."""

    count: int = 0
    onset: int | None = None

    def label(self, frame: LabeledFrame, label_set: LabelSet | None) -> None:
        if frame.mask is None and frame.semantic is not None and label_set is not None:
            frame.mask = label_set.mask(frame.semantic)
        frame.is_ood = bool(frame.mask is not None and frame.mask.any())
        if not frame.is_ood:
            self.onset = None
            return
        if self.onset is None:
            self.count, self.onset = self.count + 1, frame.index
        frame.kind, frame.category, frame.episode, frame.onset_frame = "anomaly", "object", self.count, self.onset


# --- bags ------------------------------------------------------------------------------------


def rgb_from_image_msg(msg: Any) -> np.ndarray:
    """HxWx3 RGB uint8 from an rgb8, bgr8 or mono8 sensor_msgs/Image."""
    if msg.encoding not in ("rgb8", "bgr8", "mono8"):
        raise ValueError(f"camera image encoding {msg.encoding!r} not supported (use rgb8, bgr8 or mono8)")
    array = bags.image_array(msg)
    if msg.encoding == "bgr8":
        return np.ascontiguousarray(array[..., ::-1])
    if msg.encoding == "mono8":
        return np.repeat(array[..., None], 3, axis=2)
    return array


def _bag_frames(path: Path, image_topic: str, mask_topic: str, semantic_topic: str, label_topic: str,
                label_set: LabelSet | None, start: int = 0) -> Iterator[LabeledFrame]:
    present = bags.bag_topics(path)
    if image_topic not in present:
        raise ValueError(f"bag {path} has no image topic {image_topic} (topics: {sorted(present)})")
    roles = {image_topic: "image", mask_topic: "mask", semantic_topic: "semantic", label_topic: "label"}
    roles = {topic: role for topic, role in roles.items() if topic in present}
    expected = set(roles.values())
    pending: dict[int, dict[str, Any]] = {}
    position = 0
    episodes = _MaskEpisodes()
    for topic, _msgtype, _bag_stamp, msg in bags.read_messages(path, roles):
        pending.setdefault(bags.stamp_ns_of(msg), {})[roles[topic]] = msg
        while pending:
            oldest = min(pending)
            parts = pending[oldest]
            if set(parts) != expected and len(pending) <= PAIRING_WINDOW:
                break
            del pending[oldest]
            if "image" in parts:
                yield from _bag_frame(oldest, parts, position, episodes, label_set, start)
                position += 1
    for stamp in sorted(pending):
        if "image" in pending[stamp]:
            yield from _bag_frame(stamp, pending[stamp], position, episodes, label_set, start)
            position += 1


def _bag_frame(stamp_ns: int, parts: dict[str, Any], position: int, episodes: _MaskEpisodes,
               label_set: LabelSet | None, start: int) -> Iterator[LabeledFrame]:
    """The frame at `position`, if it is not before `start`; one before it is built only when it has no
    label message (its mask then numbers the episodes)."""
    if position >= start or "label" not in parts:
        frame = _frame_from_messages(stamp_ns, parts, position, episodes, label_set)
        if position >= start:
            yield frame


def _frame_from_messages(stamp_ns: int, parts: dict[str, Any], position: int, episodes: _MaskEpisodes,
                         label_set: LabelSet | None) -> LabeledFrame:
    label = parts.get("label")
    frame = LabeledFrame(
        index=int(label.frame) if label is not None else position,
        stamp_ns=stamp_ns,
        image=rgb_from_image_msg(parts["image"]),
        mask=_mono(parts.get("mask")),
        semantic=_mono(parts.get("semantic")),
    )
    if label is not None:
        frame.kind, frame.category = str(label.kind), str(label.category)
        frame.episode, frame.onset_frame, frame.is_ood = int(label.episode), int(label.onset_frame), bool(label.is_ood)
    else:
        episodes.label(frame, label_set)
    return frame


def _mono(msg: Any) -> np.ndarray | None:
    if msg is None:
        return None
    if msg.encoding != "mono8":
        raise ValueError(f"label image encoding must be mono8, got {msg.encoding!r}")
    return bags.image_array(msg)


# --- folders ---------------------------------------------------------------------------------


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _read_labels(path: Path) -> dict[int, dict[str, str]]:
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as handle:
        return {int(row["frame"]): row for row in csv.DictReader(handle)}


def _folder_frames(folder: Path, label_set: LabelSet | None, start: int = 0) -> Iterator[LabeledFrame]:
    frames_dir = folder / "frames"
    image_dir = frames_dir if frames_dir.is_dir() else folder
    images = _images_in(image_dir)
    if not images:
        raise ValueError(f"no images (.png/.jpg) in {image_dir}")
    colour = label_set if label_set is not None and label_set.labels_dir is not None else None
    if colour is not None and not any(colour.label_path(p.stem) for p in images):
        raise ValueError(f"no label PNG in {colour.labels_dir} is named like an image of {image_dir} "
                         f"(e.g. {images[0].stem}.png)")
    labels = _read_labels(folder / "labels.csv")
    episodes = _MaskEpisodes()
    unlabelled: Counter[str] = Counter()  # pixels of colours in no class, label images with some
    for position, image_path in enumerate(images):
        index = int(image_path.stem) if image_path.stem.isdigit() else position
        row = labels.get(index)
        if position < start and (row or colour is None):  # before a chunk: only what numbers the episodes
            if not row:
                episodes.label(LabeledFrame(index=index, stamp_ns=0, image=None,
                                            mask=_read_mono(folder / "masks" / image_path.name),
                                            semantic=_read_mono(folder / "semantic" / image_path.name)), label_set)
            continue
        frame = LabeledFrame(
            index=index,
            stamp_ns=int(row["stamp_ns"]) if row else int(round(position * 1e9 / DEFAULT_FPS)),
            image=_read_rgb(image_path),
            mask=_read_mono(folder / "masks" / image_path.name),
            semantic=_read_mono(folder / "semantic" / image_path.name),
        )
        if colour is not None:
            _read_colour_label(frame, colour, image_path.stem, unlabelled)
        if row:
            frame.kind, frame.category = row["kind"], row["category"]
            frame.episode, frame.onset_frame = int(row["episode"]), int(row["onset_frame"])
            frame.is_ood = row["is_ood"].strip().lower() in ("1", "true")
        else:
            episodes.label(frame, label_set)
        if position >= start:
            yield frame
    if unlabelled["pixels"]:
        log.warning("%d pixels in %d label images of %s have colours of no class: ignored in evaluation",
                    unlabelled["pixels"], unlabelled["images"], colour.labels_dir)


def _read_colour_label(frame: LabeledFrame, label_set: LabelSet, stem: str, unlabelled: Counter[str]) -> None:
    """Class ids and anomaly mask of the frame from its colour label PNG (none: no ground truth)."""
    path = label_set.label_path(stem)
    if path is None:
        frame.semantic = frame.mask = None
        return
    frame.semantic = label_set.read(path, frame.image.shape[:2])
    frame.mask = label_set.mask(frame.semantic)
    missing = int(np.count_nonzero(frame.semantic == UNLABELLED))
    unlabelled["pixels"] += missing
    unlabelled["images"] += missing > 0


def _read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot decode image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _read_mono(path: Path) -> np.ndarray | None:
    if not path.is_file():
        return None
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise ValueError(f"cannot decode label image {path}")
    return image
