"""Regenerate docs/parameters.md, every node's parameter table, from the nodes' PARAMETERS (run after
adding or changing one; test_launch_static.py fails while it is stale)."""
from pathlib import Path

from ood_monitor.pipeline import parameter_tables

PARAMETERS_MD = Path(__file__).resolve().parents[1] / "docs" / "parameters.md"
START, END = "<!-- parameters:start -->", "<!-- parameters:end -->"
HEADER = """# Node parameters

Generated from the nodes' parameter declarations by `python scripts/readme_params.py`; do not edit by
hand. The same text is what `ros2 param describe <node> <parameter>` shows. Every default is set in
`config/default.yaml`; `config/jetson.yaml` overrides the detectors' backend for TensorRT. Parameters
marked tunable in the node (thresholds, weights, the speed policy) can be changed at run time with
`ros2 param set`; the others are read when the node is configured.

"""


def render() -> str:
    return f"{HEADER}{START}\n{parameter_tables()}{END}\n"


if __name__ == "__main__":
    old = PARAMETERS_MD.read_text() if PARAMETERS_MD.exists() else ""
    new = render()
    PARAMETERS_MD.write_text(new)
    print(f"{PARAMETERS_MD.name} " + ("updated" if new != old else "already current"))
