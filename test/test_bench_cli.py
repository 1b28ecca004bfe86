"""The benchmark commands run what the nodes run and write the rows the issues name."""
from __future__ import annotations

import json

import pytest

from ood_monitor.cli.main import main as cli


def rows(path) -> dict[str, dict]:
    report = json.loads(path.read_text())
    assert {"cpu", "cores", "python"} <= set(report["machine"])
    return {r["variant"]: r for r in report["rows"]}


def test_bench_preprocess_rows(tmp_path):
    out = tmp_path / "pre.json"
    assert cli(["bench", "preprocess", "--quick", "--json", str(out)]) == 0
    r = rows(out)
    assert {"128px", "256px"} <= set(r)
    assert r["128px"]["frames"] == 40 and 0 < r["128px"]["ms_per_frame"] < r["256px"]["ms_per_frame"] * 5
    assert r["128px"]["ms_per_frame"] == pytest.approx(r["128px"]["decode_ms"] + r["128px"]["resize_flow_ms"], rel=1e-6)
    residual = r["flow-residual-128"]  # the warp residual's cost, measured beside flow without it
    assert residual["with_residual_ms"] > 0 and residual["without_ms"] > 0
    assert residual["residual_ms"] == pytest.approx(residual["with_residual_ms"] - residual["without_ms"])
    assert residual["ratio"] == pytest.approx(residual["with_residual_ms"] / residual["without_ms"])


def test_bench_vae_rows_with_the_shipped_models(tmp_path):
    out = tmp_path / "vae.json"
    assert cli(["bench", "vae", "--quick", "--json", str(out)]) == 0
    r = rows(out)
    assert {"pipeline", "deterministic", "mc30", "flow", "flow-motion-term"} <= set(r)
    assert all(row["ms_per_frame"] > 0 and row["frames"] == 30 for row in r.values())
    assert "posterior_motion" in r["flow"]["what"]  # the shipped flow model's score, timed as it runs
    assert r["deterministic"]["x_deterministic"] == pytest.approx(1.0)


def test_bench_hvae_sweep_writes_flat_and_ratio_rows(demo_dataset, tmp_path):
    out = tmp_path / "hvae.json"
    args = ["bench", "hvae", "--data", str(demo_dataset / "bags"), "--size", "16", "--latent", "4",
            "--select-k", "2", "--epochs", "1", "--ratios", "0.25,0.75", "--json", str(out)]
    assert cli(args) == 0
    r = rows(out)
    assert list(r) == ["flat", "hvae-r0.25", "hvae-r0.75"]
    assert r["flat"]["levels"] == "flat" and r["hvae-r0.25"]["levels"] == "1/3" and r["hvae-r0.75"]["levels"] == "3/1"
    for row in r.values():
        assert 0.0 <= row["auroc_global"] <= 1.0 and 0.0 <= row["auroc_motion"] <= 1.0
        assert row["auroc"] == row["auroc_global"] and row["train_s"] > 0 and 0 <= row["active_dims"] <= 4
    assert r["flat"]["delta_points"] == 0.0
    assert r["hvae-r0.75"]["delta_points"] == pytest.approx(100 * (r["hvae-r0.75"]["auroc"] - r["flat"]["auroc"]))
    assert json.loads(out.read_text())["sweep"]["epochs"] == 1


@pytest.mark.ros
def test_bench_pipeline_samples_memory_and_latency_over_time(demo_dataset, tmp_path):
    """The live graph (camera-rate stages) driven at 30 Hz for a few windows: every window has the
    input rate, the detectors' latency and this process's memory, and the summary judges both trends."""
    out = tmp_path / "pipe.json"
    args = ["bench", "pipeline", "--data", str(demo_dataset / "bags" / "test"), "--stages", "preprocess,detect",
            "--seconds", "9", "--interval", "3", "--json", str(out)]
    assert cli(args) == 0
    report = json.loads(out.read_text())
    windows = [r for r in report["rows"] if "t_s" in r]
    assert len(windows) == 3 and [w["t_s"] for w in windows] == sorted(w["t_s"] for w in windows)
    # one row per output over the run after its first window (issue 16: what --quick --json reports)
    steady = {r["variant"]: r for r in report["rows"] if "t_s" not in r}
    assert {"score_image", "score_flow", "anomaly_mask"} <= set(steady)
    image = steady["score_image"]
    assert 20 < image["camera_hz"] < 36 and image["rate_hz"] > 5 and 0 < image["p50_ms"] <= image["p95_ms"] < 1000
    assert image["frames"] > 0 and (image["from_s"], image["to_s"]) == (windows[0]["t_s"], windows[-1]["t_s"])
    assert steady["anomaly_mask"]["frames"] == 0 and steady["anomaly_mask"]["rate_hz"] == 0  # no mask stage asked for
    late = windows[-1]
    assert 20 < late["camera_hz"] < 36
    assert late["score_image_hz"] > 5 and 0 < late["score_image_p95_ms"] < 1000
    assert late["rss_camera_stages_mb"] > 50 and "rss_heavy_stages_mb" not in late  # no heavy stage asked for
    summary = report["summary"]
    assert set(summary["memory"]) == {"camera_stages"} and "score_image" in summary["latency"]
    assert isinstance(summary["no_leak"], bool) and isinstance(summary["no_backlog"], bool)
    assert (tmp_path / "pipe.png").stat().st_size > 0
    assert report["nodes"]["vae_image_detector"]["processed"] > 0


def test_live_graph_puts_the_heavy_stages_in_one_process_or_one_per_node(tmp_path):
    from ood_monitor.ros.live import LiveGraph

    def layout(**kw) -> dict[str, list[str]]:
        graph = LiveGraph(tmp_path / "p.yaml", "all", tmp_path / "bag", None, {}, camera_in_process=False, **kw)
        return {name: [s.name for s in group] for name, group in graph.process_specs.items()}

    shared, per_stage = layout(), layout(heavy_per_stage=True)
    assert shared["heavy_stages"] == ["synthesizer_node", "analysis_node", "nav_bridge_node"]
    assert per_stage["synthesis_stage"] == ["synthesizer_node"]  # as ros2 launch: synthesis alone
    assert per_stage["analysis_stage"] == ["analysis_node", "nav_bridge_node"]
    assert shared["camera_stages"] == per_stage["camera_stages"] and "heavy_stages" not in per_stage


def test_bench_analysis_scores_the_shipped_synthesizer(demo_dataset, tmp_path):
    out = tmp_path / "analysis.json"
    assert cli(["bench", "analysis", "--quick", "--data", str(demo_dataset / "bags" / "test"), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["synthesis"].startswith("real: models/latent_dit")
    r = rows(out)
    assert r["fallback"]["frames"] > 0 and r["fallback"]["ms_per_frame"] > 0
    assert 0.0 <= r["fallback"]["auc_pr"] <= 1.0 and 0.0 <= r["fallback"]["f_star"] <= 1.0


def test_bench_synth_scores_through_the_analysis_stage(demo_dataset, tmp_path):
    out = tmp_path / "synth.json"
    args = ["bench", "synth", "--quick", "--data", str(demo_dataset / "bags" / "test"), "--only", "latent-dit",
            "--json", str(out)]
    assert cli(args) == 0
    report = json.loads(out.read_text())
    assert "analysis" in report and "features" in report["analysis"]
    row = rows(out)["latent-dit"]
    assert row["frames"] == 3 and row["peak_mem_mb"] > row["model_size_mb"] > 0 and row["peak_rss_mb"] > 0
    assert 0.0 <= row["auc_pr"] <= 1.0 and 0.0 <= row["auc_pr_rgb"] <= 1.0 and "f_star" in row


def test_peak_tensor_memory_counts_weights_and_the_largest_live_set():
    """The synthesis table's memory column: a 4 MB and then an 8 MB live set inside fn, on top of 1 MB of
    resident weights, peak at 9 MB (the first is freed before the second is made)."""
    import torch

    from ood_monitor.core.benchmark import peak_tensor_mb

    def fn():
        a = torch.ones(1_000_000)  # 4 MB
        del a
        b = torch.ones(2_000_000)  # 8 MB
        return float(b.sum())

    assert peak_tensor_mb(fn, "cpu", resident_mb=1.0) == pytest.approx(9.0, abs=0.2)


def test_bench_pipeline_reads_the_synthesizers_frame_counts_from_diagnostics():
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    from ood_monitor.cli.bench_pipeline import synthesizer_counts

    def status(name: str, **values) -> DiagnosticStatus:
        return DiagnosticStatus(name=name, values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])

    older = DiagnosticArray(status=[status("synthesizer_node", received=5, skipped_stale=1)])
    newer = DiagnosticArray(status=[status("robot1/analysis_node", received=99),
                                    status("robot1/synthesizer_node", received=9, triggered=6, superseded=1,
                                           skipped_stale=2, backend="ort-cpu-fp32")])
    assert synthesizer_counts([older, newer]) == {"received": 9, "triggered": 6, "superseded": 1, "skipped_stale": 2}


@pytest.mark.parametrize("size", [0, 64])
def test_bench_masks_times_the_mask_path_sequentially_and_as_two_processes(demo_dataset, tmp_path, size):
    """size 0: the shipped models (quality columns); 64: the architectures rebuilt untrained (times only)."""
    out = tmp_path / "masks.json"
    args = ["bench", "masks", "--quick", "--data", str(demo_dataset / "bags" / "test"), "--frames", "3",
            "--seconds", "3", "--camera-hz", "15", "--size", str(size), "--json", str(out)]
    assert cli(args + (["--max-wait-ms", "0"] if size else [])) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["name"] == "anomaly_mask" and row["size"] == (size or 128) and row["masks"] > 0
    assert 0 < row["rate_hz"] <= 1.1 * row["camera_hz"] and 0 < row["p50_ms"] <= row["p95_ms"]
    assert row["ms_per_mask"] >= row["synthesis_ms"] > 0 and row["analysis_ms"] > 0
    assert {"synth_encode_ms", "synth_dit_ms", "synth_decode_ms", "analysis_segmentation_ms"} <= set(row)
    if size:  # --max-wait-ms 0: every frame the synthesizer takes, however old
        assert row["weights"].startswith("UNTRAINED") and "auc_pr" not in row and row["stale"] == 0
    else:
        assert 0.0 <= row["auc_pr"] <= 1.0 and 0.0 <= row["f_star"] <= 1.0
        assert row["max_wait_ms"] == 5.0  # config/default.yaml's synthesizer_node max_wait_ms


def test_mask_hand_over_keeps_the_newest_synthesis():
    import multiprocessing as mp
    import time

    from ood_monitor.cli.bench_masks import _hand_over

    box = mp.get_context("spawn").Queue(maxsize=1)
    assert _hand_over(box, "first") is False
    time.sleep(0.2)  # the queue's feeder thread has written it
    assert _hand_over(box, "second") is True
    assert box.get(timeout=5) == "second"
