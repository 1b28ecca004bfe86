"""Colour-coded label images (RUGD and similar off-road datasets) read as class ids and anomaly masks.

Such datasets label every pixel with a class colour and name the colours in a class file; which
classes count as anomalies is the user's choice (e.g. `pole,vehicle`), so it is given on the command
line, not stored in the data. Colours that no class names (JPEG-damaged labels, unlabelled regions) decode to the
reserved id `UNLABELLED`, which evaluation ignores. ROS-free: numpy and OpenCV only.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

UNLABELLED = 255  # class id of pixels whose colour is in no class (never a class of the file)
LABEL_SUFFIX = ".png"  # label images must be lossless
COLORMAP_GLOBS = ("*colormap*.txt", "*colormap*.csv", "classes.json")


@dataclass(frozen=True)
class ClassInfo:
    """One semantic class of the label images."""

    id: int
    name: str
    colour: tuple[int, int, int]
    anomaly: bool


@dataclass(frozen=True)
class LabelSpec:
    """How a folder's ground truth is given: colour label PNGs named like the frames (`labels_dir`; None:
    the data's own masks/semantic ids), the class colour file (None: one found next to the labels or the
    data) and the class names that are anomalies."""

    labels_dir: Path | None = None
    colormap: Path | None = None
    anomaly_classes: tuple[str, ...] = ()
    ignore_classes: tuple[str, ...] = ("void", "unknown")

    def resolve(self, data: Path | str | None = None) -> LabelSet:
        """The classes read once, the anomaly names checked against them."""
        if self.labels_dir is not None and not Path(self.labels_dir).is_dir():
            raise FileNotFoundError(f"label folder not found: {self.labels_dir}")
        colormap = self.colormap or find_colormap([p for p in (self.labels_dir, data) if p is not None])
        classes = tuple(load_colormap(colormap, self.anomaly_classes))
        if not any(c.anomaly for c in classes):
            raise ValueError(f"no anomaly classes in {colormap}: name them with --anomaly-classes "
                             f"(classes: {_names(classes)})")
        ignore = {n.lower() for n in self.ignore_classes}
        return LabelSet(classes, None if self.labels_dir is None else Path(self.labels_dir),
                        tuple(c.id for c in classes if c.name.lower() in ignore) + (UNLABELLED,))


@dataclass(frozen=True)
class LabelSet:
    """A resolved LabelSpec: what the frame readers and the mask evaluation use."""

    classes: tuple[ClassInfo, ...]
    labels_dir: Path | None
    ignore_ids: tuple[int, ...]

    @property
    def anomaly_ids(self) -> tuple[int, ...]:
        return tuple(c.id for c in self.classes if c.anomaly)

    def label_path(self, stem: str) -> Path | None:
        """The label PNG of the frame named `stem`, None when the frame has none."""
        if self.labels_dir is None:
            return None
        path = self.labels_dir / f"{stem}{LABEL_SUFFIX}"
        return path if path.is_file() else None

    def read(self, path: Path, shape: tuple[int, int]) -> np.ndarray:
        """HxW class ids of a colour label PNG, resized (nearest) to the frame's `shape` (H, W)."""
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"cannot decode label image {path}")
        ids = decode_label(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), self.classes)
        if ids.shape != tuple(shape):
            ids = cv2.resize(ids, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
        return ids

    def mask(self, class_ids: np.ndarray) -> np.ndarray:
        return anomaly_mask(class_ids, self.anomaly_ids)


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 colours -> (...) uint32 keys, so a colour lookup is one searchsorted."""
    rgb = np.asarray(rgb, dtype=np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def decode_label(rgb_label: np.ndarray, classes: Iterable[ClassInfo]) -> np.ndarray:
    """HxWx3 uint8 RGB label -> HxW uint8 class ids; colours of no class -> UNLABELLED."""
    if rgb_label.ndim != 3 or rgb_label.shape[2] != 3 or rgb_label.dtype != np.uint8:
        raise ValueError(f"label must be HxWx3 uint8 RGB, got {rgb_label.shape} {rgb_label.dtype}")
    classes = list(classes)
    keys = pack_rgb(np.array([c.colour for c in classes], np.uint8).reshape(-1, 3))
    ids = np.array([c.id for c in classes], np.uint8)
    order = np.argsort(keys)
    keys, ids = keys[order], ids[order]
    packed = pack_rgb(rgb_label)
    if not len(keys):
        return np.full(packed.shape, UNLABELLED, np.uint8)
    pos = np.searchsorted(keys, packed).clip(0, len(keys) - 1)
    return np.where(keys[pos] == packed, ids[pos], np.uint8(UNLABELLED)).astype(np.uint8)


def anomaly_mask(class_ids: np.ndarray, anomaly_ids: Iterable[int]) -> np.ndarray:
    """HxW uint8 mask, 255 where the class is an anomaly class."""
    return np.where(np.isin(class_ids, list(anomaly_ids)), np.uint8(255), np.uint8(0))


# --- class files -------------------------------------------------------------------------------


def find_colormap(places: Iterable[Path | str]) -> Path:
    """A class file in (or up to two folders above) the label or data folder: RUGD keeps
    RUGD_annotation-colormap.txt above its per-scene label folders."""
    searched = []
    for place in places:
        start = Path(place) if Path(place).is_dir() else Path(place).parent
        for folder in (start, *start.parents[:2]):
            searched.append(str(folder))
            for pattern in COLORMAP_GLOBS:
                found = sorted(p for p in folder.glob(pattern) if p.is_file())
                if found:
                    return found[0]
    raise FileNotFoundError(f"no class colour file (*colormap*.txt, classes.json) in {', '.join(searched)}: "
                            f"pass --colormap")


def load_colormap(path: Path | str, anomaly_classes: Iterable[str] = ()) -> list[ClassInfo]:
    """Classes of a RUGD-style `id name R G B` file, a `name,R,G,B` CSV or our classes.json.

    With `anomaly_classes` exactly those names (case-insensitive) are anomalies; without, the file's own
    flags (classes.json) are kept."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class colour file not found: {path}")
    classes = _json_classes(path) if path.suffix.lower() == ".json" else _text_classes(path)
    if not classes:
        raise ValueError(f"no classes in {path}")
    wanted = {n.strip().lower() for n in anomaly_classes if n.strip()}
    if not wanted:
        return classes
    unknown = wanted - {c.name.lower() for c in classes}
    if unknown:
        raise ValueError(f"anomaly classes {sorted(unknown)} not in {path} (classes: {_names(classes)})")
    return [ClassInfo(c.id, c.name, c.colour, c.name.lower() in wanted) for c in classes]


def _names(classes: Iterable[ClassInfo]) -> str:
    return ", ".join(c.name for c in classes)


def _json_classes(path: Path) -> list[ClassInfo]:
    table = json.loads(path.read_text(encoding="utf-8"))
    return [ClassInfo(int(k), str(v["name"]), tuple(int(c) for c in v["colour"]), bool(v.get("anomaly", False)))
            for k, v in table.items()]


def _text_classes(path: Path) -> list[ClassInfo]:
    classes: list[ClassInfo] = []
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = [f.strip() for f in line.split(",")] if "," in line else line.split()
        if not classes and len(fields) in (4, 5) and not any(_is_int(f) for f in fields[-3:]):
            continue  # a CSV header
        try:
            cls = _class_from_fields(fields, len(classes))
        except ValueError as exc:
            raise ValueError(f"{path}:{lineno}: {exc} in {raw.strip()!r}") from None
        _check_unique(cls, classes, f"{path}:{lineno}")
        classes.append(cls)
    return classes


def _class_from_fields(fields: list[str], position: int) -> ClassInfo:
    if len(fields) == 5 and _is_int(fields[0]):
        cid, name, rgb = int(fields[0]), fields[1], fields[2:]
    elif len(fields) == 4 and not _is_int(fields[0]):
        cid, name, rgb = position, fields[0], fields[1:]
    else:
        raise ValueError("expected 'id name R G B' or 'name,R,G,B'")
    if not all(_is_int(v) and 0 <= int(v) <= 255 for v in rgb):
        raise ValueError("colour values must be integers 0-255")
    if not 0 <= cid < UNLABELLED:
        raise ValueError(f"class id must be 0-{UNLABELLED - 1} ({UNLABELLED} is reserved for unlabelled pixels)")
    return ClassInfo(cid, name, (int(rgb[0]), int(rgb[1]), int(rgb[2])), False)


def _check_unique(cls: ClassInfo, classes: list[ClassInfo], where: str) -> None:
    for other in classes:
        for field in ("id", "name", "colour"):
            if getattr(other, field) == getattr(cls, field):
                raise ValueError(f"{where}: {field} {getattr(cls, field)} already used by class {other.name!r}")


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True
