"""Many recordings: inputs and globs, the local and Ray engines giving the same scores, a damaged
recording skipped and reported, a worker killed mid-run retried by Ray, evaluate's fleet report. The
`ray_local` and `clips` fixtures are in conftest.py (test_fleet_engines.py shares them)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ood_monitor.cli.main import main as cli
from ood_monitor.fleet.engines import ScoringJob, score_local
from ood_monitor.fleet.inputs import expand_inputs

MODELS = ["models/vae_image", "models/vae_flow"]  # the shipped models: nothing to train


def test_inputs_expand_globs_in_order_and_refuse_a_pattern_matching_nothing(clips):
    root = clips[0].parent
    assert expand_inputs([f"{root}/robot[12]/", str(clips[0]), f"{root}/robot1"]) == [clips[1], clips[2], clips[0]]
    with pytest.raises(FileNotFoundError, match="matches nothing"):
        expand_inputs([f"{root}/robot9*"])
    with pytest.raises(FileNotFoundError, match="data not found"):
        expand_inputs([str(root / "nope")])


def test_ray_scores_equal_local_and_damaged_recordings_are_skipped(clips, ray_local):
    from ood_monitor.fleet.ray_engine import score_on_ray

    job = ScoringJob(MODELS)
    local = score_local(clips, job, progress=None)
    ray = score_on_ray(clips, job, workers=2, progress=None)
    assert set(local.failed) == set(ray.failed) == {str(clips[3]), str(clips[4])}
    assert "cannot open bag" in ray.failed[str(clips[3])] and str(clips[3]) in ray.failed[str(clips[3])]
    for m in range(len(MODELS)):
        a, b = local.table(m), ray.table(m)
        assert len(a) == len(b) == (48 if m == 0 else 45)  # flow: none into each clip's first frame
        assert (a.source == b.source).all() and (a.stamp_ns == b.stamp_ns).all() and (a.episode == b.episode).all()
        np.testing.assert_allclose(b.score, a.score, rtol=1e-5)


def test_a_worker_killed_mid_run_is_retried_and_results_are_complete(clips, ray_local, tmp_path):
    from ood_monitor.fleet.ray_engine import score_on_ray

    marker = tmp_path / "killed"
    job = ScoringJob(MODELS[:1])
    ray = score_on_ray(clips[:3], job, workers=2, progress=None,
                       runtime_env={"env_vars": {"OOD_MONITOR_FLEET_KILL_ONCE": str(marker)}})
    assert marker.exists()  # one actor did die mid-run
    assert not ray.failed and len(ray.table(0)) == 48
    np.testing.assert_allclose(ray.table(0).score, score_local(clips[:3], job, progress=None).table(0).score, rtol=1e-5)


def test_evaluate_on_ray_ranks_recordings_and_exits_nonzero_for_failed_inputs(clips, ray_local, tmp_path, capsys):
    out = tmp_path / "report"
    root = clips[0].parent
    code = cli(["evaluate", "--data", f"{root}/robot*", "--models", MODELS[0], "--out", str(out), "--synthesizer",
                "none", "--engine", "ray", "--workers", "2"])
    assert code == 1
    assert "2 of 5 input(s) failed" in capsys.readouterr().err
    fleet = json.loads((out / "fleet.json").read_text())
    assert fleet["engine"] == "ray" and set(fleet["failed"]) == {str(clips[3]), str(clips[4])}
    assert {r["source"] for r in fleet["ranking"]} == {str(c) for c in clips[:3]}
    alarmed = [r["alarm_s"] for r in fleet["ranking"]]
    assert alarmed == sorted(alarmed, reverse=True)
    result = json.loads((out / "evaluation.json").read_text())[0]
    assert result["sequences"] == 3 and [p["frames"] for p in result["per_source"]] == [16, 16, 16]
    text = (out / "report.md").read_text()
    assert "could not be read and were skipped" in text and "Recordings by alarmed time" in text
    assert str(clips[3]) in text


def test_train_vae_on_two_ray_workers_gives_a_loadable_model_like_the_local_run(demo_dataset, ray_local, tmp_path):
    from ood_monitor.core.vae.io import load_encoder

    common = ["train", "vae", "--kind", "image", "--data", str(demo_dataset / "bags" / "train"), "--size", "32",
              "--latent", "6", "--widths", "8,16,16", "--hidden", "32", "--epochs", "4", "--batch", "16",
              "--select-k", "3", "--threads", "1", "--score", "kl_deviation", "--val-split", "0.2", "--patience", "10",
              "--min-steps", "1"]
    assert cli([*common, "--out", str(tmp_path / "local")]) == 0
    assert cli([*common, "--out", str(tmp_path / "ray"), "--engine", "ray", "--workers", "2"]) == 0
    local = json.loads((tmp_path / "local" / "config.json").read_text())
    ray = json.loads((tmp_path / "ray" / "config.json").read_text())
    assert ray["model"] == local["model"] and ray["score"] == local["score"] == "kl_deviation"
    assert ray["training"]["settings"]["engine"] == "ray" and ray["training"]["settings"]["workers"] == 2
    curve = [e["train_loss"] for e in ray["training"]["curve"]]
    assert len(curve) == 4 and curve[-1] < curve[0]  # it learns
    # each worker sees half the rows, so it takes half the local steps per epoch, with averaged gradients
    assert ray["training"]["steps"] * 2 == pytest.approx(local["training"]["steps"], abs=4)
    val_local, val_ray = local["training"]["best_val"], ray["training"]["best_val"]
    assert val_ray < 1.5 * val_local  # same objective, same scale of result
    encoder, card = load_encoder(tmp_path / "ray")
    assert card.selected_dims and len(card.latent_stats["kl_mean"]) == 6


def test_train_dcae_on_ray_writes_the_checkpoint_a_local_run_resumes(demo_dataset, ray_local, tmp_path):
    out = tmp_path / "dcae"
    common = ["train", "dcae", "--data", str(demo_dataset / "bags" / "train"), "--out", str(out), "--size", "32",
              "--batch", "4", "--crop", "0", "--channels", "16,16", "--layers", "0,1", "--latent-channels", "4",
              "--threads", "1", "--max-frames", "24"]
    assert cli([*common, "--steps", "4", "--engine", "ray", "--workers", "2"]) == 0
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    card = json.loads((out / "config.json").read_text())
    assert state["step"] == 4 and card["training"]["steps"] == 4 and (out / "model.safetensors").is_file()
    assert cli([*common, "--steps", "6", "--resume"]) == 0  # the local engine continues the Ray run
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 6


def test_bench_fleet_quick_rows(tmp_path, demo_dataset, ray_local):
    report = tmp_path / "fleet.json"
    assert cli(["bench", "fleet", "--quick", "--data", str(demo_dataset / "bags" / "calibration"), "--models",
                MODELS[0], "--json", str(report), "--rounds", "2"]) == 0
    rows = {r["variant"]: r for r in json.loads(report.read_text())["rows"]}
    assert set(rows) == {"local", "ray-1", "ray-2"}
    assert len({r["frames"] for r in rows.values()}) == 1 and rows["local"]["x_local"] == 1.0
    assert all(r["frames_per_s"] > 0 and r["overhead_s_per_task"] >= 0 for r in rows.values())
    for row in rows.values():  # the reported run is one of the two rounds, and the lower one (median of 2)
        assert len(row["rounds_frames_per_s"]) == 2 and len(row["rounds_x_local"]) == 2
        assert round(row["frames_per_s"], 1) == min(row["rounds_frames_per_s"])
    assert rows["local"]["rounds_x_local"] == [1.0, 1.0]
    for row in rows.values():  # the start-up comes before the first read: a part of the run, not all of it
        assert 0 < row["startup_s"] < row["seconds"]
        assert row["after_startup_frames_per_s"] > row["frames_per_s"]
