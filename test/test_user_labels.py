"""Users' own data labelled like RUGD: colour label PNGs, a class colour file and anomaly class names,
read into masks for evaluation and used to keep anomalous frames out of training."""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from ood_monitor.cli.main import main as cli
from ood_monitor.core.model_input import FrameConfig
from ood_monitor.data import bags
from ood_monitor.data.labeled_frames import iter_frames
from ood_monitor.data.labels import (
    UNLABELLED,
    ClassInfo,
    LabelSpec,
    anomaly_mask,
    decode_label,
    find_colormap,
    load_colormap,
)

COLORMAP = """# id name R G B (RUGD_annotation-colormap.txt)
0 void 0 0 0
1 dirt 108 64 20

3 grass 0 102 0
5 pole 0 153 153
7 sky 0 0 255
"""
COLOURS = {"void": (0, 0, 0), "dirt": (108, 64, 20), "grass": (0, 102, 0), "pole": (0, 153, 153), "sky": (0, 0, 255)}
W, H = 64, 48
POLE_FRAMES = (4, 5, 6, 9)  # two runs: two OOD episodes
NO_LABEL, HALF_SIZE, STRAY = 11, 2, 3  # frame without label, label at half size, label with an unknown colour


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))


def scene(i: int) -> tuple[np.ndarray, np.ndarray]:
    """(image, colour label) of frame i: sky over dirt and grass, a pole in POLE_FRAMES."""
    label = np.zeros((H, W, 3), np.uint8)
    label[:16] = COLOURS["sky"]
    label[16:] = COLOURS["dirt"]
    label[16:, (i * 3) % 20: (i * 3) % 20 + 24] = COLOURS["grass"]
    if i in POLE_FRAMES:
        label[8:44, 40:46] = COLOURS["pole"]
    rng = np.random.default_rng(i)
    image = np.clip(label.astype(int) + rng.integers(-12, 12, label.shape) + 40, 0, 255).astype(np.uint8)
    return image, label


@pytest.fixture()
def rugd(tmp_path: Path) -> Path:
    """RUGD layout: frames/<scene>/*.jpg, annotations/<scene>/*.png, the colour map above them."""
    frames, labels = tmp_path / "frames" / "creek", tmp_path / "annotations" / "creek"
    frames.mkdir(parents=True)
    labels.mkdir(parents=True)
    (tmp_path / "annotations" / "RUGD_annotation-colormap.txt").write_text(COLORMAP)
    for i in range(12):
        image, label = scene(i)
        write_rgb(frames / f"creek_{i:05d}.jpg", image)
        if i == HALF_SIZE:
            label = cv2.resize(label, (W // 2, H // 2), interpolation=cv2.INTER_NEAREST)
        if i == STRAY:
            label[0:2, 0:3] = (1, 2, 3)
        if i != NO_LABEL:
            write_rgb(labels / f"creek_{i:05d}.png", label)
    return tmp_path


def spec(root: Path, colormap: bool = True) -> LabelSpec:
    return LabelSpec(root / "annotations" / "creek",
                     root / "annotations" / "RUGD_annotation-colormap.txt" if colormap else None, ("pole",))


def test_colormap_formats(tmp_path: Path) -> None:
    rugd = tmp_path / "colormap.txt"
    rugd.write_text(COLORMAP)
    classes = load_colormap(rugd, ["POLE"])
    assert [(c.id, c.name) for c in classes] == [(0, "void"), (1, "dirt"), (3, "grass"), (5, "pole"), (7, "sky")]
    assert [c.name for c in classes if c.anomaly] == ["pole"] and classes[3].colour == (0, 153, 153)
    assert not any(c.anomaly for c in load_colormap(rugd))
    csv = tmp_path / "classes.csv"
    csv.write_text("name,R,G,B\nvoid,0,0,0\nrock bed, 10, 20, 30\n")
    assert load_colormap(csv, ["rock bed"]) == [ClassInfo(0, "void", (0, 0, 0), False),
                                               ClassInfo(1, "rock bed", (10, 20, 30), True)]
    table = {"0": {"name": "unknown", "colour": [0, 0, 0], "anomaly": False},
             "9": {"name": "cat", "colour": [9, 9, 9], "anomaly": True}}
    (tmp_path / "classes.json").write_text(json.dumps(table))
    assert [c.anomaly for c in load_colormap(tmp_path / "classes.json")] == [False, True]
    assert find_colormap([tmp_path / "a" / "b"]) == rugd  # searched upwards, colour maps before classes.json


@pytest.mark.parametrize(("text", "message"), [
    ("0 void 0 0 0\n1 dirt 108 64\n", r"map.txt:2: expected 'id name R G B'"),
    ("0 void 0 0 0\n\n# x\n1 dirt 108 64 300\n", r"map.txt:4: colour values"),
    ("0 void 0 0 0\n255 dirt 1 2 3\n", r"map.txt:2: class id"),
    ("0 void 0 0 0\n1 dirt 0 0 0\n", r"map.txt:2: colour \(0, 0, 0\) already used by class 'void'"),
    ("# nothing\n", "no classes"),
])
def test_malformed_colormap_names_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "map.txt").write_text(text)
    with pytest.raises(ValueError, match=message):
        load_colormap(tmp_path / "map.txt")


def test_unknown_or_missing_anomaly_classes_list_the_names(rugd: Path) -> None:
    colormap = rugd / "annotations" / "RUGD_annotation-colormap.txt"
    with pytest.raises(ValueError, match=r"\['rock-bed'\] not in .*classes: void, dirt, grass, pole, sky"):
        load_colormap(colormap, ["pole", "rock-bed"])
    with pytest.raises(ValueError, match="--anomaly-classes"):
        LabelSpec(rugd / "annotations" / "creek", colormap).resolve()
    with pytest.raises(FileNotFoundError, match="label folder"):
        LabelSpec(rugd / "nope", colormap, ("pole",)).resolve()


def test_decode_label_with_unknown_colours(tmp_path: Path) -> None:
    (tmp_path / "colormap.txt").write_text(COLORMAP)
    classes = load_colormap(tmp_path / "colormap.txt", ("pole",))
    label = np.zeros((2, 3, 3), np.uint8)
    label[0] = [COLOURS["sky"], COLOURS["pole"], (1, 2, 3)]
    label[1] = [COLOURS["grass"], COLOURS["dirt"], (0, 153, 154)]
    ids = decode_label(label, classes)
    np.testing.assert_array_equal(ids, [[7, 5, UNLABELLED], [3, 1, UNLABELLED]])
    assert int((ids == UNLABELLED).sum()) == 2 and ids.dtype == np.uint8
    np.testing.assert_array_equal(anomaly_mask(ids, [5]), [[0, 255, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="HxWx3"):
        decode_label(ids, classes)


def test_folder_frames_from_colour_labels(rugd: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        frames = list(iter_frames(rugd / "frames" / "creek", labels=spec(rugd, colormap=False)))  # map found
    assert len(frames) == 12 and [f.index for f in frames] == list(range(12))
    assert [i for i, f in enumerate(frames) if f.is_ood] == list(POLE_FRAMES)
    assert {(f.kind, f.category) for f in frames if f.is_ood} == {("anomaly", "object")}
    assert [(f.episode, f.onset_frame) for f in frames if f.is_ood] == [(1, 4), (1, 4), (1, 4), (2, 9)]
    assert all(f.kind == "nominal" and f.episode == 0 for f in frames if not f.is_ood)
    pole = frames[5]
    assert pole.mask.shape == (H, W) and pole.mask.dtype == np.uint8
    assert set(np.unique(pole.mask)) == {0, 255} and (pole.mask[8:44, 40:46] == 255).all()
    assert int((pole.mask > 0).sum()) == 36 * 6 and (pole.semantic[pole.mask > 0] == 5).all()
    assert frames[HALF_SIZE].semantic.shape == (H, W)  # resized nearest: still only class ids
    assert set(np.unique(frames[HALF_SIZE].semantic)) <= {1, 3, 7}
    assert frames[NO_LABEL].mask is None and frames[NO_LABEL].semantic is None and not frames[NO_LABEL].is_ood
    assert int((frames[STRAY].semantic == UNLABELLED).sum()) == 6
    assert "6 pixels in 1 label images" in caplog.text
    with pytest.raises(ValueError, match="named like an image"):
        list(iter_frames(rugd / "frames" / "creek", labels=LabelSpec(rugd / "annotations", None, ("pole",))))


def test_bag_mask_or_semantic_topic_labels_frames(tmp_path: Path) -> None:
    """A bag with a camera and a mask (or class id) topic but no label topic: frames whose mask has
    pixels are OOD; with a colour map and anomaly names, class ids become masks."""
    bag = tmp_path / "bag"
    with bags.BagWriter(bag) as writer:
        for topic in ("/cam", "/gt/mask", "/gt/ids"):
            writer.add_topic(topic, "sensor_msgs/msg/Image")
        for i in range(4):
            stamp = 1_700_000_000_000_000_000 + i * 10**8
            ids = np.full((H, W), 3, np.uint8)
            ids[:4, :4] = 5 if i == 2 else 3
            writer.write("/cam", bags.image_msg(scene(i)[0], "rgb8", stamp, "camera"), stamp)
            writer.write("/gt/mask", bags.image_msg(np.where(ids == 5, 255, 0).astype(np.uint8), "mono8", stamp,
                                                    "camera"), stamp)
            writer.write("/gt/ids", bags.image_msg(ids, "mono8", stamp, "camera"), stamp)
    frames = list(iter_frames(bag, image_topic="/cam", mask_topic="/gt/mask"))
    assert [f.is_ood for f in frames] == [False, False, True, False] and frames[2].episode == 1
    assert all(f.mask is None and not f.is_ood for f in iter_frames(bag, image_topic="/cam"))
    (tmp_path / "c.txt").write_text(COLORMAP)
    by_ids = list(iter_frames(bag, image_topic="/cam", semantic_topic="/gt/ids",
                              labels=LabelSpec(None, tmp_path / "c.txt", ("pole",))))
    assert [f.is_ood for f in by_ids] == [False, False, True, False] and int(by_ids[2].mask.sum()) == 16 * 255
    with pytest.raises(ValueError, match="image folder"):
        list(iter_frames(bag, image_topic="/cam", labels=LabelSpec(tmp_path, tmp_path / "c.txt", ("pole",))))


def test_training_data_skips_anomalous_frames(rugd: Path) -> None:
    from ood_monitor.core.diffusion.train import load_images
    from ood_monitor.core.vae.dataset import load_frames

    data = rugd / "frames" / "creek"
    frames = load_frames(data, "image", FrameConfig(32, 32), labels=spec(rugd))
    assert len(frames) == 12 and frames.is_ood.sum() == len(POLE_FRAMES)
    assert len(frames.subset(~frames.is_ood)) == 8
    assert not load_frames(data, "image", FrameConfig(32, 32)).is_ood.any()  # no labels: every frame nominal
    log: list[str] = []
    assert load_images(data, 32, labels=spec(rugd), log=log.append).shape == (8, 32, 32, 3)
    assert "skipped 4 frames labelled OOD" in log[-1]
    assert len(load_images(data, 32, labels=spec(rugd), keep_ood=True)) == 12


def test_train_vae_command_drops_anomalous_frames(rugd: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "vae"
    args = ["train", "vae", "--kind", "image", "--data", str(rugd / "frames" / "creek"), "--out", str(model),
            "--labels", str(rugd / "annotations" / "creek"), "--anomaly-classes", "pole", "--size", "16",
            "--latent", "4", "--widths", "8", "--hidden", "16", "--epochs", "1", "--min-steps", "0", "--batch", "8", "--select-k", "2",
            "--threads", "1", "--val-split", "0.25"]
    assert cli(args) == 0
    assert "dropped 4 frames labelled OOD" in capsys.readouterr().out
    assert json.loads((model / "config.json").read_text())["data"]["frames"] == 8
    assert cli(args + ["--anomaly-classes", "rock-bed"]) == 2
    assert "rock-bed" in capsys.readouterr().err
    dcae = ["train", "dcae", "--data", str(rugd / "frames" / "creek"), "--out", str(tmp_path / "dcae"), "--size", "16",
            "--steps", "1", "--batch", "2", "--crop", "0", "--threads", "1", "--labels", str(rugd / "annotations" / "creek"),
            "--anomaly-classes", "pole"]
    assert cli(dcae) == 0
    assert "skipped 4 frames labelled OOD" in capsys.readouterr().out
    assert cli(dcae + ["--keep-anomalous-frames", "--out", str(tmp_path / "dcae2")]) == 0
    assert re.search(r"12 frames \(.*\); training dcae", capsys.readouterr().out)


def test_evaluate_command_on_a_rugd_folder(rugd: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    args = ["evaluate", "--data", str(rugd / "frames" / "creek"), "--labels", str(rugd / "annotations" / "creek"),
            "--colormap", str(rugd / "annotations" / "RUGD_annotation-colormap.txt"), "--anomaly-classes", "pole",
            "--models", "models/vae_image", "--synthesizer", "none", "--out", str(out)]
    assert cli(args) == 0
    result = json.loads((out / "evaluation.json").read_text())[0]
    assert result["frames"] == 12 and result["nominal_frames"] == 8
    assert result["frame_metrics"]["category:object"]["frames"] == 4
    assert result["alarms"]["cusum"]["all"]["ood_episodes"] == 2
    assert "12 frames, 8 in distribution" in (out / "report.md").read_text()


def test_evaluate_anomaly_masks_on_a_rugd_folder(rugd: Path, tmp_path: Path) -> None:
    """The synthesizer + analysis path scores against the decoded masks; F* uses the colour map's ids."""
    out = tmp_path / "report"
    args = ["evaluate", "--data", str(rugd / "frames" / "creek"), "--labels", str(rugd / "annotations" / "creek"),
            "--anomaly-classes", "pole", "--models", "models/vae_image", "--synthesizer", "models/latent_dit",
            "--segmenter", "slic", "--max-mask-frames", "2", "--out", str(out)]
    assert cli(args) == 0
    masks = json.loads((out / "masks.json").read_text())
    assert masks["groups"]["object"]["frames"] == 2 and 0.0 < masks["groups"]["object"]["auc_pr"] <= 1.0
    assert "pixel AUC-PR" in (out / "report.md").read_text()


def test_diffusion_training_frames_come_from_the_named_topic(demo_dataset):
    from ood_monitor.core.diffusion.train import load_images

    bag = demo_dataset / "bags" / "calibration"
    assert load_images(bag, 16, limit=3).shape == (3, 16, 16, 3)
    with pytest.raises(ValueError, match="/front/image_raw"):
        load_images(bag, 16, limit=3, image_topic="/front/image_raw")
