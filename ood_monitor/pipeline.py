"""The node graph in one table: which node runs for which stage, under which name and executable.

`launch/*.launch.py` and `ood-monitor run` both read it, so a launch on a robot and a one-process run
on a laptop start the same nodes with the same names (and so the same YAML sections).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class NodeSpec:
    stage: str
    name: str  # node name: the key of its section in config/*.yaml
    executable: str  # console script (setup.py) = `ros2 run ood_monitor <executable>`
    node_class: str  # "module:Class" for `ood-monitor run`
    parameters: dict  # fixed per-instance parameters (e.g. which detector)

    def load_class(self):
        module, _, cls = self.node_class.partition(":")
        return getattr(importlib.import_module(module), cls)


NODES: tuple[NodeSpec, ...] = (
    NodeSpec("preprocess", "preprocess_node", "preprocess_node",
             "ood_monitor.nodes.preprocess_node:PreprocessNode", {}),
    NodeSpec("detect", "vae_image_detector", "vae_detector_node",
             "ood_monitor.nodes.vae_detector_node:VaeDetectorNode", {"detector": "image"}),
    NodeSpec("detect", "vae_flow_detector", "vae_detector_node",
             "ood_monitor.nodes.vae_detector_node:VaeDetectorNode", {"detector": "flow"}),
    NodeSpec("synthesize", "synthesizer_node", "synthesizer_node",
             "ood_monitor.nodes.synthesizer_node:SynthesizerNode", {}),
    NodeSpec("analysis", "analysis_node", "analysis_node",
             "ood_monitor.nodes.analysis_node:AnalysisNode", {}),
    NodeSpec("nav", "nav_bridge_node", "nav_bridge_node",
             "ood_monitor.nodes.nav_bridge_node:NavBridgeNode", {}),
)
STAGES: tuple[str, ...] = tuple(dict.fromkeys(n.stage for n in NODES))


def nodes_for(stages: str | list[str]) -> list[NodeSpec]:
    """Specs of the requested stages ("all", a comma-separated string or a list)."""
    wanted = STAGES if stages in ("all", ["all"]) else (stages.split(",") if isinstance(stages, str) else stages)
    wanted = [s.strip() for s in wanted if s.strip()]
    unknown = set(wanted) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}: choose from {list(STAGES)} or all")
    return [n for n in NODES if n.stage in wanted]


def parameter_tables() -> str:
    """Markdown tables of every node's parameters (the README's Parameters section is generated
    from this, and a test keeps the two equal)."""
    out, seen = [], set()
    for spec in NODES:
        if spec.executable in seen:
            continue
        seen.add(spec.executable)
        out += [f"`{spec.executable}`:", "", "| parameter | default | meaning |", "|---|---|---|"]
        for name, (default, text) in spec.load_class().declared_parameters().items():
            value = str(default).lower() if isinstance(default, bool) else (default if default != "" else '""')
            out.append(f"| `{name}` | `{value}` | {text.replace('|', '/')} |")
        out.append("")
    return "\n".join(out)
