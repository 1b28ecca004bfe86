"""`evaluate` as the detector node runs: alarm state restarted where the node restarts it, the shipped
alarm settings, per-frame scores exported, clear reports for data without OOD frames or semantic labels."""
from __future__ import annotations

import csv
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from ood_monitor.cli import evaluate_cmd
from ood_monitor.core.detector_evaluation import episode_ids, sequence_ids
from ood_monitor.core.plots import episode_bands
from ood_monitor.core.vae.io import ModelFileError
from ood_monitor.fleet.scoring import ScoreTable

FRAME_NS = 66_666_667  # 15 fps
SHIPPED = Path(__file__).resolve().parents[1] / "config" / "default.yaml"


STORED = {"martingale": "mixture", "epsilon": 0.5, "window": 5, "martingale_threshold": 9.5, "cusum_delta": 2.0,
          "cusum_threshold": 25.0, "p_floor": 0.005, "tail": "none", "score_tolerance": 1.0}  # what `calibrate` stores (AlarmConfig fields)


def stub_scorer(tmp_path: Path, alarm: dict | None = None) -> SimpleNamespace:
    """What evaluate_model needs of a loaded model: a card (kind, score and its description, stored alarm) and
    calibration scores."""
    card = SimpleNamespace(kind="image", score="kl_texture", score_description="kl_texture",
                           alarm_settings=lambda path: {**STORED, **(alarm or {})})
    calibration = np.sort(np.random.default_rng(1).normal(0.0, 1.0, 500))
    return SimpleNamespace(name="vae_stub", path=tmp_path / "vae_stub", card=card, calibration=calibration)


def table(clips: list[list[tuple[str, int, float]]], source: str = "clips") -> ScoreTable:
    """Frames of back-to-back clips in one folder, each clip's stamps starting again at 0 (as concatenated
    recordings do): rows (kind, episode, score)."""
    rows = [(0, k * FRAME_NS, kind, ep, s) for clip in clips for k, (kind, ep, s) in enumerate(clip)]
    frame = np.arange(len(rows))
    return ScoreTable(source=np.array([source] * len(rows), dtype=object), frame=frame,
                      stamp_ns=np.array([r[1] for r in rows], np.int64),
                      is_ood=np.array([r[2] != "nominal" for r in rows]),
                      category=np.array(["in_distribution" if r[2] == "nominal" else "global" for r in rows], dtype=object),
                      kind=np.array([r[2] for r in rows], dtype=object), episode=np.array([r[3] for r in rows], np.int64),
                      score=np.array([r[4] for r in rows], np.float64))


def nominal(n: int) -> list[tuple[str, int, float]]:
    return [("nominal", 0, float(v)) for v in np.random.default_rng(n).normal(0.0, 1.0, n)]


def fog(n: int, episode: int) -> list[tuple[str, int, float]]:
    return [("fog", episode, 100.0)] * n


def test_sequences_restart_where_the_node_restarts():
    stamps = np.array([0, 1, 2, 3, 1, 2, 9, 10], np.int64) * 400_000_000  # back at 4, a 2.8 s gap at 6
    assert sequence_ids(stamps, 1.0).tolist() == [0, 0, 0, 0, 1, 1, 2, 2]
    assert sequence_ids(stamps, 3.0).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert sequence_ids(stamps[:4], 1.0, np.array(["a", "a", "b", "b"])).tolist() == [0, 0, 1, 1]
    # a duplicate stamp is no gap forward: the node rejects that frame, evaluate never scores it
    assert sequence_ids(np.array([0, 5, 5], np.int64), 1.0).tolist() == [0, 0, 1]
    # mask-numbered episodes restart at 1 in each clip: still two episodes
    ids = episode_ids(np.array([0, 1, 1, 1, 1, 0]), np.array([0, 0, 0, 1, 1, 1]), np.array([0, 1, 1, 1, 1, 0], bool))
    assert ids.tolist() == [0, 1, 1, 2, 2, 0]


def test_back_to_back_episodes_get_their_own_delay_and_band(tmp_path):
    """Clip 1 ends in a fog episode, clip 2 starts with another: the node restarts the alarm state at
    clip 2's first stamp, so episode 2 is detected after as many frames as episode 1 (not at 0)."""
    scores = table([nominal(30) + fog(10, 1), fog(10, 1) + nominal(30)])
    r = evaluate_cmd.evaluate_model(stub_scorer(tmp_path), scores, tmp_path, "clips", SHIPPED, ["martingale", "cusum"])
    assert r["sequences"] == 2
    for test in ("martingale", "cusum"):
        a = r["alarms"][test]["all"]
        assert a["ood_episodes"] == 2 and a["missed_episodes"] == 0
        assert a["median_delay"] >= 1  # old evaluate: episode 2 inherited episode 1's alarm (delay 0)
    with (tmp_path / "scores_vae_stub.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 80 and rows[40]["sequence"] == "1" and rows[40]["episode"] == "2"
    first_alarm = [next(i for i in range(start, start + 10) if rows[i]["alarm_martingale"] == "1") - start
                   for start in (30, 40)]
    assert first_alarm[0] == first_alarm[1] >= 1
    assert float(rows[31]["score"]) == 100.0 and float(rows[31]["p_value"]) == pytest.approx(0.005)
    assert episode_bands(np.array([r["is_ood"] == "1" for r in rows]), np.array([int(r["episode"]) for r in rows])) \
        == [(30, 40), (40, 50)]
    assert (tmp_path / "timeline_vae_stub.png").stat().st_size > 10_000


def test_alarm_settings_are_the_node_s_parameter_file_then_the_model_s_calibration(tmp_path):
    shipped = yaml.safe_load(SHIPPED.read_text())["/**/vae_image_detector"]["ros__parameters"]
    configs, gap, origin = evaluate_cmd.alarm_settings("image", lambda: STORED, None, ["martingale"])
    cfg = configs["martingale"]  # the shipped file leaves the thresholds calibrated (0): the model's
    assert (cfg.window, cfg.martingale_threshold, cfg.cusum_threshold) == (5, 9.5, 25.0)
    assert gap == shipped["max_gap_s"] and origin["window"] == "model config.json alarm"
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump({"/**/vae_image_detector": {"ros__parameters": {"window": 7, "max_gap_s": 0.25,
                                                                                     "cusum_threshold": 0.0}}}))
    configs, gap, origin = evaluate_cmd.alarm_settings("image", lambda: STORED, params, ["cusum"])
    cfg = configs["cusum"]
    assert (cfg.test, cfg.window, cfg.martingale_threshold, cfg.cusum_threshold, gap) == ("cusum", 7, 9.5, 25.0, 0.25)
    assert origin["window"] == str(params) and origin["cusum_threshold"] == "model config.json alarm"

    def uncalibrated() -> dict:
        raise ModelFileError("config.json has no calibrated alarm thresholds")

    with pytest.raises(ModelFileError, match="no calibrated alarm thresholds"):
        evaluate_cmd.alarm_settings("image", uncalibrated, params, ["martingale"])
    every = {k: v for k, v in {**STORED, "window": 3}.items()}
    params.write_text(yaml.safe_dump({"/**/vae_image_detector": {"ros__parameters": every}}))
    configs, _, _ = evaluate_cmd.alarm_settings("image", uncalibrated, params, ["martingale"])  # all given
    assert configs["martingale"].window == 3


def test_model_stored_alarm_settings_are_used_without_params(tmp_path):
    scores = table([nominal(30) + fog(10, 1)])
    r = evaluate_cmd.evaluate_model(stub_scorer(tmp_path, {"window": 2, "martingale_threshold": 3.0}), scores,
                                    tmp_path, "clip", None, ["martingale"])
    assert r["alarm_settings"]["martingale"]["window"] == 2
    assert r["alarm_settings"]["martingale"]["martingale_threshold"] == 3.0


def test_data_without_ood_frames_reports_false_alarms_and_no_auroc(tmp_path):
    scores = table([nominal(60)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no matplotlib "no artists with labels" warning
        r = evaluate_cmd.evaluate_model(stub_scorer(tmp_path), scores, tmp_path, "clean", SHIPPED, ["martingale"])
    assert r["frame_metrics"] == {} and "no frame is labelled OOD" in r["frame_metrics_note"]
    assert r["alarms"]["martingale"]["all"]["ood_episodes"] == 0
    assert not (tmp_path / "curves_vae_stub.png").exists()
    text = evaluate_cmd.markdown([r], "clean")
    assert "no frame is labelled OOD" in text and "| OOD group |" not in text and "| nan |" not in text


def test_fstar_is_not_reported_as_zero_without_semantic_labels():
    assert "no anomaly classes" in evaluate_cmd.fstar_note("f", (), 0)
    assert "semantic" in evaluate_cmd.fstar_note("f", (3,), 0)
    assert evaluate_cmd.fstar_note("f", (3,), 5) == ""
    m = {"synthesizer": "s", "segmenter": "slic", "segmenter_reason": "r", "features": "none", "plot": "p.png",
         "groups": {"all": {"frames": 4, "auc_pr": 0.5, "f_star": None, "f_star_tau": None, "ms_per_frame": 3.0,
                            "f_star_note": evaluate_cmd.fstar_note("f", (), 0)}}}
    text = evaluate_cmd.masks_markdown(m)
    assert "| all | 4 | 0.500 | n/a | n/a |" in text and "F* not computed" in text
