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
