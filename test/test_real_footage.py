"""The real-footage benchmark builder (`ood-monitor data real`) on a tiny synthetic "recording".

Every source frame carries its own index in a corner patch, so the test can read back which real frame
each test frame shows and check the motion anomalies (frozen, dropped, shuffled, reversed), the clean
stretches around episodes and the exact masks of pasted objects.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from ood_monitor.data.labeled_frames import iter_frames, load_classes
from ood_monitor.real_world import benchmark as rf

FPS = 10.0
W, H = 64, 48
MARK = (slice(0, 4), slice(0, 4))  # the index patch (objects stand in the lower part of the frame)


def write_recording(folder: Path, n: int, marker: int, seed: int) -> Path:
    """n frames of a drifting texture; frame i has R = i and G = marker in its top-left 4x4 patch."""
    rng = np.random.default_rng(seed)
    texture = cv2.resize(rng.integers(40, 200, (H // 4, 2 * W // 4, 3), dtype=np.uint8), (2 * W, H),
                         interpolation=cv2.INTER_LINEAR)
    folder.mkdir(parents=True)
    for i in range(n):
        frame = np.ascontiguousarray(texture[:, i % W : i % W + W]).copy()
        frame[MARK] = (i, marker, 0)
        cv2.imwrite(str(folder / f"{i:04d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    return folder


def decode(image: np.ndarray) -> tuple[int, int]:
    """(source frame index, recording marker) from the corner patch."""
    return int(image[0, 0, 0]), int(image[0, 0, 1])


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, rf.RecordingSummary]:
    root = tmp_path_factory.mktemp("real")
    main = write_recording(root / "src" / "drive_a", 50, marker=10, seed=1)
    other = write_recording(root / "src" / "drive_b", 20, marker=200, seed=2)
    config = rf.RealFootageConfig(
        out=root / "bench", recordings=(main,), scene_sources=(other,), width=W, fps=FPS, train_seconds=1.0,
        calibration_seconds=1.0, episode_frames=4, gap_frames=3, corruptions=("gaussian_noise", "contrast", "fog"),
        seed=3)
    [summary] = rf.generate(config, log=lambda _line: None)
    return root / "bench" / "drive_a", summary


def labels(folder: Path) -> list[dict[str, str]]:
    with (folder / "labels.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_splits_are_the_recording_in_order(built: tuple[Path, rf.RecordingSummary]) -> None:
    root, summary = built
    assert summary.splits["train"] == 10 and summary.splits["calibration"] == 10
    train = list(iter_frames(root / "train"))
    calibration = list(iter_frames(root / "calibration"))
    assert [decode(f.image) for f in train] == [(i, 10) for i in range(10)]
    assert [decode(f.image) for f in calibration] == [(i, 10) for i in range(10, 20)]
    assert not any(f.is_ood for f in train + calibration)
    steps = np.diff([f.stamp_ns for f in train])
    assert np.all(steps == 100_000_000)  # the recording's 10 fps
    # held_out: every frame after calibration, once, in order, unaltered, one stream (no stamp gap)
    held = list(iter_frames(root / "held_out"))
    n = len(held)
    assert n == summary.splits["held_out"] > 0 and not any(f.is_ood for f in held)
    assert [decode(f.image) for f in held] == [(i, 10) for i in range(20, 20 + n)]
    assert np.all(np.diff([f.stamp_ns for f in held]) == 100_000_000)


def test_test_split_folder_contract(built: tuple[Path, rf.RecordingSummary]) -> None:
    root, summary = built
    rows = labels(root / "test")
    assert list(rows[0]) == list(rf.LABEL_COLUMNS)
    assert len(rows) == summary.splits["test"] == len(list((root / "test" / "frames").iterdir()))
    assert len(list((root / "test" / "masks").iterdir())) == len(rows)
    assert len(list((root / "test" / "semantic").iterdir())) == len(rows)
    kinds = {e.kind for e in summary.episodes}
    assert kinds == {"gaussian_noise", "contrast", "fog", "object", "small_objects", "scene_change",
                     "frozen", "jerk_drop", "jerk_shuffle", "reversing"}
    classes = load_classes(root / "test")
    assert not classes[0].anomaly and {c.name for c in classes.values() if c.anomaly} >= {"astronaut", "cat"}
    dataset = json.loads((root / "dataset.json").read_text())
    assert dataset["fps"] == FPS and len(dataset["episodes"]) == 10


def blocks(frames: list) -> list[list]:
    """The test frames cut at the stamp gaps between blocks."""
    out, current = [], [frames[0]]
    for prev, frame in zip(frames, frames[1:], strict=False):
        if frame.stamp_ns - prev.stamp_ns > 100_000_000:
            assert frame.stamp_ns - prev.stamp_ns >= rf.BLOCK_GAP_NS
            out.append(current)
            current = []
        else:
            assert frame.stamp_ns - prev.stamp_ns == 100_000_000
        current.append(frame)
    return out + [current]


def test_every_block_is_lead_episode_tail(built: tuple[Path, rf.RecordingSummary]) -> None:
    root, summary = built
    frames = list(iter_frames(root / "test"))
    by_episode = {e.episode: e for e in summary.episodes}
    for block in blocks(frames):
        ood = [f for f in block if f.is_ood]
        assert [f.is_ood for f in block] == [False] * 3 + [True] * 4 + [False] * 3
        episode = by_episode[ood[0].episode]
        assert {f.episode for f in ood} == {episode.episode}
        assert all(f.onset_frame == ood[0].index == episode.onset_frame for f in ood)
        assert all(f.kind == episode.kind and f.category == rf.category_of(episode.kind) for f in ood)
        lead = [decode(f.image)[0] for f in block[:3]]
        assert np.all(np.diff(lead) == 1) and all(decode(f.image)[1] == 10 for f in block[:3] + block[-3:])
        assert np.all(np.diff([decode(f.image)[0] for f in block[-3:]]) == 1)


def test_motion_anomalies_come_from_the_real_sequence(built: tuple[Path, rf.RecordingSummary]) -> None:
    root, _ = built
    seen = set()
    for block in blocks(list(iter_frames(root / "test"))):
        kind = block[3].kind
        lead = [decode(f.image)[0] for f in block[:3]]
        episode = [decode(f.image)[0] for f in block[3:7]]
        tail = [decode(f.image)[0] for f in block[7:]]
        if kind == "frozen":
            assert episode == [lead[-1] + 1] * 4 and tail[0] == lead[-1] + 5  # time went on while frozen
        elif kind == "jerk_drop":
            assert episode == [lead[-1] + 1 + rf.DROP_STEP * k for k in range(4)]
        elif kind == "jerk_shuffle":
            expected = list(range(lead[-1] + 1, lead[-1] + 5))
            assert sorted(episode) == expected and all(a != b for a, b in zip(episode, expected, strict=True))
        elif kind == "reversing":
            assert episode == [lead[-1] - 1 - k for k in range(4)] and tail[0] == episode[-1] + 1
        elif kind == "scene_change":
            assert all(decode(f.image)[1] == 200 for f in block[3:7])  # the other recording's frames
        else:
            continue
        seen.add(kind)
        if kind != "scene_change":  # real frames, untouched pixels
            assert all(not f.mask.any() for f in block[3:7])
    assert seen == {"frozen", "jerk_drop", "jerk_shuffle", "reversing", "scene_change"}


def test_frozen_camera_check_catches_the_frozen_episode_only(built: tuple[Path, rf.RecordingSummary]) -> None:
    """bench real's column for preprocess_node's check: the frozen episode (the onset frame 4 times) is 3
    repeats, caught at limit 2 on its 4th frame and not at the default 4; every other frame is new."""
    from ood_monitor.cli.bench_real import repeat_check

    folder, _ = built
    caught = repeat_check(folder / "test", limit=2)
    assert caught == {"kinds": {"frozen": ("detected", 3.0)}, "fa_per_1000": 0.0}
    assert repeat_check(folder / "test", limit=4) == {"kinds": {}, "fa_per_1000": 0.0}


def test_objects_have_exact_masks_and_labels(built: tuple[Path, rf.RecordingSummary]) -> None:
    root, _ = built
    source = {i: f.image for i, f in enumerate(iter_frames(Path(str(root).replace("bench/drive_a", "src/drive_a"))))}
    checked = 0
    for frame in iter_frames(root / "test"):
        if frame.category != "object":
            assert not frame.mask.any() and not frame.semantic.any()
            continue
        clean = source[decode(frame.image)[0]]
        inside = frame.mask > 0
        assert inside.any() and np.array_equal(inside, frame.semantic != 0)
        assert np.array_equal(frame.image[~inside], clean[~inside])  # nothing outside the mask changed
        assert (frame.image[inside] != clean[inside]).any(axis=-1).mean() > 0.9
        checked += 1
    assert checked == 8  # two object episodes of four frames


def test_corruptions_change_pixels_and_record_visibility(built: tuple[Path, rf.RecordingSummary]) -> None:
    _, summary = built
    for episode in summary.episodes:
        if episode.category == "global":
            assert episode.library in ("imagecorruptions", "albumentations")
            assert episode.mad128 > 0 and episode.visible == (episode.mad128 >= rf.VISIBLE_MAD)
        elif episode.category == "motion":
            assert episode.mad128 is None


def test_bad_input_gets_clear_errors(tmp_path: Path) -> None:
    short = write_recording(tmp_path / "short", 25, marker=1, seed=0)
    config = rf.RealFootageConfig(out=tmp_path / "out", recordings=(short,), fps=FPS, width=W, train_seconds=1.0,
                                  calibration_seconds=1.0)
    with pytest.raises(ValueError, match="held out"):
        rf.generate(config, log=lambda _line: None)
    with pytest.raises(ValueError, match="unknown corruption"):
        rf.RealFootageConfig(out=tmp_path, recordings=(short,), corruptions=("sepia",))
    with pytest.raises(FileNotFoundError):
        rf.read_recording(tmp_path / "missing.mp4", W)


def test_cli_builds_and_benches_a_tiny_recording(tmp_path: Path) -> None:
    """`data real` then `bench real --quick --no-masks` through the CLI entry; one row per OOD kind."""
    from ood_monitor.cli.main import main

    source = write_recording(tmp_path / "src" / "drive", 65, marker=10, seed=1)
    other = write_recording(tmp_path / "src" / "other", 20, marker=200, seed=2)
    data = tmp_path / "bench"
    assert main(["data", "real", "--recording", str(source), "--scene", str(other), "--out", str(data),
                 "--width", str(W), "--fps", str(FPS), "--train-seconds", "2", "--calibration-seconds", "2.5",
                 "--episode-frames", "4", "--gap-frames", "3", "--corruptions", "gaussian_noise,contrast"]) == 0
    assert main(["bench", "real", "--data", str(data), "--tune", "nope", "--quick"]) == 2  # clear error, no crash
    report = tmp_path / "real.json"
    params = Path(__file__).resolve().parents[1] / "config" / "default.yaml"  # alarms: the calibrated ones
    assert main(["bench", "real", "--data", str(data), "--work", str(tmp_path / "work"), "--quick", "--no-masks",
                 "--params", str(params), "--json", str(report), "--markdown", str(tmp_path / "real.md")]) == 0
    result = json.loads(report.read_text())
    rows = result["rows"]
    assert sorted(r["kind"] for r in rows) == sorted(
        ["gaussian_noise", "contrast", "object", "small_objects", "scene_change", "frozen", "jerk_drop",
         "jerk_shuffle", "reversing"])
    assert all(r["recording"] == "drive" and r["role"] == "report" for r in rows)
    assert all(0.0 <= r["image_auroc"] <= 1.0 and 0.0 <= r["flow_auroc"] <= 1.0 for r in rows)
    assert all(r["martingale"] in ("detected", "missed") for r in rows)
    assert all(r["repeat_check"] == "missed" for r in rows)  # 4-frame episodes: 3 repeats, under the limit of 4
    [summary] = result["recordings"]
    # the Pareto tail (calibrate's default) takes p-values past the conformal floor 1/26, down to its 1e-5 floor
    assert summary["calibration_frames"] == 25 and 1e-5 <= summary["p_reference"] < 1 / 26
    assert summary["clean_frames"] == 9 * 6 and summary["fa_per_1000_repeat_check"] == 0.0
    assert 0.0 <= summary["vae_image_clean_p_below_0.05"] <= 1.0
    # calibrate chose a window whose log martingale can cross its threshold at that reference p-value
    assert summary["vae_image_max_log_martingale"] > summary["martingale_threshold"]
    assert (tmp_path / "work" / "drive" / "eval" / "report.md").is_file()
    # false alarms per detector, the headline figure the larger of the two
    per = [summary[f"vae_{k}_fa_per_1000_martingale"] for k in ("image", "flow")]
    assert summary["fa_per_1000_martingale"] == max(per)
    assert "(martingale: image, flow; CUSUM; frozen-camera check)" in (tmp_path / "real.md").read_text()
    assert result["train_to_steps"] is False and result["train_device"] == "cpu"
    # the whole held-out stretch as one clean run: 65 - 20 train - 25 calibration frames
    assert summary["held_out_frames"] == 20
    per = [summary[f"vae_{k}_held_out_fa_per_1000_martingale"] for k in ("image", "flow")]
    assert summary["held_out_fa_per_1000_martingale"] == max(per) and all(0.0 <= v <= 1000.0 for v in per)
    for k in ("image", "flow"):  # alarms (runs of alarmed frames): none without alarmed frames, never more
        frames = round(summary[f"vae_{k}_held_out_fa_per_1000_martingale"] * 20 / 1000)
        assert (summary[f"vae_{k}_held_out_alarms_martingale"] == 0) == (frames == 0)
        assert summary[f"vae_{k}_held_out_alarms_martingale"] <= frames
    # calibrate's power figure beside the alarms: at least one frame, at most the chosen window
    assert all(1 <= summary[f"vae_{k}_shortest_episode"] <= 30 for k in ("image", "flow"))
    assert "held-out run: frames" in (tmp_path / "real.md").read_text()


def test_diffusion_models_train_to_the_budget_or_to_their_steps() -> None:
    from ood_monitor.cli.bench_real import FULL, diffusion_schedule

    assert diffusion_schedule(FULL, "dcae", False) == ["--steps", "1500", "--time-limit", "240"]
    assert diffusion_schedule(FULL, "dit", False) == ["--steps", "3000", "--time-limit", "360"]
    assert diffusion_schedule(FULL, "dit", True) == ["--steps", "3000"]
    assert diffusion_schedule(FULL, "dcae", True, "cuda") == ["--steps", "1500", "--device", "cuda"]


def test_every_library_corruption_is_a_function_of_its_seed() -> None:
    """A rebuild of the benchmark is bit-identical: the libraries' own generators (numpy's global one,
    scikit-image's random_noise behind impulse noise) are seeded per call and left as they were."""
    from ood_monitor.real_world.corruptions import Corruption

    image = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    for name in ("impulse_noise", "gaussian_noise", "spatter"):
        c = Corruption(name, 3)
        first, again, other = c.apply(image, 11), c.apply(image, 11), c.apply(image, 12)
        assert np.array_equal(first, again), name
        assert not np.array_equal(first, other), name
        assert not np.array_equal(first, image), name


def test_lens_and_weather_corruptions_hold_still_within_an_episode(tmp_path: Path, monkeypatch) -> None:
    """Sensor noise is redrawn every frame; fog, frost, shadows... keep one draw per episode (redrawn every
    frame they flicker, and the flow detector scored the flicker)."""
    from ood_monitor.real_world.corruptions import Corruption

    seeds: dict[str, list[int]] = {}
    real_apply = Corruption.apply

    def recording_apply(self, image, seed):
        seeds.setdefault(self.name, []).append(seed)
        return real_apply(self, image, seed)

    monkeypatch.setattr(Corruption, "apply", recording_apply)
    source = write_recording(tmp_path / "src" / "drive", 50, marker=10, seed=1)
    other = write_recording(tmp_path / "src" / "other", 20, marker=200, seed=2)
    config = rf.RealFootageConfig(out=tmp_path / "bench", recordings=(source,), scene_sources=(other,), width=W,
                                  fps=FPS, train_seconds=1.0, calibration_seconds=1.0, episode_frames=4,
                                  gap_frames=3, corruptions=("gaussian_noise", "fog", "frost"), objects=(),
                                  motion=(), scene_change=False, seed=3)
    rf.generate(config, log=lambda _line: None)
    assert len(set(seeds["fog"])) == 1 and len(set(seeds["frost"])) == 1
    assert len(set(seeds["gaussian_noise"])) == len(seeds["gaussian_noise"]) == 4
