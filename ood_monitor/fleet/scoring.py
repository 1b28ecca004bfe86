"""Per-frame detector scores of one recording, streamed.

Frames go through the same `Preprocessor` as the live preprocess node and the same score as the
detector node (`ModelCard.nonconformity` on the encoder's posterior), in batches: only the batch being
scored is held as pixels, and per frame only a few scalars are kept (a `ScoreTable`), so peak memory does
not grow with the recording. All detectors of one evaluation are fed from one pass over the source.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from functools import cached_property
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from ood_monitor.core.model_input import FrameConfig
from ood_monitor.core.preprocess import PreprocessConfig, Preprocessor
from ood_monitor.core.vae.dataset import frame_digest

DEFAULT_BATCH = 64
NODE_MAX_GAP_S = 1.0  # vae_detector_node's max_gap_s default: a longer stamp gap restarts its state


@dataclass
class ScoreTable:
    """One detector's scores of a sequence of frames, with the frames' ground truth, in stream order."""

    source: np.ndarray  # str: the bag/folder each frame came from
    frame: np.ndarray  # int64: frame index in its source (labels.csv / FrameLabel numbering)
    stamp_ns: np.ndarray  # int64: header stamp
    is_ood: np.ndarray  # bool
    category: np.ndarray  # str
    kind: np.ndarray  # str
    episode: np.ndarray  # int64: episode id of the source's labels (0: nominal)
    score: np.ndarray  # float64
    # the recording's data hash as training records it (core.vae.dataset.frame_digest): "" when the table
    # is not one whole recording (several concatenated, or a chunk of one)
    data_hash: str = field(default="", compare=False)

    def __len__(self) -> int:
        return int(self.score.size)

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        """The per-frame fields (all but data_hash)."""
        return tuple(f.name for f in fields(cls) if f.name != "data_hash")

    def subset(self, keep: np.ndarray) -> ScoreTable:
        """The rows selected by a boolean mask, same data hash (it names the recording, not the rows)."""
        return type(self)(**{c: getattr(self, c)[keep] for c in self.columns()}, data_hash=self.data_hash)

    @classmethod
    def empty(cls) -> ScoreTable:
        return cls(*(np.zeros(0, dtype=d) for d in (object, np.int64, np.int64, bool, object, object, np.int64,
                                                     np.float64)))

    @classmethod
    def concat(cls, tables: Iterable[ScoreTable]) -> ScoreTable:
        tables = [t for t in tables if len(t)]
        if not tables:
            return cls.empty()
        return cls(**{c: np.concatenate([getattr(t, c) for t in tables]) for c in cls.columns()})

    def to_dict(self) -> dict[str, list]:
        """Plain lists (what a Ray batch or JSON carries)."""
        return {c: getattr(self, c).tolist() for c in self.columns()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScoreTable:
        dtypes = {"source": object, "frame": np.int64, "stamp_ns": np.int64, "is_ood": bool, "category": object,
                  "kind": object, "episode": np.int64, "score": np.float64}
        return cls(**{name: np.asarray(list(d[name]), dtype=dt) for name, dt in dtypes.items()})


class ModelScorer:
    """A detector model loaded once: encoder and card (what each Ray actor holds). `score` switches the
    card's nonconformity score first (calibrate --score). `calibrated`: load the calibration scores now,
    so a model without them fails before any frame is read (evaluate); calibrate and the actors, which
    only score, pass False."""

    def __init__(self, path: str | Path, score: str | None = None, calibrated: bool = True) -> None:
        from ood_monitor.core.model_dirs import resolve_model_dir
        from ood_monitor.core.vae.io import load_encoder

        self.path = resolve_model_dir(path)
        self.encoder, self.card = load_encoder(self.path)
        if score:
            self.card.score = score
        self.score_fn = self.card.nonconformity  # ValueError now if the card lacks the score's statistics
        self._last: tuple[str, int] | None = None  # (source, stamp) of the last frame scored
        if calibrated:
            self.calibration  # noqa: B018 -- ModelFileError now, not after scoring a fleet

    @cached_property
    def calibration(self) -> np.ndarray:
        """Sorted calibration scores (ModelFileError saying how to calibrate when there are none)."""
        return self.card.calibration_scores(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def kind(self) -> str:
        return self.card.kind

    @property
    def frame_config(self) -> FrameConfig:
        return FrameConfig(self.card.config.width, self.card.config.height)

    def score(self, raw: np.ndarray, rows: list[tuple] | None = None) -> np.ndarray:
        """Scores of (N, H, W, C) prepared frames (uint8 images or px/frame flow), as the node computes them.
        `rows`: each frame's (source, index, stamp_ns, ...) in stream order; a stateful score (the change
        part) restarts where the node would (a new source, a stamp gap over its default max_gap_s, a stamp
        jumping back). Without rows the frames continue the stream scored so far."""
        import torch

        from ood_monitor.core.nonconformity import encode
        from ood_monitor.core.vae.dataset import model_input

        with torch.no_grad():
            mu, logvar = encode(self.encoder, lambda s: model_input(raw[s], self.kind, self.card.flow_scale),
                                len(raw), batch=len(raw))
        if self.score_fn.tracker is None or not rows:
            return np.asarray(self.score_fn(mu, logvar, self.score_fn.frame_features(raw)), dtype=np.float64)
        from ood_monitor.core.detector_evaluation import sequence_ids

        last_source, last_stamp = self._last or ("", 0)
        sources = np.array([last_source, *(str(r[0]) for r in rows)], dtype=object)
        stamps = np.array([last_stamp, *(int(r[2]) for r in rows)], np.int64)
        sequence = sequence_ids(stamps, NODE_MAX_GAP_S, sources)
        restarts = sequence[1:] != sequence[:-1]
        restarts[0] |= self._last is None
        self._last = (sources[-1], int(stamps[-1]))
        return self.score_fn.stream(mu, logvar, raw, restarts)


class _Buffer:
    """Frames of one detector waiting to be scored, its scored columns so far and the data hash of the
    prepared frames it has seen."""

    def __init__(self, scorer: Any, batch: int) -> None:
        self.scorer, self.batch = scorer, batch
        self.items: list[np.ndarray] = []
        self.rows: list[tuple] = []
        self.columns: list[tuple] = []
        self.scores: list[np.ndarray] = []
        self.digest = frame_digest(scorer.kind, scorer.frame_config)

    def __len__(self) -> int:
        return len(self.columns) + len(self.items)

    def add(self, item: np.ndarray, row: tuple) -> None:
        self.items.append(item)
        self.rows.append(row)
        if len(self.items) >= self.batch:
            self.flush()

    def flush(self) -> None:
        if self.items:
            self.scores.append(self.scorer.score(np.stack(self.items), self.rows))
            self.columns.extend(self.rows)
            self.items, self.rows = [], []

    def table(self) -> ScoreTable:
        self.flush()
        if not self.columns:
            return ScoreTable.empty()
        cols = list(zip(*self.columns, strict=True))
        return ScoreTable(source=np.array(cols[0], dtype=object), frame=np.array(cols[1], np.int64),
                          stamp_ns=np.array(cols[2], np.int64), is_ood=np.array(cols[3], bool),
                          category=np.array(cols[4], dtype=object), kind=np.array(cols[5], dtype=object),
                          episode=np.array(cols[6], np.int64), score=np.concatenate(self.scores),
                          data_hash=self.digest.hexdigest())


def score_frames(frames: Iterable[Any], scorers: list[Any], source: str = "", batch: int = DEFAULT_BATCH,
                 progress: Callable[[str], None] | None = None, limit: int | None = None,
                 warmup: int = 0) -> list[ScoreTable]:
    """One table per scorer from labelled frames (objects with image, stamp_ns, index, is_ood, category,
    kind, episode) in stream order. A flow detector scores the flow into each frame; flow restarts where
    the stamps say the stream broke, as in the preprocess node. A frame with the same stamp as the one
    before is skipped: the detector node rejects it. `limit`: stop once every scorer has that many
    frames (calibrate --max-frames, counted as training counts them). `warmup`: the first frames only
    prime the preprocessors (the previous frame for flow, stamp gaps) and are neither scored nor
    hashed: a chunk's overlap with the chunk before it."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, s in enumerate(scorers):
        cfg = s.frame_config
        groups.setdefault((cfg.width, cfg.height), []).append(i)
    pre = {size: Preprocessor(PreprocessConfig(frame=FrameConfig(*size),
                                               flow_enabled=any(scorers[i].kind == "flow" for i in members)))
           for size, members in groups.items()}
    buffers = [_Buffer(s, batch) for s in scorers]
    last_stamp = None
    for n, fr in enumerate(frames):
        if limit is not None and all(len(b) >= limit for b in buffers):
            break
        if fr.stamp_ns == last_stamp:
            continue
        last_stamp = fr.stamp_ns
        row = (source, int(fr.index), int(fr.stamp_ns), bool(fr.is_ood), str(fr.category), str(fr.kind),
               int(fr.episode))
        for size, members in groups.items():
            out = pre[size].process(fr.image, fr.stamp_ns)
            if n < warmup or out.image is None:
                continue
            for i in members:
                buffers[i].digest.update(np.ascontiguousarray(out.image))
                item = out.image if scorers[i].kind == "image" else out.flow
                if item is not None:
                    buffers[i].add(item, row)
        if progress is not None and (n + 1) % 500 == 0:
            progress(f"  {source}: {n + 1} frames")
    return [b.table() for b in buffers]


def score_source(path: str | Path, scorers: list[Any], image_topic: str = "/camera/image_raw",
                 mask_topic: str | None = None, labels: Any = None, batch: int = DEFAULT_BATCH,
                 progress: Callable[[str], None] | None = None, limit: int | None = None,
                 start: int = 0, stop: int | None = None) -> list[ScoreTable]:
    """`score_frames` over a bag or image folder (`ood_monitor.data.labeled_frames.iter_frames`); with
    `start`/`stop`, only frames [start, stop) of it (a chunk: the frame before `start` is read too, for
    the flow into `start`, and the tables carry no data hash). Raises FileNotFoundError / ValueError
    naming the source when it cannot be read."""
    from ood_monitor.data.labeled_frames import iter_frames

    topics = {"mask_topic": mask_topic} if mask_topic else {}
    warmup = min(start, 1)
    frames = iter_frames(path, image_topic=image_topic, labels=labels, start=start - warmup, **topics)
    if stop is not None:
        frames = islice(frames, stop - start + warmup)
    tables = score_frames(frames, scorers, source=str(path), batch=batch, progress=progress, limit=limit,
                          warmup=warmup)
    if start or stop is not None:
        for table in tables:
            table.data_hash = ""
    return tables
