"""One model-path rule for every node and command: working directory, then the installed share directory
(here, without a colcon install, the source checkout), else a start-up error naming both places."""
from __future__ import annotations

import pytest
import rclpy
from rclpy.parameter import Parameter

from ood_monitor.core import model_dirs
from ood_monitor.core.model_dirs import ModelDirError, resolve_model_dir
from ood_monitor.nodes.analysis_node import AnalysisNode


def test_relative_path_resolves_in_the_share_dir_from_any_working_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_model_dir("models/dcae") == model_dirs.share_dir() / "models" / "dcae"
    assert (resolve_model_dir("models/dcae") / "config.json").is_file()


def test_working_dir_wins_over_the_share_dir(tmp_path, monkeypatch):
    (tmp_path / "models" / "dcae").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_model_dir("models/dcae") == tmp_path / "models" / "dcae"


def test_missing_relative_path_names_both_places(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelDirError) as err:
        resolve_model_dir("models/no_such_model")
    text = str(err.value)
    assert str(tmp_path / "models" / "no_such_model") in text
    assert str(model_dirs.share_dir() / "models" / "no_such_model") in text
    with pytest.raises(ModelDirError, match="empty"):
        resolve_model_dir(" ")


def test_share_dir_is_the_colcon_install_when_registered(tmp_path, monkeypatch):
    prefix = tmp_path / "install"
    (prefix / "share" / "ament_index" / "resource_index" / "packages").mkdir(parents=True)
    (prefix / "share" / "ament_index" / "resource_index" / "packages" / "ood_monitor").write_text("")
    (prefix / "share" / "ood_monitor" / "models" / "dcae").mkdir(parents=True)
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(prefix))
    monkeypatch.chdir(tmp_path)
    assert resolve_model_dir("models/dcae") == prefix / "share" / "ood_monitor" / "models" / "dcae"


@pytest.fixture
def context():
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.shutdown(context=ctx)


@pytest.mark.ros
def test_analysis_node_outside_the_source_tree_uses_the_shipped_dcae(context, tmp_path, monkeypatch):
    """Issue 15: launched from another directory, `models_dir: models` fell back to random features."""
    monkeypatch.chdir(tmp_path)
    node = AnalysisNode(context=context, parameter_overrides=[Parameter("torch_threads", value=0)])
    try:
        values = node.diagnostic_values()
        assert node.features.startswith("dcae"), node.features
        assert values["models_dir"] == str(model_dirs.share_dir() / "models")
        assert str(model_dirs.share_dir() / "models" / "analysis_nominal") in values["nominal_stats"]
    finally:
        node.destroy_node()


@pytest.mark.ros
def test_analysis_node_with_a_missing_models_dir_refuses_to_start(context, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelDirError, match="not found: looked in"):
        AnalysisNode(context=context, parameter_overrides=[Parameter("models_dir", value="elsewhere/models")])
    with pytest.raises(ModelDirError, match="is not a folder"):
        AnalysisNode(context=context, parameter_overrides=[Parameter("models_dir", value=str(tmp_path / "none"))])
