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


def test_docs_document_every_parameter():
    text = (ROOT / "docs" / "parameters.md").read_text()
    block = text.split("<!-- parameters:start -->\n", 1)[1].split("<!-- parameters:end -->", 1)[0]
    assert block == parameter_tables(), "docs/parameters.md is stale: run python scripts/readme_params.py"


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


# ------------------------------------------------------------------------------------------- packaging

ROSDEP_KEYS = {  # Python import -> its rosdep key
    "cv2": "python3-opencv", "numpy": "python3-numpy", "yaml": "python3-yaml", "torch": "python3-torch",
    "torchvision": "python3-torchvision", "skimage": "python3-skimage", "sklearn": "python3-sklearn",
    "matplotlib": "python3-matplotlib", "scipy": "python3-scipy",
}
PIP_ONLY = {  # Python import -> its requirements-robot.txt line (no rosdep key)
    "rosbags": "rosbags", "safetensors": "safetensors", "diffusers": "diffusers",
    "segment_anything": "segment-anything", "onnx": "onnx", "onnxruntime": "onnxruntime",
    "torch_pruning": "torch-pruning", "threadpoolctl": "threadpoolctl",
}
JETPACK = {"tensorrt", "pycuda"}  # optional TensorRT backend: installed with JetPack, imported only there
# off-robot tools (requirements.txt): `--engine ray` re-scoring on a cluster, the real-footage benchmark builder
OFF_ROBOT = {"ray", "albumentations", "imagecorruptions"}
INDIRECT = {"lifecycle_msgs": "the lifecycle services of every node (rclpy.lifecycle), what Nav2 calls"}


def third_party_imports() -> set[str]:
    import sys

    found = set()
    for path in [*(ROOT / "ood_monitor").rglob("*.py"), *LAUNCH_FILES]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"ood_monitor"}


def package_dependencies() -> set[str]:
    import xml.etree.ElementTree as ET

    root = ET.parse(ROOT / "package.xml").getroot()
    return {e.text.strip() for tag in ("depend", "exec_depend") for e in root.iter(tag)}


def test_package_xml_declares_every_import_and_nothing_else():
    imports, declared = third_party_imports(), package_dependencies()
    robot_pip = {line.split("#")[0].strip() for line in (ROOT / "requirements-robot.txt").read_text().splitlines()}
    needed = set()
    for name in imports - JETPACK - OFF_ROBOT:
        if name in PIP_ONLY:
            assert PIP_ONLY[name] in robot_pip, f"{name} (no rosdep key) missing from requirements-robot.txt"
        else:
            needed.add(ROSDEP_KEYS.get(name, name))  # ROS packages import under their package name
    assert needed - declared == set(), f"package.xml lacks {sorted(needed - declared)}"
    assert declared - needed - set(INDIRECT) == set(), f"package.xml declares unused {sorted(declared - needed)}"


def test_license_file_is_the_declared_one_and_installed():
    import xml.etree.ElementTree as ET

    license_el = ET.parse(ROOT / "package.xml").getroot().find("license")
    assert license_el.text == "Apache-2.0" and license_el.get("file") == "LICENSE"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert '"LICENSE"' in (ROOT / "setup.py").read_text()


# ------------------------------------------------------------------ issue 15's launch bugs, statically

def calls(path: Path, name: str) -> list[ast.Call]:
    tree = ast.parse(path.read_text())
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and (getattr(n.func, "id", None) == name or getattr(n.func, "attr", None) == name)]


def test_launched_nodes_are_named_after_the_node_not_the_nice_prefix():
    """With `prefix="nice -n 10"` launch labels the process `nice-4` unless exec_name names it."""
    nodes = calls(ROOT / "launch" / "ood_monitor.launch.py", "Node")
    assert nodes and all("exec_name" in {k.arg for k in n.keywords} for n in nodes)


def test_topic_arguments_default_to_the_parameter_file():
    """image_topic / camera_info_topic / transport must not override a user's params_file unless given."""
    for path in LAUNCH_FILES:
        for call in calls(path, "DeclareLaunchArgument"):
            name = call.args[0].value
            default = {k.arg: k.value for k in call.keywords}.get("default_value")
            if name in ("image_topic", "camera_info_topic", "transport"):
                assert isinstance(default, ast.Constant) and default.value == "", f"{path.name}: {name}"


def test_replay_finds_ood_monitor_in_the_package_not_on_path():
    """A colcon workspace installs ood-monitor in lib/ood_monitor, which is not on PATH."""
    text = (ROOT / "launch" / "replay.launch.py").read_text()
    assert '"ood-monitor", "replay"' not in text
    finders = calls(ROOT / "launch" / "replay.launch.py", "ExecutableInPackage")
    assert [(c.args[0].value, c.args[1].value) for c in finders] == [("ood-monitor", "ood_monitor")]


def test_jetson_yaml_is_documented_as_an_overlay_everywhere():
    """params_file:=jetson.yaml replaces the defaults (every other parameter falls back to the node's
    built-in default); jetson.yaml is meant to be applied over default.yaml."""
    replace = re.compile(r"(?<!overlay_)params_file:=\S*jetson\.yaml")
    for path in (ROOT / "config" / "jetson.yaml", ROOT / "README.md", ROOT / "launch" / "jetson.launch.py"):
        assert not replace.search(path.read_text()), f"{path.name} tells users to replace the defaults"
    jetson = calls(ROOT / "launch" / "jetson.launch.py", "IncludeLaunchDescription")[0]
    text = ast.unparse(jetson)
    assert "default.yaml" in text and "overlay_params_file" in text and "jetson.yaml" in text
    assert "overlay" in (ROOT / "config" / "jetson.yaml").read_text().split("/**/")[0].lower()
