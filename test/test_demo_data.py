"""The demo dataset generator: splits, kinds, ground truth, motion, determinism, bag == folder."""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from ood_monitor.cli import data_cmd
from ood_monitor.data import bags
from ood_monitor.data.labeled_frames import LabeledFrame, iter_frames, load_classes
from ood_monitor.demo_world import anomalies
from ood_monitor.demo_world import generator as demo

SEED = 3
WIDTH, HEIGHT = 320, 240


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "data"
    demo.generate(demo.DemoConfig(out=out, scale=0.1, seed=SEED, jobs=1), log=None)
    return out


@pytest.fixture(scope="module")
def test_frames(dataset: Path) -> list[LabeledFrame]:
    return list(iter_frames(dataset / "bags" / "test"))


def _episodes(frames: list[LabeledFrame]) -> dict[str, list[LabeledFrame]]:
    by_kind: dict[str, list[LabeledFrame]] = defaultdict(list)
    for frame in frames:
        by_kind[frame.kind].append(frame)
    return by_kind


def _grey(frame: LabeledFrame) -> np.ndarray:
    return cv2.cvtColor(frame.image, cv2.COLOR_RGB2GRAY)


def _flow(a: LabeledFrame, b: LabeledFrame) -> np.ndarray:
    return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM).calc(_grey(a), _grey(b), None)


def test_every_split_and_kind_is_present(dataset: Path) -> None:
    info = json.loads((dataset / "dataset.json").read_text())
    assert (info["seed"], info["scale"], info["width"], info["height"]) == (SEED, 0.1, WIDTH, HEIGHT)
    assert info["generator_version"] == demo.GENERATOR_VERSION
    splits = info["splits"]
    assert set(splits) == {"train", "calibration", "test"}
    assert set(splits["train"]["kinds"]) == {"nominal"} and set(splits["calibration"]["kinds"]) == {"nominal"}
    defaults = demo.DemoConfig(out=dataset)
    assert len(splits["train"]["drive_first_frames"]) == defaults.train_drives
    assert len(splits["calibration"]["drive_first_frames"]) == defaults.calibration_drives
    test_kinds = splits["test"]["kinds"]
    assert set(test_kinds) == {"nominal", *anomalies.OOD_KINDS} and len(anomalies.OOD_KINDS) == 14
    assert all(test_kinds[k] >= 8 for k in anomalies.OOD_KINDS)
    for split, counts in splits.items():
        topics = bags.bag_topics(dataset / "bags" / split)
        assert {t: m for t, (m, _) in topics.items()} == demo.TOPICS
        assert all(n == counts["frames"] for _, n in topics.values())
        assert len(list((dataset / "images" / split / "frames").glob("*.png"))) == counts["frames"]


def test_test_drive_alternates_nominal_gaps_and_episodes(test_frames: list[LabeledFrame]) -> None:
    assert [f.index for f in test_frames] == list(range(len(test_frames)))
    onsets = sorted({f.onset_frame for f in test_frames if f.is_ood})
    assert len(onsets) == 14
    for onset in onsets:
        before = test_frames[onset - 8 : onset]
        assert all(f.kind == "nominal" and not f.is_ood for f in before)  # >= 8 nominal frames first
        episode = [f for f in test_frames if f.onset_frame == onset]
        assert len(episode) >= 8 and len({f.kind for f in episode}) == 1 and len({f.episode for f in episode}) == 1
        assert episode[0].episode >= 1 and episode[0].category == anomalies.category_of(episode[0].kind)
    assert all(f.episode == 0 and f.category == "in_distribution" for f in test_frames if not f.is_ood)


def test_stamps_strictly_increase_and_topics_share_them(dataset: Path) -> None:
    stamps: dict[str, list[int]] = defaultdict(list)
    for topic, _type, bag_stamp, msg in bags.read_messages(dataset / "bags" / "train"):
        assert bags.stamp_ns_of(msg) == bag_stamp and msg.header.frame_id == "camera"
        stamps[topic].append(bag_stamp)
    assert set(stamps) == set(demo.TOPICS)
    reference = stamps[demo.IMAGE_TOPIC]
    assert all(b > a for a, b in zip(reference, reference[1:], strict=False))
    assert all(s == reference for s in stamps.values())
    gaps = np.diff(reference)
    assert np.all(np.abs(gaps[gaps < 5e8] - 1e9 / 15) < 2)  # 15 Hz within a drive, gaps between drives
    assert int((gaps > 5e8).sum()) == demo.DemoConfig(out=dataset).train_drives - 1


def test_images_masks_and_semantic_agree(dataset: Path, test_frames: list[LabeledFrame]) -> None:
    classes = load_classes(dataset / "bags" / "test")
    anomalous = np.array([classes.get(i) is not None and classes[i].anomaly for i in range(256)])
    assert {c.name for c in classes.values()} >= {"grass", "trail", "sky", "vegetation", "lens_dirt"}
    for frame in test_frames:
        assert frame.image.shape == (HEIGHT, WIDTH, 3) and frame.image.dtype == np.uint8
        assert frame.mask is not None and frame.semantic is not None
        assert frame.mask.shape == frame.semantic.shape == (HEIGHT, WIDTH)
        assert set(np.unique(frame.mask)) <= {0, 255}
        assert all(int(c) in classes for c in np.unique(frame.semantic))
        assert frame.semantic.min() > 0  # every pixel is ground, sky, vegetation or an anomaly
        np.testing.assert_array_equal(frame.mask == 255, anomalous[frame.semantic])
        expect_mask = frame.category == "object" or frame.kind == "lens_dirt"
        assert frame.mask.any() == expect_mask, (frame.index, frame.kind)
        assert (frame.semantic == 3).any() and (frame.semantic == 2).any()  # sky and trail in view


def test_object_masks_grow_as_the_vehicle_approaches(test_frames: list[LabeledFrame]) -> None:
    for kind in anomalies.OBJECT_KINDS:
        areas = [int((f.mask > 0).sum()) for f in _episodes(test_frames)[kind]]
        assert areas[-1] > 1.15 * areas[0], (kind, areas)
        assert np.corrcoef(np.arange(len(areas)), areas)[0, 1] > 0.8, (kind, areas)


def test_global_shifts_change_the_image_the_expected_way(test_frames: list[LabeledFrame]) -> None:
    by_kind = _episodes(test_frames)
    nominal = np.mean([f.image.mean() for f in by_kind["nominal"]])
    last = {k: by_kind[k][-1] for k in anomalies.GLOBAL_KINDS}
    assert last["night"].image.mean() < 0.4 * nominal
    assert last["overexposure"].image.mean() > 1.3 * nominal
    assert (last["overexposure"].image == 255).mean() > 0.3
    sharpness = {k: cv2.Laplacian(_grey(f), cv2.CV_32F).var() for k, f in last.items()}
    nominal_sharpness = np.median([cv2.Laplacian(_grey(f), cv2.CV_32F).var() for f in by_kind["nominal"]])
    assert sharpness["motion_blur"] < 0.5 * nominal_sharpness and sharpness["fog"] < 0.5 * nominal_sharpness
    assert sharpness["sensor_noise"] > 2 * nominal_sharpness
    # fog is depth dependent: it erases the sky's clouds but leaves the near ground visible
    fog, clear = last["fog"], by_kind["nominal"][-1]
    fog_sky = _grey(fog)[fog.semantic == 3]
    assert fog_sky.std() < 0.2 * _grey(clear)[clear.semantic == 3].std() + 1.0
    assert _grey(fog)[-30:].std() > 0.4 * _grey(clear)[-30:].std()


def test_motion_anomalies(test_frames: list[LabeledFrame]) -> None:
    by_kind = _episodes(test_frames)
    frozen = by_kind["frozen"]
    for frame in frozen[1:-1]:
        np.testing.assert_array_equal(frame.image, frozen[0].image)
    assert not np.array_equal(frozen[-1].image, frozen[0].image)  # the stream resumes at the episode end

    def ground_down_flow(frames: list[LabeledFrame]) -> float:
        flows = [_flow(a, b) for a, b in zip(frames, frames[1:], strict=False)]
        return float(np.median([f[HEIGHT * 2 // 3 :, :, 1].mean() for f in flows]))

    reversing = by_kind["reversing"]
    middle = reversing[len(reversing) // 4 : 3 * len(reversing) // 4 + 1]
    forward = by_kind["nominal"][1:9]
    assert ground_down_flow(forward) > 1.0  # near ground moves down the image when driving forward
    assert ground_down_flow(middle) < -1.0  # and up when reversing

    def yaw_flow(frames: list[LabeledFrame]) -> float:
        return max(float(np.abs(_flow(a, b)[: HEIGHT // 2, :, 0].mean())) for a, b in zip(frames, frames[1:], strict=False))

    assert yaw_flow(by_kind["swerve"]) > 4 * yaw_flow(forward)

    def shake(frames: list[LabeledFrame]) -> float:
        """Spread of the horizon band's vertical motion, which is camera pitch rather than travel."""
        band = slice(HEIGHT // 4, HEIGHT // 2)
        return float(np.std([np.median(_flow(a, b)[band, :, 1]) for a, b in zip(frames, frames[1:], strict=False)]))

    assert shake(by_kind["vibration"]) > 2.5 * shake(by_kind["nominal"][1:12])

def test_same_seed_same_pixels_other_seed_differs(dataset: Path, test_frames: list[LabeledFrame]) -> None:
    config = demo.DemoConfig(out=dataset, scale=0.1, seed=SEED)
    spec = demo.plan_splits(config)["test"][0]
    again = [f for _, f in zip(range(3), demo.render_drive(spec, config.camera), strict=False)]
    for frame, stored in zip(again, test_frames, strict=False):
        assert frame.image.tobytes() == stored.image.tobytes()
        assert frame.semantic.tobytes() == stored.semantic.tobytes()
    other = demo.plan_splits(demo.DemoConfig(out=dataset, scale=0.1, seed=SEED + 1))["test"][0]
    assert not np.array_equal(next(demo.render_drive(other, config.camera)).image, test_frames[0].image)


def test_bag_and_folder_give_the_same_frames(dataset: Path, test_frames: list[LabeledFrame]) -> None:
    folder = list(iter_frames(dataset / "images" / "test"))
    assert len(folder) == len(test_frames)
    for a, b in zip(folder, test_frames, strict=True):
        assert (a.index, a.stamp_ns, a.kind, a.category, a.episode, a.onset_frame, a.is_ood) == (
            b.index, b.stamp_ns, b.kind, b.category, b.episode, b.onset_frame, b.is_ood)
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(a.semantic, b.semantic)


def test_cli_registers_data_demo_and_refuses_an_existing_dataset(dataset: Path) -> None:
    parser = argparse.ArgumentParser()
    data_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", "demo", "--out", str(dataset), "--scale", "0.1", "--seed", "5", "--jobs", "1"])
    assert (args.scale, args.seed, args.width, args.height, args.storage) == (0.1, 5, 320, 240, "mcap")
    with pytest.raises(ValueError, match="already contains"):
        args.func(args)
