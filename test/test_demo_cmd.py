"""The demo's pieces on a small dataset: the live graph over DDS with its figures, the report, and the
reuse rule that keeps a second run short."""
from __future__ import annotations

import json
import shutil

import pytest

from ood_monitor.cli import demo_cmd

pytestmark = pytest.mark.ros


def test_live_run_records_outputs_and_the_report_has_every_section(demo_dataset, tmp_path):
    bag = demo_dataset / "bags" / "test"
    live = demo_cmd.run_live(bag, tmp_path / "result_bag", 2.0, demo_cmd.Path("config/default.yaml"),
                             "preprocess,detect,nav")
    assert live["recorded"]["/ood/score/image"] > 20 and live["recorded"]["/diagnostics"] > 0
    assert {"preprocess_node", "vae_image_detector", "vae_flow_detector", "nav_bridge_node"} <= set(live["nodes"])
    assert live["nodes"]["nav_bridge_node"]["rejected"] == 0  # read from its /diagnostics: another process
    assert live["end_to_end_ms"]["/ood/score/image"]["p95"] > 0
    alarms = demo_cmd.live_alarms(tmp_path / "result_bag", bag)
    assert set(alarms) == {"image", "flow"} and alarms["image"]["frames_scored"] > 20
    bench = {"machine": {"cpu": "x", "cores": 2}, "measured_at": "now",
             "rows": [{"variant": "pixel-ddpm-1000", "s_per_image": 60.0}, {"variant": "latent-dit", "s_per_image": 0.1}]}
    dataset = json.loads((demo_dataset / "dataset.json").read_text())
    path = demo_cmd.write_report(tmp_path, dataset, live, alarms, [], {"synth": bench}, "# Detector evaluation\n")
    text = path.read_text()
    for section in ("## Live run", "| vae_image_detector |", "end to end", "Alarms raised live",
                    "## Benchmark: synth", "pixel-ddpm-1000", "latent-dit"):
        assert section in text


def test_an_unchanged_synthesis_table_is_kept_and_a_changed_model_invalidates_it(tmp_path, monkeypatch):
    models = tmp_path / "models"
    for name in ("latent_dit", "dcae", "pixel_ddpm"):
        (models / name).mkdir(parents=True)
        (models / name / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    first = demo_cmd.models_fingerprint(demo_cmd.REUSABLE["synth"])
    report = {"machine": {}, "rows": [], "measured_at": "earlier", "demo_fingerprint": first}
    (tmp_path / "bench_synth.json").write_text(json.dumps(report))
    kept = demo_cmd.run_benches(tmp_path, stages=("synth",))  # would take minutes if it measured
    assert kept["synth"]["measured_at"] == "earlier"
    (models / "dcae" / "config.json").write_text('{"retrained": true}')
    assert demo_cmd.models_fingerprint(demo_cmd.REUSABLE["synth"]) != first
    shutil.rmtree(models / "pixel_ddpm")
    second = demo_cmd.models_fingerprint(demo_cmd.REUSABLE["synth"])
    assert second != first
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "default.yaml").write_text("analysis: retuned")  # the table scores the analysis too
    assert demo_cmd.models_fingerprint(demo_cmd.REUSABLE["synth"]) != second
