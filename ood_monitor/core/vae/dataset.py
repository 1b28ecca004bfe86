"""Frames from a bag or an image folder -> arrays the VAEs train and score on.

Frames go through the same `Preprocessor` as the live preprocess node, so a model sees exactly the
images and flow fields it will see on the robot. Arrays stay compact (uint8 images, px/frame flow) and
become model input batch by batch through `model_input`, which the detector calls too.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ood_monitor.core.model_input import FrameConfig, image_tensor
from ood_monitor.core.preprocess import PreprocessConfig, Preprocessor
from ood_monitor.data.spool import FrameSpool

if TYPE_CHECKING:
    from ood_monitor.data.labels import LabelSpec

DEFAULT_IMAGE_TOPIC = "/camera/image_raw"


@dataclass
class FrameSet:
    """N frames of one kind with their labels. `raw` is (N, H, W, 3) uint8 RGB for images and
    (N, H, W, 2) float32 pixels/frame for flow (flow frame i is the motion into source frame i), or
    (N, H, W, 3) with the warp residual as the third channel (core/flow.warp_residual)."""

    kind: str
    raw: np.ndarray
    is_ood: np.ndarray
    category: np.ndarray
    ood_kind: np.ndarray
    episode: np.ndarray
    index: np.ndarray
    data_hash: str
    source: str = ""
    dropped_ood: int = 0  # frames labelled OOD that `collect(drop_ood=True)` read but did not keep

    def __len__(self) -> int:
        return len(self.raw)

    def subset(self, keep: np.ndarray) -> FrameSet:
        """Rows selected by a boolean mask or index array (the hash still names the source data)."""
        return replace(self, raw=self.raw[keep], is_ood=self.is_ood[keep], category=self.category[keep],
                       ood_kind=self.ood_kind[keep], episode=self.episode[keep], index=self.index[keep])

    def inputs(self, rows: np.ndarray | slice, flow_scale: float) -> np.ndarray:
        return model_input(self.raw[rows], self.kind, flow_scale)


def model_input(raw: np.ndarray, kind: str, flow_scale: float) -> np.ndarray:
    """(N, H, W, C) raw frames -> (N, C, H, W) float32: images in [0, 1], flow (u, v; a warp residual
    channel is not model input) divided by `flow_scale`."""
    if kind == "image":
        return image_tensor(raw)
    uv = np.asarray(raw)[..., :2]
    return np.ascontiguousarray(np.moveaxis(uv.astype(np.float32) / np.float32(flow_scale), -1, -3))


AUTO_SCALE_FRAMES = 256  # flow fields auto_flow_scale reads at most (evenly spaced; 34 MB at 128 px)


def auto_flow_scale(flow: np.ndarray, quantile: float = 99.0) -> float:
    """A fixed normaliser for flow: the given percentile of |u|, |v| on training data, rounded up to
    0.25 px so it reads well in config.json (never below 0.25). Read on at most AUTO_SCALE_FRAMES evenly
    spaced fields, so memory does not grow with the footage (on the demo train split: 4.33 px on 256
    fields vs 4.32 px on all 888, both 4.5 after rounding)."""
    if flow.size == 0:
        return 1.0
    if len(flow) > AUTO_SCALE_FRAMES:
        flow = flow[np.linspace(0, len(flow) - 1, AUTO_SCALE_FRAMES).round().astype(np.int64)]
    q = float(np.percentile(np.abs(np.asarray(flow)[..., :2]), quantile))
    return max(0.25, float(np.ceil(q * 4.0) / 4.0))


def frame_digest(kind: str, frame_cfg: FrameConfig) -> Any:
    """The data hash before any frame; every prepared uint8 frame read is then added with `update`. One
    definition for training (`collect`) and calibration scoring (`fleet.scoring`), so calibrate can
    recognise a model's training data by the hash its card records."""
    return hashlib.sha256(f"{kind}:{frame_cfg.width}x{frame_cfg.height}:{frame_cfg.crop}".encode())


def collect(frames: Iterable[Any], kind: str, frame_cfg: FrameConfig, source: str = "",
            limit: int | None = None, progress: Callable[[str], None] | None = None,
            spool: FrameSpool | None = None, drop_ood: bool = False) -> FrameSet:
    """Run labelled frames (objects with image, stamp_ns, episode, is_ood, category, kind, index)
    through the preprocessor. As on the robot, flow restarts only where the stamps say the stream
    broke (a gap, a jump back): labelled episodes inside one continuous drive keep their flow, so a
    motion anomaly is scored from its first frame. The data hash covers the prepared uint8 frames and
    the geometry, OOD-labelled ones included.

    With `spool`, the frames are appended to it and `raw` is a read-only memory map of them (training on
    more footage than memory holds); `drop_ood` reads frames labelled OOD (they still carry the flow and
    the hash) without keeping them, and counts them in `dropped_ood`."""
    if kind not in ("image", "flow"):
        raise ValueError(f"kind must be 'image' or 'flow', got {kind!r}")
    pre = Preprocessor(PreprocessConfig(frame=frame_cfg, flow_enabled=kind == "flow"))
    digest = frame_digest(kind, frame_cfg)
    rows: list[np.ndarray] | FrameSpool = spool if spool is not None else []
    start = len(rows)
    labels: list[tuple[bool, str, str, int, int]] = []
    dropped = 0
    for n, fr in enumerate(frames):
        if limit is not None and len(labels) >= limit:
            break
        out = pre.process(fr.image, fr.stamp_ns)
        if out.image is None:
            continue
        digest.update(out.image.tobytes())
        item = out.image if kind == "image" else out.flow
        if item is not None and drop_ood and fr.is_ood:
            dropped += 1
        elif item is not None:
            rows.append(item)
            labels.append((bool(fr.is_ood), str(fr.category), str(fr.kind), int(fr.episode), int(fr.index)))
        if progress is not None and (n + 1) % 500 == 0:
            progress(f"  read {n + 1} frames")
    if not labels:
        raise ValueError(f"no {kind} frames in {source or 'the input'}"
                         + (" (flow needs at least two consecutive frames)" if kind == "flow" else "")
                         + (f" ({dropped} labelled OOD were left out)" if dropped else ""))
    cols = list(zip(*labels, strict=True))
    raw = spool.array(start) if spool is not None else np.stack(rows)
    return FrameSet(kind=kind, raw=raw, is_ood=np.array(cols[0], bool),
                    category=np.array(cols[1], dtype=object), ood_kind=np.array(cols[2], dtype=object),
                    episode=np.array(cols[3], np.int64), index=np.array(cols[4], np.int64),
                    data_hash=digest.hexdigest(), source=source, dropped_ood=dropped)


def load_frames(path: str | Path, kind: str, frame_cfg: FrameConfig, image_topic: str = DEFAULT_IMAGE_TOPIC,
                limit: int | None = None, progress: Callable[[str], None] | None = None,
                labels: LabelSpec | None = None, mask_topic: str | None = None,
                spool: FrameSpool | None = None, drop_ood: bool = False) -> FrameSet:
    """`collect` over `ood_monitor.data.labeled_frames.iter_frames` (a rosbag2 bag or a folder of images);
    `labels` / `mask_topic` say where the ground truth is (see `iter_frames`); `spool` and `drop_ood` as
    in `collect`."""
    from ood_monitor.data.labeled_frames import iter_frames

    if not Path(path).exists():
        raise FileNotFoundError(f"data not found: {path}")
    topics = {"mask_topic": mask_topic} if mask_topic else {}
    return collect(iter_frames(path, image_topic=image_topic, labels=labels, **topics), kind, frame_cfg,
                   source=str(path), limit=limit, progress=progress, spool=spool, drop_ood=drop_ood)
