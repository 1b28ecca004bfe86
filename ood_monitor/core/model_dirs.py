"""Where a model folder named in a parameter lives: as given (absolute or relative to the working
directory), else in the installed package's share/ood_monitor/models, else in the source tree."""
from __future__ import annotations

import contextlib
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[2]


def candidates(path: str | Path) -> list[Path]:
    p = Path(path).expanduser()
    if p.is_absolute():
        return [p]
    found = [Path.cwd() / p]
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:  # no ROS: the working directory and the source tree only
        pass
    else:
        with contextlib.suppress(PackageNotFoundError):
            found.append(Path(get_package_share_directory("ood_monitor")) / p)
    found.append(SOURCE_ROOT / p)
    return found


def resolve_model_dir(path: str | Path) -> Path:
    """The first existing candidate; the plain path when none exists (the loader then names it)."""
    for candidate in candidates(path):
        if candidate.is_dir():
            return candidate
    return Path(path)
