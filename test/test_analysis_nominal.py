"""Nominal discrepancy statistics: fitted on nominal pairs they discount where the synthesizer always
errs (a position, a kind of surface) and keep an anomaly elsewhere; files load, or fail naming the file
and the command; `auto` finds the shipped folder; calibrate-analysis writes what the node loads."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ood_monitor.cli.main import main as cli
from ood_monitor.core.analysis import Analyzer
from ood_monitor.core.analysis.nominal import NominalDiscrepancy, NominalStatsError, load_nominal
from ood_monitor.core.analysis.segmenters import SlicSegmenter

H = W = 48


def nominal_pairs(n: int = 12, seed: int = 0):
    """Green 'vegetation' on the left always comes back wrong (0.3 +- 0.05), grey 'trail' on the right
    almost right (0.02 +- 0.01)."""
    rng = np.random.default_rng(seed)
    image = np.zeros((H, W, 3), np.uint8)
    image[:, : W // 2] = (40, 140, 40)
    image[:, W // 2:] = (150, 140, 130)
    for _ in range(n):
        disc = np.empty((H, W), np.float32)
        disc[:, : W // 2] = rng.normal(0.3, 0.05, (H, W // 2))
        disc[:, W // 2:] = rng.normal(0.02, 0.01, (H, W - W // 2))
        yield image, np.clip(disc, 0, 1)


@pytest.fixture(scope="module")
def stats() -> NominalDiscrepancy:
    return NominalDiscrepancy.fit(nominal_pairs(), k=2, z_scale=8.0)


def test_usual_errors_are_discounted_and_a_small_anomaly_on_the_trail_stands_out(stats):
    image, disc = next(nominal_pairs(1, seed=5))
    disc = disc.copy()
    disc[20:26, 34:40] = 0.3  # an object on the trail: as different as vegetation always is
    out = stats(image, disc)
    assert out.dtype == np.float32 and out.shape == (H, W) and out.min() >= 0.0 and out.max() <= 1.0
    anomaly, vegetation = out[20:26, 34:40].mean(), out[:, : W // 2].mean()
    assert anomaly > 0.5 and vegetation < 0.1  # raw: equal (0.3 both)
    assert stats.clusters(image)[0, 0] != stats.clusters(image)[0, -1]


def test_position_maps_follow_another_resolution(stats):
    image = np.repeat(np.repeat(next(nominal_pairs(1))[0], 2, 0), 2, 1)
    out = stats(image, np.full((2 * H, 2 * W), 0.3, np.float32))
    assert out.shape == (2 * H, 2 * W)
    assert out[:, W + 4:].mean() > 0.5 > out[:, : W - 4].mean()


def test_save_load_round_trip_and_analyzer_uses_it(tmp_path, stats):
    stats.save(tmp_path / "nom")
    back = NominalDiscrepancy.load(tmp_path / "nom")
    np.testing.assert_array_equal(back.loc_mean, stats.loc_mean)
    assert back.z_scale == stats.z_scale and back.info["frames"] == 12
    image = next(nominal_pairs(1))[0]
    same = Analyzer(segmenter=SlicSegmenter(n_segments=20), nominal=back).analyze(image, image)
    assert same.confidence.max() == 0.0  # no change is never anomalous, however the statistics look


def test_bad_files_fail_naming_the_file_and_the_command(tmp_path, stats):
    with pytest.raises(NominalStatsError, match=r"absent/config.json .*ood-monitor calibrate-analysis"):
        NominalDiscrepancy.load(tmp_path / "absent")
    folder = stats.save(tmp_path / "nom")
    (folder / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(NominalStatsError, match="does not match its config.json hash"):
        NominalDiscrepancy.load(folder)
    card = json.loads((folder / "config.json").read_text())
    card.pop("weights_sha256")
    (folder / "config.json").write_text(json.dumps(card))
    with pytest.raises(NominalStatsError, match="corrupt"):
        NominalDiscrepancy.load(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(NominalStatsError, match="not valid JSON"):
        NominalDiscrepancy.load(folder)
    with pytest.raises(NominalStatsError, match="positive"):
        NominalDiscrepancy(stats.loc_mean, stats.loc_std * 0, stats.centers, stats.cluster_mean, stats.cluster_std)


def test_load_nominal_resolves_auto_none_and_paths(tmp_path, stats):
    assert load_nominal("none")[0] is None and load_nominal("")[0] is None
    off, why = load_nominal("auto", tmp_path)
    assert off is None and "analysis_nominal" in why
    stats.save(tmp_path / "analysis_nominal")
    found, why = load_nominal("auto", tmp_path)
    assert found is not None and "12 nominal frames" in why
    with pytest.raises(NominalStatsError):  # a configured folder must load: never silently skipped
        load_nominal(str(tmp_path / "missing"), tmp_path)


def test_shipped_statistics_load():
    stats, why = load_nominal("auto", "models")
    assert stats is not None and stats.size == (128, 128) and stats.info["synthesizer"] == "models/latent_dit"


def test_calibrate_analysis_writes_what_the_node_loads(demo_dataset, tmp_path):
    out = tmp_path / "analysis_nominal"
    args = ["calibrate-analysis", "--data", str(demo_dataset / "bags" / "calibration"), "--max-frames", "6",
            "--clusters", "4", "--out", str(out)]
    assert cli(args) == 0
    stats, why = load_nominal("auto", tmp_path)
    assert stats.info["frames"] == 6 and len(stats.centers) == 4 and "6 nominal frames" in why
    assert stats.info["command"].startswith("ood-monitor") and stats.info["synthesizer"] == "models/latent_dit"
    # fitted for the synthesizer the node runs with the shipped parameters (the realtime preset)
    assert stats.info["sampling"]["kind"] == "gradfree" and stats.info["sampling"]["steps"] == 2


def test_calibrate_analysis_replaces_broken_statistics(demo_dataset, tmp_path):
    models = tmp_path / "models"
    (models / "analysis_nominal").mkdir(parents=True)
    (models / "analysis_nominal" / "config.json").write_text("{broken")
    params = tmp_path / "params.yaml"
    params.write_text(f"/**/analysis_node:\n  ros__parameters:\n    models_dir: {models}\n    feature_extractor: none\n")
    args = ["calibrate-analysis", "--data", str(demo_dataset / "bags" / "calibration"), "--max-frames", "4",
            "--clusters", "3", "--params", str(params), "--out", str(models / "analysis_nominal")]
    assert cli(args) == 0
    assert load_nominal("auto", models)[0].info["frames"] == 4
