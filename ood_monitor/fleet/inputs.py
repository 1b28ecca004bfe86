"""`--data` with several bags/folders and globs (`fleet/*/`, `robot3/2026-11-*`) -> the recordings.

A pattern matching nothing is an error naming it, so a typo never silently evaluates less data. A
recording is a rosbag2 bag (its directory or one .mcap/.db3 file) or an image folder; a folder holding
bags (e.g. `DIR/bags`) is not itself a recording: name the bags or use a glob.
"""
from __future__ import annotations

import glob
from collections.abc import Iterable
from pathlib import Path

GLOB_CHARS = set("*?[")


def expand_inputs(patterns: Iterable[str | Path]) -> list[Path]:
    """Paths in the order given, globs sorted, duplicates dropped (first occurrence kept)."""
    found: dict[Path, None] = {}
    for pattern in patterns:
        text = str(pattern)
        if GLOB_CHARS & set(text):
            matches = sorted(glob.glob(text))
            if not matches:
                raise FileNotFoundError(f"--data pattern {text!r} matches nothing")
            paths = [Path(m) for m in matches]
        else:
            path = Path(text)
            if not path.exists():
                raise FileNotFoundError(f"data not found: {path}")
            paths = [path]
        for path in paths:
            found.setdefault(Path(str(path).rstrip("/")) if str(path) != "/" else path, None)
    if not found:
        raise ValueError("no --data given")
    return list(found)


def describe(paths: list[Path]) -> str:
    """`a` for one input, `a (+ 3 more)` for many (report titles)."""
    return str(paths[0]) if len(paths) == 1 else f"{paths[0]} (+ {len(paths) - 1} more)"


def load_training_frames(paths: list[Path], kind: str, frame_cfg, image_topic: str, limit: int | None = None,
                         progress=None, labels=None, spool_dir: Path | None = None, drop_ood: bool = False):
    """The frames of every recording as one FrameSet (recordings in order; `limit` counts them all).
    Training revisits every frame each epoch: with `spool_dir` the frames are written to one file there
    and come back memory-mapped (memory independent of the number of frames; see data/spool.py), without
    it they are held in memory as compact uint8 (images) or float32 (flow) arrays. `drop_ood` leaves out
    frames labelled OOD as they are read. The data hash covers every recording's hash in order."""
    import hashlib

    import numpy as np

    from ood_monitor.core.vae.dataset import load_frames
    from ood_monitor.data.spool import FrameSpool

    spool = FrameSpool(spool_dir, kind) if spool_dir is not None else None
    sets = []
    for path in paths:
        left = None if limit is None else limit - sum(len(s) for s in sets)
        if left is not None and left <= 0:
            break
        sets.append(load_frames(path, kind, frame_cfg, image_topic, limit=left, progress=progress, labels=labels,
                                spool=spool, drop_ood=drop_ood))
    if spool is not None:
        spool.close()
    if len(sets) == 1:
        return sets[0]
    first = sets[0]
    digest = hashlib.sha256("".join(s.data_hash for s in sets).encode()).hexdigest()
    cat = {name: np.concatenate([getattr(s, name) for s in sets])
           for name in ("is_ood", "category", "ood_kind", "episode", "index")}
    raw = spool.array() if spool is not None else np.concatenate([s.raw for s in sets])
    return type(first)(kind=kind, data_hash=digest, source=", ".join(s.source for s in sets), raw=raw,
                       dropped_ood=sum(s.dropped_ood for s in sets), **cat)


def iter_many_frames(paths: list[Path], failed: dict[str, str] | None = None, **sources):
    """`data.frames.iter_frames` over every recording in turn (calibrate-analysis, mask evaluation): a
    recording that cannot be read is recorded in `failed` (path -> why) and skipped; without `failed`
    the error propagates."""
    from ood_monitor.data.labeled_frames import iter_frames

    for path in paths:
        try:
            yield from iter_frames(path, **sources)
        except Exception as exc:  # noqa: BLE001 -- reported per recording, as the scoring engines do
            if failed is None:
                raise
            failed[str(path)] = f"{type(exc).__name__}: {exc}"
