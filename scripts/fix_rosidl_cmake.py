"""Point the PyPI ROS wheels' generated cmake exports at this venv's Python and numpy headers.

The wheels hard-code the include directories of the machine that built them in
share/*/cmake/export_*__rosidl_generator_pyExport.cmake; colcon-building our messages fails until
those paths name this interpreter's include dir and numpy's. Idempotent.
"""
from __future__ import annotations

import re
import sys
import sysconfig
from pathlib import Path

import numpy

BUILDER_PY_INCLUDE = re.compile(r"/opt/python/cp3\d+-cp3\d+/include/python3\.\d+")
BUILDER_NUMPY_INCLUDE = re.compile(
    r"/opt/python/cp3\d+-cp3\d+/lib/python3\.\d+/site-packages/numpy/(?:_)?core/include"
)


def fix(prefix: Path) -> int:
    """Rewrite every export file under prefix/share; return how many changed."""
    py_include = sysconfig.get_paths()["include"]
    np_include = numpy.get_include()
    changed = 0
    for path in prefix.glob("share/*/cmake/export_*__rosidl_generator_pyExport.cmake"):
        text = path.read_text()
        new = BUILDER_NUMPY_INCLUDE.sub(np_include, BUILDER_PY_INCLUDE.sub(py_include, text))
        if new != text:
            path.write_text(new)
            changed += 1
    return changed


if __name__ == "__main__":
    prefix = Path(sys.argv[1] if len(sys.argv) > 1 else sys.prefix)
    n = fix(prefix)
    print(f"[setup] rosidl cmake exports: {n} file(s) pointed at this venv" if n else
          "[setup] rosidl cmake exports already point at this venv")
