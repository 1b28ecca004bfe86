"""The fleet engines beyond evaluate: `calibrate` and `calibrate-analysis` on Ray store what the local
engine stores, and a recording read in chunks (one Ray task per `--chunk-frames` frames) gives the
unchunked scores and alarms. Fixtures `ray_local`, `clips` and `demo_dataset` are in conftest.py."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ood_monitor.cli.main import main as cli
from ood_monitor.fleet.engines import ScoringJob

MODELS = ["models/vae_image", "models/vae_flow"]  # the shipped models: nothing to train
FLOATS = ("score", "p_value", "log_martingale", "cusum")  # scores_<model>.csv columns compared to tolerance


def assert_close(a, b, path: str = "") -> None:
    """Nested dicts/lists equal, numbers to float tolerance (what two engines' float sums can differ by)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-9), path
    else:
        assert a == b, path


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_plan_tasks_chunks_recordings_of_known_length_only(clips, demo_dataset):
    from ood_monitor.fleet.ray_engine import plan_tasks

    bag = demo_dataset / "bags" / "calibration"  # 96 frames by its metadata
    tasks = plan_tasks([clips[0], bag, clips[4]], ScoringJob(MODELS, chunk_frames=40))
    assert [(t["order"], t["start"], t["stop"]) for t in tasks] == [(0, 0, -1), (1, 0, 40), (1, 40, 80), (1, 80, -1),
                                                                  (2, 0, -1)]  # 16 frames: one; garbage: one
    assert len(plan_tasks([clips[0], bag], ScoringJob(MODELS))) == 2  # default: one task per recording
    with pytest.raises(ValueError, match="at least 1"):
        plan_tasks([bag], ScoringJob(MODELS, chunk_frames=0))
    with pytest.raises(ValueError, match="cannot be combined"):
        plan_tasks([bag], ScoringJob(MODELS, chunk_frames=10, limit=20))


@pytest.fixture(scope="module")
def masks_only(demo_dataset, tmp_path_factory) -> Path:
    """The demo test images without labels.csv: frames are OOD by their masks, episodes numbered by them."""
    folder = tmp_path_factory.mktemp("masks_only") / "test"
    shutil.copytree(demo_dataset / "images" / "test", folder, ignore=shutil.ignore_patterns("labels.csv"))
    return folder


@pytest.mark.parametrize("source", ["folder", "bag", "masks_only"])
def test_chunks_of_a_recording_stitch_to_its_unchunked_scores(clips, demo_dataset, masks_only, source):
    """Without Ray: the core of a chunked read. Flow into a chunk's first frame needs the frame before
    it (without that overlap every chunk after the first would lose a flow frame), and the frames
    before a chunk, skipped undecoded, still number the positions and the mask episodes."""
    from ood_monitor.data.labeled_frames import frame_count
    from ood_monitor.fleet.scoring import ModelScorer, ScoreTable, score_source

    path = {"folder": clips[0], "bag": demo_dataset / "bags" / "calibration", "masks_only": masks_only}[source]
    chunk = 7 if source == "folder" else 23
    scorers = [ModelScorer(m, calibrated=False) for m in MODELS]
    whole = score_source(path, scorers)
    n = frame_count(path)
    parts = [score_source(path, scorers, start=a, stop=a + chunk) for a in range(0, n, chunk)]
    assert len(whole[0]) == n
    if source == "masks_only":
        assert whole[0].episode.max() >= 3 and whole[0].is_ood.any()  # episodes to number
    for m, table in enumerate(whole):
        stitched = ScoreTable.concat(p[m] for p in parts)
        assert len(stitched) == len(table) > n - 14  # flow: none into the first frame of each drive in it
        for column in ("frame", "stamp_ns", "episode", "is_ood", "kind"):
            assert (getattr(stitched, column) == getattr(table, column)).all(), column
        np.testing.assert_allclose(stitched.score, table.score, rtol=1e-5)
        assert len(table.data_hash) == 64 and all(p[m].data_hash == "" for p in parts)  # a chunk is not the data


def test_evaluate_chunked_on_ray_gives_the_unchunked_scores_and_alarms(clips, demo_dataset, ray_local, tmp_path):
    damaged = shutil.copytree(clips[2], tmp_path / "damaged")
    sorted((damaged / "frames").iterdir())[13].write_bytes(b"not a png")  # in its second chunk of 12 frames
    data = [str(clips[0]), str(clips[1]), str(demo_dataset / "bags" / "test"), str(damaged)]
    common = ["evaluate", "--data", *data, "--models", *MODELS, "--synthesizer", "none"]
    assert cli([*common, "--out", str(tmp_path / "whole")]) == 1  # the damaged clip fails either way
    assert cli([*common, "--out", str(tmp_path / "chunked"), "--engine", "ray", "--workers", "2",
                "--chunk-frames", "12"]) == 1
    whole = json.loads((tmp_path / "whole" / "fleet.json").read_text())
    chunked = json.loads((tmp_path / "chunked" / "fleet.json").read_text())
    assert whole["tasks"] == 4 and chunked["tasks"] == 2 + 2 + 20 + 2  # 16, 16, 232 and 16 frames
    assert set(chunked["failed"]) == set(whole["failed"]) == {str(damaged)}  # a failed chunk fails its recording
    assert "cannot decode image" in chunked["failed"][str(damaged)]
    for model in ("vae_image", "vae_flow"):
        a, b = (read_rows(tmp_path / run / f"scores_{model}.csv") for run in ("whole", "chunked"))
        assert len(a) == len(b) >= 16 + 16 + 232 - 2 * 20  # flow: none into the first frame of each drive
        assert sum(r["alarm_martingale"] == "1" for r in a) >= 10  # there are alarms to compare
        for x, y in zip(a, b, strict=True):
            assert {k: v for k, v in x.items() if k not in FLOATS} == {k: v for k, v in y.items() if k not in FLOATS}
        for column in FLOATS:
            np.testing.assert_allclose([float(r[column]) for r in b], [float(r[column]) for r in a], rtol=1e-5,
                                       atol=1e-9)


def test_calibrate_on_ray_equals_local_and_skips_an_unreadable_input(clips, ray_local, tmp_path, capsys):
    cards = {}
    for name, engine, chunks in (("local", "local", []), ("ray", "ray", []), ("chunked", "ray", ["--chunk-frames", "5"])):
        model = tmp_path / name / "vae_image"
        shutil.copytree(MODELS[0], model)
        code = cli(["calibrate", "--model", str(model), "--data", *map(str, clips[:4]), "--engine", engine,
                    "--workers", "2", "--threads", "1", "--blocks", "3", *chunks])
        assert code == 1  # calibrated on the rest, but the exit status says an input was missing
        printed = capsys.readouterr()
        err = printed.err
        # read in chunks (16 frames, 5 a task): no whole-recording data hash, and calibrate says so
        assert ("3 recording(s) read in chunks carry no data hash" in printed.out) == (name == "chunked")
        assert "calibrate: 1 of 4 input(s) failed" in err and str(clips[3]) in err
        cards[name] = json.loads((model / "config.json").read_text())
    local, ray = cards["local"], cards["ray"]
    # one read task per 5 frames of each clip: the same scores, in the same order
    np.testing.assert_allclose(cards["chunked"]["calibration"]["scores"], local["calibration"]["scores"], rtol=1e-5)
    assert_close(local["alarm"], cards["chunked"]["alarm"])
    assert [s["path"] for s in ray["calibration"]["sources"]] == [str(c) for c in clips[:3]]
    assert ray["calibration"]["frames"] == 24  # 8 nominal frames of each clip; its episode is ignored
    assert_close(local["calibration"]["sources"], ray["calibration"]["sources"])  # hashes included
    np.testing.assert_allclose(ray["calibration"]["scores"], local["calibration"]["scores"], rtol=1e-5)
    assert_close(local["alarm"], ray["alarm"])


def test_calibrate_analysis_on_ray_equals_local(demo_dataset, ray_local, tmp_path):
    from ood_monitor.core.analysis.nominal import NominalDiscrepancy

    params = tmp_path / "params.yaml"  # the shipped sampling (realtime preset), no feature network: fast
    params.write_text(Path("config/default.yaml").read_text().replace("feature_extractor: auto",
                                                                      "feature_extractor: none"))
    stats = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine
        assert cli(["calibrate-analysis", "--data", str(demo_dataset / "bags" / "calibration"), "--max-frames", "4",
                    "--clusters", "3", "--threads", "1", "--params", str(params), "--out", str(out), "--engine",
                    engine, "--workers", "2"]) == 0
        stats[engine] = NominalDiscrepancy.load(out)
    local, ray = stats["local"], stats["ray"]
    assert ray.info["frames"] == local.info["frames"] == 4
    for name in ("loc_mean", "loc_std", "centers", "cluster_mean", "cluster_std"):
        np.testing.assert_allclose(getattr(ray, name), getattr(local, name), rtol=1e-4, atol=1e-6, err_msg=name)
