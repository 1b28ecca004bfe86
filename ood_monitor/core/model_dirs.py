"""Where a model folder named in a parameter or a CLI option lives — one rule for every node and command:

1. as given: an absolute path, or a path relative to the working directory;
2. else under the package's installed share directory (`share/ood_monitor/…` of a colcon install; in a
   source checkout used without colcon, the checkout itself, which holds the same `models/`).

Nothing else is searched, so a node started from any directory finds the shipped models exactly where
`colcon build` installed them, and a path that resolves nowhere is an error naming both places tried —
never a silent fallback to something else.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

PACKAGE = "ood_monitor"
SOURCE_ROOT = Path(__file__).resolve().parents[2]


class ModelDirError(FileNotFoundError):
    """A configured model folder exists in none of the places searched (a start-up error)."""


def share_dir() -> Path:
    """The installed share/ood_monitor (ament index), else the source checkout this module runs from."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:  # no ROS: the source checkout
        return SOURCE_ROOT
    with contextlib.suppress(PackageNotFoundError):
        return Path(get_package_share_directory(PACKAGE))
    return SOURCE_ROOT


def candidates(path: str | Path) -> list[Path]:
    """The places `path` is looked for, in order."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return [p]
    return [Path.cwd() / p, share_dir() / p]


def resolve_model_dir(path: str | Path) -> Path:
    """The first existing folder among `candidates(path)`; ModelDirError naming both places otherwise.

    An absolute path is returned as given: there is one place, and the loader's error names the missing
    file in it together with the command that makes it."""
    if not str(path).strip():
        raise ModelDirError("model folder parameter is empty")
    places = candidates(path)
    for candidate in places:
        if candidate.is_dir():
            return candidate
    if len(places) == 1:
        return places[0]
    raise ModelDirError(f"model folder {str(path)!r} not found: looked in "
                        + " and ".join(str(c) for c in places))
