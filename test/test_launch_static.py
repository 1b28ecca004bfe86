"""launch_ros is not installable here, so the launch files are checked statically: every executable
they start exists in setup.py, every parameter file exists, every parameter set is one the node
declares, and `ood-monitor run` starts the same graph."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from ood_monitor.pipeline import NODES, STAGES, nodes_for, parameter_tables

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))
CONFIGS = sorted((ROOT / "config").glob("*.yaml"))
COMMON = {"use_sim_time"}  # declared by rclpy itself


def console_scripts() -> dict[str, str]:
    text = (ROOT / "setup.py").read_text()
    return dict(re.findall(r'"([\w-]+) = ([\w.]+:\w+)"', text))


def declared(spec) -> set[str]:
    return set(spec.load_class().declared_parameters()) | COMMON


def test_every_node_has_a_console_script_running_its_module():
    """Through ros/entry.py, whose import is light (a Ctrl-C during the node's heavy imports exits 0)."""
    import ood_monitor.ros.entry as entry

    scripts = console_scripts()
    for spec in NODES:
        assert spec.executable in scripts, f"{spec.executable} missing from setup.py console_scripts"
        assert scripts[spec.executable] == f"ood_monitor.ros.entry:{spec.executable}"
        module = spec.node_class.split(":")[0]
        assert hasattr(entry, spec.executable) and module == f"ood_monitor.nodes.{spec.executable}"


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_files_parse_and_reference_existing_things(path):
    tree = ast.parse(path.read_text())
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert "generate_launch_description" in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    for s in strings:
        if s.endswith(".yaml"):
            assert (ROOT / "config" / s).exists(), f"{path.name} names missing config {s}"
        if s.endswith(".launch.py"):
            assert (ROOT / "launch" / s).exists(), f"{path.name} includes missing {s}"
    assert "nodes_for" in names or "IncludeLaunchDescription" in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_parameter_set_is_declared_by_its_node(path):
    data = yaml.safe_load(path.read_text()) or {}
    by_name = {spec.name: spec for spec in NODES}
    if not any(str(k).split("/")[-1] in by_name for k in data):
        pytest.skip("not a parameter file of our nodes (e.g. the Nav2 example)")
    for key, section in data.items():
        name = key.split("/")[-1]
        assert name in by_name, f"{path.name}: section {key} matches no node of the pipeline"
        unknown = set(section["ros__parameters"]) - declared(by_name[name])
        assert not unknown, f"{path.name}: {name} does not declare {sorted(unknown)}"


def test_default_yaml_sets_every_declared_parameter():
    data = yaml.safe_load((ROOT / "config" / "default.yaml").read_text())
    for spec in NODES:
        section = data.get(f"/**/{spec.name}")
        assert section is not None, f"config/default.yaml has no section for {spec.name}"
        missing = declared(spec) - COMMON - set(section["ros__parameters"])
        assert not missing, f"config/default.yaml lacks {spec.name} parameters {sorted(missing)}"


def test_stage_selection():
    assert [n.name for n in nodes_for("preprocess")] == ["preprocess_node"]
    assert len(nodes_for("all")) == len(NODES) and set(STAGES) >= {"preprocess", "detect"}
    with pytest.raises(ValueError, match="unknown stage"):
        nodes_for("preprocess,teleport")


def test_readme_documents_every_parameter():
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- parameters:start -->\n", 1)[1].split("<!-- parameters:end -->", 1)[0]
    assert block == parameter_tables(), "README parameters are stale: run python scripts/readme_params.py"


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_every_launch_configuration_used_is_declared(path):
    """A LaunchConfiguration (or the `arg` helper) naming an undeclared argument fails only on a robot."""
    tree = ast.parse(path.read_text())
    used, declared_args = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            if func in ("LaunchConfiguration", "arg"):
                used.add(node.args[0].value)
            if func == "DeclareLaunchArgument":
                declared_args.add(node.args[0].value)
    assert used <= declared_args, f"{path.name} uses undeclared launch arguments {sorted(used - declared_args)}"
