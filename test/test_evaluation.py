"""Frame/alarm evaluation tables and the `ood-monitor evaluate` command end to end on the demo bags."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ood_monitor.cli.main import main as cli
from ood_monitor.core.conformal import AlarmConfig
from ood_monitor.core.detector_evaluation import Labels, alarm_table, flow_input_labels, frame_table


def sequence_labels() -> tuple[np.ndarray, Labels]:
    """100 nominal frames, a 20-frame fog episode (scores clearly higher), 150 nominal (the CUSUM decays),
    a 20-frame swerve episode (scores indistinguishable)."""
    rng = np.random.default_rng(0)
    kinds = np.array(["nominal"] * 100 + ["fog"] * 20 + ["nominal"] * 150 + ["swerve"] * 20, dtype=object)
    category = np.where(kinds == "fog", "global", np.where(kinds == "swerve", "motion", "in_distribution"))
    is_ood = kinds != "nominal"
    episode = np.r_[np.zeros(100), np.ones(20), np.zeros(150), np.full(20, 2)].astype(int)
    scores = rng.normal(0, 1, kinds.size) + np.where(kinds == "fog", 6.0, 0.0)
    return scores, Labels(is_ood, category, kinds, episode)


def test_frame_table_per_kind_and_category():
    scores, labels = sequence_labels()
    table = frame_table(scores, labels)
    assert table["kind:fog"]["auroc"] > 0.99 and table["kind:fog"]["frames"] == 20
    assert 0.3 < table["kind:swerve"]["auroc"] < 0.7
    assert table["category:global"] == table["kind:fog"]
    assert table["all"]["frames"] == 40


def test_alarm_table_delay_and_missed_episode():
    scores, labels = sequence_labels()
    calibration = np.random.default_rng(1).normal(0, 1, 500)
    results, traces = alarm_table(calibration, scores, labels, {"cusum": AlarmConfig(test="cusum", cusum_threshold=10)})
    fog, swerve = results["cusum"]["category:global"], results["cusum"]["category:motion"]
    assert fog["missed_episodes"] == 0 and fog["median_delay"] <= 3
    assert swerve["missed_episodes"] == 1
    alarms = traces["cusum"]["is_ood"]
    assert alarms[:100].sum() <= 2  # nominal stream before the episode: quiet
    # after the episode the statistic decays for a while, but the newest frames are nominal: no alarm
    assert results["cusum"]["all"]["false_alarm_frames"] == alarms[~labels.is_ood].sum() == 0
    assert traces["cusum"]["is_ood"].shape == scores.shape
    # without the newest-frame gate the decaying statistic alarms on them, and they count as false alarms
    ungated = AlarmConfig(test="cusum", cusum_threshold=10, frame_p_max=1.0)
    results, traces = alarm_table(calibration, scores, labels, {"cusum": ungated})
    alarms = traces["cusum"]["is_ood"]
    assert results["cusum"]["all"]["false_alarm_frames"] == alarms[~labels.is_ood].sum() > 0
    assert results["cusum"]["category:global"]["median_delay"] == fog["median_delay"]


def test_flow_input_labels_leave_out_the_frame_after_an_episode():
    """The flow of the first clean frame after an episode pairs it with the episode's last frame: the
    monitor runs over it, no metric counts it, and a restart in between keeps it counted."""
    is_ood = np.array([0, 0, 1, 1, 0, 0, 1, 0, 0], bool)
    sequence = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1])
    labels = flow_input_labels(Labels(is_ood, np.where(is_ood, "motion", "in_distribution"),
                                      np.where(is_ood, "jerk", "nominal"), np.r_[0, 0, 1, 1, 0, 0, 2, 0, 0], sequence))
    assert labels.counted.tolist() == [True, True, True, True, False, True, True, True, True]
    scores = np.r_[0.0, 0.0, 50.0, 50.0, 50.0, 0.0, 50.0, 0.0, 0.0]  # the episode's flow lingers one frame
    calibration = np.linspace(0.0, 1.0, 200)
    cfg = AlarmConfig(test="pvalue", pvalue_threshold=0.01)
    results, traces = alarm_table(calibration, scores, labels, {"pvalue": cfg})
    assert traces["pvalue"]["is_ood"].tolist()[4]  # the node would alarm there ...
    assert results["pvalue"]["all"]["false_alarm_frames"] == 0  # ... and it is not a false alarm
    plain, _ = alarm_table(calibration, scores, Labels(*[getattr(labels, f) for f in
                                                        ("is_ood", "category", "kind", "episode", "sequence")]),
                           {"pvalue": cfg})
    assert plain["pvalue"]["all"]["false_alarm_frames"] == 1
    assert frame_table(scores, labels)["all"]["frames"] == 3


@pytest.mark.slow
def test_evaluate_command_on_the_demo_bags(demo_dataset, tiny_image_model, tmp_path):
    bags = demo_dataset / "bags"
    model = tiny_image_model
    out = tmp_path / "report"
    assert cli(["evaluate", "--data", str(bags / "test"), "--models", str(model), "--out", str(out)]) == 0
    result = json.loads((out / "evaluation.json").read_text())[0]
    assert json.loads((model / "config.json").read_text())["score"] == "kl_texture_photometric_structure"
    assert set(result["frame_metrics"]) >= {"category:global", "category:motion", "category:object", "kind:night"}
    assert all(0.0 <= m["auroc"] <= 1.0 for m in result["frame_metrics"].values())
    assert set(result["alarms"]) == {"martingale", "cusum"}
    text = (out / "report.md").read_text()
    assert "| category:global |" in text and "curves_vae_image.png" in text
    assert "score kl_texture_photometric_structure (kl_texture tolerance" in text  # each part's calibrated margin
    assert ", structure tolerance" in text
    assert (out / "curves_vae_image.png").stat().st_size > 10_000 and (out / "timeline_vae_image.png").exists()
    assert cli(["evaluate", "--data", str(tmp_path / "nope"), "--models", str(model), "--out", str(out)]) == 2


def test_evaluate_masks_run_the_analysis_node_settings_of_params(tmp_path):
    import argparse

    import yaml

    from ood_monitor.cli.evaluate_cmd import mask_analysis
    from ood_monitor.core.analysis import AnalysisConfig

    def args(params=None, **kw) -> argparse.Namespace:
        return argparse.Namespace(params=params, **{"segmenter": None, "sam_checkpoint": None, "features": "none", **kw})

    analyzer, choice, features = mask_analysis(args())
    assert analyzer.cfg == AnalysisConfig() and choice.segmenter.name == "slic"
    assert features.startswith("none; nominal statistics") and analyzer.nominal is not None  # auto: shipped
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"/**/analysis_node": {"ros__parameters": {
        "weight_feature": 0.0, "weight_colour": 2.0, "threshold": 0.7, "confidence_gain": 1.5, "slic_segments": 77,
        "slic_iterations": 5, "fallback_segmenter": "slic", "feature_extractor": "random", "nominal_stats": "none"}}}))
    analyzer, choice, features = mask_analysis(args(params, features=None))
    assert analyzer.cfg.threshold == 0.7 and analyzer.cfg.confidence_gain == 1.5 and analyzer.nominal is None
    assert analyzer.cfg.discrepancy.weight_colour == 2.0 and analyzer.cfg.discrepancy.weight_feature == 0.0
    assert choice.segmenter.n_segments == 77 and choice.segmenter.iterations == 5 and features.startswith("random")
    _, choice, _ = mask_analysis(args(params, segmenter="felzenszwalb"))  # the command line wins
    assert choice.segmenter.name == "felzenszwalb"


def test_mask_overlays_are_spread_over_every_evaluated_frame():
    import numpy as np

    from ood_monitor.core.analysis.mask_evaluation import MaskEvaluation

    ev = MaskEvaluation((1,), keep=6)
    zero, gt = np.zeros((4, 4), np.float32), np.eye(4, dtype=bool)
    for i in range(80):  # e.g. a 40-frame large-object episode, then a 40-frame small-objects one
        ev.add(np.full((4, 4, 3), i, np.uint8), None, zero, zero, gt, None, 1.0)
    kept = [int(s[0][0, 0, 0]) for s in ev.samples]
    assert 4 <= len(kept) <= 6 and kept[0] == 0 and kept[-1] >= 60 and kept == sorted(kept)
