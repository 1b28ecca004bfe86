"""The package layers import downwards only: data (readers/writers of recordings) <- core (ROS-free
computation) <- ros <- nodes / cli, with the demo world beside them on top of data. Lazy imports inside
functions count too: they fail just as late and hide the dependency."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ood_monitor"
# what each sub-package may import from ood_monitor (itself always)
ALLOWED = {
    "data": set(),
    "core": {"data"},
    "demo_world": {"data"},
    "ros": {"core", "data", "pipeline"},  # pipeline.py: the node table, loads node classes on demand
    "fleet": {"core", "data"},  # ROS-free scoring and training over many recordings
    "real_world": {"data", "demo_world"},  # the real-footage benchmark builder (object cutouts of the demo world)
}


def imported_subpackages(path: Path) -> set[str]:
    """ood_monitor sub-packages a module imports anywhere in it (absolute or relative)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts  # ('ood_monitor', 'core', 'vae', 'x')
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts[: len(parts) - node.level]
                names = [".".join([*base, *(node.module.split(".") if node.module else [])])]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            split = name.split(".")
            if split[0] == "ood_monitor" and len(split) > 1:
                found.add(split[1])
    return found


def test_relative_imports_resolve_to_their_subpackage():
    assert imported_subpackages(PACKAGE / "core" / "compress" / "__init__.py") >= {"core"}


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_only_downwards(layer):
    bad = {}
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        upward = imported_subpackages(path) - ALLOWED[layer] - {layer}
        if upward:
            bad[str(path.relative_to(PACKAGE))] = sorted(upward)
    assert not bad, f"{layer}/ may import only {sorted(ALLOWED[layer] | {layer})}; found {bad}"
