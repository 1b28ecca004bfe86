"""The demo dataset: nominal off-road drives for training/calibration and one labelled test drive.

The test split is one continuous drive in which nominal stretches alternate with one episode of every
OOD kind, so detection delay (from each episode's onset) and false alarms (on the nominal stretches)
can both be measured. Everything is a pure function of the seed: the same seed gives identical images.
"""
from __future__ import annotations

import csv
import json
import math
import multiprocessing
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ood_monitor.data import bags
from ood_monitor.data.labeled_frames import LabeledFrame
from ood_monitor.demo_world import anomalies
from ood_monitor.demo_world.scene import (
    ANOMALY_CLASS_BASE,
    GRASS,
    SKY,
    TRAIL,
    UNKNOWN,
    VEGETATION,
    Billboard,
    Camera,
    CameraPose,
    Renderer,
    World,
    make_trail,
)

GENERATOR_VERSION = "1.2.0"
SPLITS = ("train", "calibration", "test")
FRAME_ID = "camera"
IMAGE_TOPIC = "/camera/image_raw"
CAMERA_INFO_TOPIC = "/camera/camera_info"
MASK_TOPIC = "/ood/gt/mask"
SEMANTIC_TOPIC = "/ood/gt/semantic"
LABEL_TOPIC = "/ood/gt/label"
TOPICS = {
    IMAGE_TOPIC: "sensor_msgs/msg/Image",
    CAMERA_INFO_TOPIC: "sensor_msgs/msg/CameraInfo",
    MASK_TOPIC: "sensor_msgs/msg/Image",
    SEMANTIC_TOPIC: "sensor_msgs/msg/Image",
    LABEL_TOPIC: "ood_msgs/msg/FrameLabel",
}
FIRST_STAMP_NS = 1_700_000_000 * 1_000_000_000
DRIVE_GAP_NS = 1_000_000_000  # stamp gap between drives of one split: a visible discontinuity
LABEL_COLUMNS = ("frame", "stamp_ns", "kind", "category", "episode", "onset_frame", "is_ood")


@dataclass(frozen=True)
class DemoConfig:
    """What to generate. Frame counts are at scale 1; `scale` multiplies them (episodes keep >= 8 frames)."""

    out: Path
    scale: float = 1.0
    seed: int = 0
    width: int = 320
    height: int = 240
    fps: float = 15.0
    train_drives: int = 12
    train_frames: int = 900
    calibration_drives: int = 12  # many short drives: conformal calibration must see the drive-to-drive spread
    calibration_frames: int = 300
    episode_frames: int = 40
    gap_frames: int = 40
    storage: str = "mcap"
    jobs: int = 2

    def __post_init__(self) -> None:
        if self.scale <= 0:
            raise ValueError(f"scale must be positive, got {self.scale}")
        if self.width < 32 or self.height < 32:
            raise ValueError(f"image size must be at least 32x32, got {self.width}x{self.height}")
        if self.train_drives < 1 or self.calibration_drives < 1:
            raise ValueError("train_drives and calibration_drives must be >= 1")

    def frames(self, count: int, minimum: int) -> int:
        return max(minimum, int(round(count * self.scale)))

    @property
    def camera(self) -> Camera:
        return Camera(width=self.width, height=self.height)


@dataclass(frozen=True)
class Segment:
    """A stretch of one drive with one kind; `episode` 0 for nominal stretches."""

    kind: str
    length: int
    episode: int = 0


@dataclass(frozen=True)
class DriveSpec:
    """One continuous drive: its segments, its seed, where it starts in its split (frame and stamp)."""

    split: str
    drive: int
    segments: tuple[Segment, ...]
    seed: tuple[int, ...]
    first_frame: int
    first_stamp_ns: int

    @property
    def frames(self) -> int:
        return sum(s.length for s in self.segments)


def plan_splits(config: DemoConfig) -> dict[str, list[DriveSpec]]:
    """Drives of every split. Test: nominal gap, then episode, for every OOD kind in seeded order."""
    rng = np.random.default_rng([config.seed, 7])
    episode = config.frames(config.episode_frames, 8)
    gap = config.frames(config.gap_frames, 8)
    order = [str(k) for k in rng.permutation(anomalies.OOD_KINDS)]
    test: list[Segment] = []
    for index, kind in enumerate(order, start=1):
        test += [Segment(anomalies.NOMINAL, gap), Segment(kind, episode, index)]
    test.append(Segment(anomalies.NOMINAL, gap))
    per_train = config.frames(config.train_frames / config.train_drives, 8)
    per_calibration = config.frames(config.calibration_frames / config.calibration_drives, 8)
    drives = {
        "train": [(Segment(anomalies.NOMINAL, per_train),) for _ in range(config.train_drives)],
        "calibration": [(Segment(anomalies.NOMINAL, per_calibration),) for _ in range(config.calibration_drives)],
        "test": [tuple(test)],
    }
    plans: dict[str, list[DriveSpec]] = {}
    for split_index, split in enumerate(SPLITS):
        frame, stamp = 0, FIRST_STAMP_NS
        plans[split] = []
        for drive, segments in enumerate(drives[split]):
            spec = DriveSpec(split, drive, segments, (config.seed, split_index, drive), frame, stamp)
            plans[split].append(spec)
            frame += spec.frames
            stamp += frame_stamp_offset(spec.frames, config.fps) + DRIVE_GAP_NS
    return plans


def frame_stamp_offset(index: int, fps: float) -> int:
    return int(round(index * 1e9 / fps))


def classes() -> dict[str, dict[str, object]]:
    """Semantic class table: id -> name, display colour, whether the class is anomalous."""
    table = {
        UNKNOWN: ("unknown", (0, 0, 0), False),
        GRASS: ("grass", (60, 160, 40), False),
        TRAIL: ("trail", (170, 140, 100), False),
        SKY: ("sky", (120, 170, 240), False),
        VEGETATION: ("vegetation", (20, 90, 20), False),
    }
    for cls in anomalies.OBJECT_CLASSES:
        table[cls.class_id] = (cls.name, cls.colour, True)
    table[anomalies.LENS_DIRT_CLASS] = ("lens_dirt", (90, 60, 30), True)
    return {
        str(i): {"name": name, "colour": list(colour), "anomaly": anomaly}
        for i, (name, colour, anomaly) in sorted(table.items())
    }


# --- motion ------------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, n: int, window: int) -> np.ndarray:
    """Zero-mean noise with unit-ish amplitude and a correlation length of about `window` samples."""
    window = max(3, window)
    kernel = np.hanning(window + 2)[1:-1]
    raw = rng.standard_normal(n + 2 * window)
    smooth = np.convolve(raw, kernel / np.sqrt((kernel**2).sum()), mode="same")[window : window + n]
    return smooth


def nominal_motion(rng: np.random.Generator, n: int, fps: float) -> anomalies.MotionPlan:
    """Speed 1-3 m/s varying over seconds, small pitch/roll shake, a little suspension bounce."""
    speed = np.clip(2.0 + 0.55 * _smooth_noise(rng, n, int(4 * fps)), 1.0, 3.0)
    pitch = np.radians(0.25) * _smooth_noise(rng, n, 3) + np.radians(0.4) * _smooth_noise(rng, n, int(fps))
    roll = np.radians(0.25) * _smooth_noise(rng, n, 3) + np.radians(0.3) * _smooth_noise(rng, n, int(fps))
    bounce = 0.01 * _smooth_noise(rng, n, 4)
    return anomalies.MotionPlan(speed, np.zeros(n), pitch, roll, bounce)


@dataclass
class DrivePath:
    """Arc length along the trail, lateral offset and heading offset of the vehicle, per frame."""

    s: np.ndarray
    lateral: np.ndarray
    heading_offset: np.ndarray


def integrate_path(plan: anomalies.MotionPlan, rng: np.random.Generator, fps: float, segments: tuple[Segment, ...]) -> DrivePath:
    """Integrate speed along the trail; the nominal line wanders +-0.3 m, swerves add their own offset."""
    dt = 1.0 / fps
    s = np.concatenate([[0.0], np.cumsum(plan.speed[:-1] * dt)])
    grid = np.arange(s.min() - 50.0, s.max() + 50.0, 0.5)
    wander = 0.3 * _smooth_noise(rng, grid.size, 40) / 2.0
    lateral = np.interp(s, grid, wander)
    heading = np.interp(s, grid[:-1] + 0.25, np.arctan(np.diff(wander) / 0.5))
    extra = np.concatenate([[0.0], np.cumsum(plan.speed[:-1] * np.sin(plan.yaw_offset[:-1]) * dt)])
    start = 0
    for seg in segments:  # a swerve ends back on the line: spread its small residual over the episode
        end = start + seg.length
        if seg.kind == "swerve":
            residual = extra[end - 1] - extra[start]
            extra[start:end] -= np.linspace(0.0, residual, seg.length)
            extra[end:] -= residual
        start = end
    return DrivePath(s, lateral + extra, heading + plan.yaw_offset)


# --- rendering a drive -------------------------------------------------------------------------


@dataclass
class _Episode:
    segment: Segment
    onset: int  # frame index within the drive
    objects: list[Billboard] = field(default_factory=list)
    shift: anomalies.GlobalShift | None = None


def _episodes(
    spec: DriveSpec, rng: np.random.Generator, world: World, path: DrivePath, camera: Camera
) -> list[_Episode]:
    episodes, start = [], 0
    for seg in spec.segments:
        episode = _Episode(seg, start)
        end = start + seg.length - 1
        if seg.kind in anomalies.OBJECT_KINDS:
            episode.objects = anomalies.place_objects(
                seg.kind, rng, world.path, float(path.s[end]), world.config.trail_half_width
            )
        elif seg.kind in anomalies.GLOBAL_KINDS:
            episode.shift = anomalies.GlobalShift(seg.kind, camera.width, camera.height, rng)
        episodes.extend([episode] * seg.length)
        start += seg.length
    return episodes


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0.0, 1.0) * np.float32(255.0) + np.float32(0.5)).astype(np.uint8)


def render_drive(spec: DriveSpec, camera: Camera, fps: float = 15.0) -> Iterator[LabeledFrame]:
    """Render one drive frame by frame, with ground truth; deterministic in `spec.seed`."""
    rng = np.random.default_rng(spec.seed)
    n = spec.frames
    plan = nominal_motion(rng, n, fps)
    start = 0
    for seg in spec.segments:
        if seg.kind in anomalies.MOTION_KINDS:
            anomalies.apply_motion_anomaly(plan, seg.kind, start, seg.length, rng, fps)
        start += seg.length
    drive = integrate_path(plan, rng, fps, spec.segments)
    trail = make_trail(rng, float(drive.s.min()) - 40.0, float(drive.s.max()) + 140.0)
    world = World.build(rng, trail)
    renderer = Renderer(camera, world)
    episodes = _episodes(spec, rng, world, drive, camera)
    gain = np.clip(1.0 + 0.08 * _smooth_noise(rng, n, int(6 * fps)), 0.8, 1.2)
    frozen: LabeledFrame | None = None
    for i in range(n):
        episode = episodes[i]
        seg, k = episode.segment, i - episode.onset
        if seg.kind == "frozen" and k > 0 and k < seg.length - 1 and frozen is not None:
            yield _relabel(frozen, spec, i, fps, k)
            continue
        x, y, heading = trail.pose_at(float(drive.s[i]))
        pose = CameraPose(
            x=x - math.sin(heading) * float(drive.lateral[i]),
            y=y + math.cos(heading) * float(drive.lateral[i]),
            yaw=heading + float(drive.heading_offset[i]),
            pitch=float(plan.pitch[i]),
            roll=float(plan.roll[i]),
            height=float(plan.bounce[i]),
        )
        rendered = renderer.render(pose, i / fps, episode.objects, float(gain[i]))
        image, semantic = rendered.image, rendered.semantic
        mask = np.where(semantic >= ANOMALY_CLASS_BASE, 255, 0).astype(np.uint8)
        if episode.shift is not None:
            frame_rng = np.random.default_rng([*spec.seed, i])
            strength = anomalies.ramp(k, seg.length)
            image = episode.shift.apply(image, rendered.depth, strength, k, frame_rng)
            if episode.shift.mask is not None:
                mask = np.maximum(mask, episode.shift.mask)
                semantic = np.where(episode.shift.mask > 0, anomalies.LENS_DIRT_CLASS, semantic).astype(np.uint8)
        frame = LabeledFrame(
            index=spec.first_frame + i,
            stamp_ns=spec.first_stamp_ns + frame_stamp_offset(i, fps),
            image=_to_uint8(image),
            mask=mask,
            semantic=semantic,
            kind=seg.kind,
            category=anomalies.category_of(seg.kind),
            episode=seg.episode,
            onset_frame=spec.first_frame + episode.onset,
            is_ood=seg.kind != anomalies.NOMINAL,
        )
        if seg.kind == "frozen" and k == 0:
            frozen = frame
        yield frame


def _relabel(frozen: LabeledFrame, spec: DriveSpec, i: int, fps: float, k: int) -> LabeledFrame:
    """The frozen onset frame again, with this frame's index and stamp (same pixels)."""
    return LabeledFrame(
        index=spec.first_frame + i,
        stamp_ns=spec.first_stamp_ns + frame_stamp_offset(i, fps),
        image=frozen.image,
        mask=frozen.mask,
        semantic=frozen.semantic,
        kind=frozen.kind,
        category=frozen.category,
        episode=frozen.episode,
        onset_frame=frozen.onset_frame,
        is_ood=True,
    )


# --- writing -----------------------------------------------------------------------------------


class SplitWriter:
    """Writes one split as a rosbag2 bag and as a PNG folder with labels.csv."""

    def __init__(self, root: Path, split: str, camera: Camera, storage: str) -> None:
        self.camera = camera
        self.folder = root / "images" / split
        for sub in ("frames", "masks", "semantic"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        (root / "bags").mkdir(parents=True, exist_ok=True)
        self.bag = bags.BagWriter(root / "bags" / split, storage=storage)
        self._csv_file = (self.folder / "labels.csv").open("w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._csv_file)
        self._csv.writerow(LABEL_COLUMNS)

    def __enter__(self) -> SplitWriter:
        self.bag.__enter__()
        for topic, msgtype in TOPICS.items():
            self.bag.add_topic(topic, msgtype)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.bag.__exit__(None, None, None)
        self._csv_file.close()

    def write(self, frame: LabeledFrame) -> None:
        self._write_bag(frame)
        name = f"{frame.index:06d}.png"
        fast = [cv2.IMWRITE_PNG_COMPRESSION, 1]
        labels = [*fast, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]  # flat regions: RLE is best
        cv2.imwrite(str(self.folder / "frames" / name), cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR), fast)
        cv2.imwrite(str(self.folder / "masks" / name), frame.mask, labels)
        cv2.imwrite(str(self.folder / "semantic" / name), frame.semantic, labels)
        self._csv.writerow(
            [frame.index, frame.stamp_ns, frame.kind, frame.category, frame.episode, frame.onset_frame,
             int(frame.is_ood)]
        )

    def _write_bag(self, frame: LabeledFrame) -> None:
        cam, stamp = self.camera, frame.stamp_ns
        messages = {
            IMAGE_TOPIC: bags.image_msg(frame.image, "rgb8", stamp, FRAME_ID),
            CAMERA_INFO_TOPIC: bags.camera_info_msg(cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy, stamp, FRAME_ID),
            MASK_TOPIC: bags.image_msg(frame.mask, "mono8", stamp, FRAME_ID),
            SEMANTIC_TOPIC: bags.image_msg(frame.semantic, "mono8", stamp, FRAME_ID),
            LABEL_TOPIC: bags.label_msg(
                stamp, FRAME_ID, frame.kind, frame.category, frame.episode, frame.onset_frame, frame.index,
                frame.is_ood,
            ),
        }
        for topic, msg in messages.items():
            self.bag.write(topic, msg, stamp)


@dataclass
class SplitSummary:
    split: str
    frames: int
    kinds: dict[str, int]
    drive_first_frames: list[int]
    episodes: list[dict[str, object]]
    seconds: float


def generate_split(config: DemoConfig, split: str, drives: list[DriveSpec], progress: bool = True) -> SplitSummary:
    """Render and write every drive of one split; returns its counts."""
    cv2.setNumThreads(1)  # splits run in parallel processes; threads inside would only contend
    started = time.perf_counter()
    total = sum(d.frames for d in drives)
    kinds: Counter[str] = Counter()
    episodes: list[dict[str, object]] = []
    step = max(1, total // 4)
    with SplitWriter(Path(config.out), split, config.camera, config.storage) as writer:
        for drive in drives:
            for frame in render_drive(drive, config.camera, config.fps):
                writer.write(frame)
                kinds[frame.kind] += 1
                if frame.is_ood and frame.index == frame.onset_frame:
                    episodes.append({"kind": frame.kind, "episode": frame.episode, "onset_frame": frame.index})
                done = frame.index + 1
                if progress and (done % step == 0 or done == total):
                    print(f"  {split}: {done}/{total} frames", flush=True)
    for episode in episodes:
        episode["frames"] = kinds[str(episode["kind"])]
    return SplitSummary(split, total, dict(sorted(kinds.items())), [d.first_frame for d in drives], episodes,
                        time.perf_counter() - started)


def generate(config: DemoConfig, log: Callable[[str], None] | None = print) -> dict[str, object]:
    """Generate the whole dataset under `config.out`; returns what is written to dataset.json.

    `log` receives progress lines (None: silent); split workers print their progress themselves.
    """
    progress = log is not None
    log = log or (lambda _line: None)
    out = Path(config.out)
    existing = [out / "bags" / s for s in SPLITS if (out / "bags" / s).exists()]
    if existing:
        raise ValueError(f"output already contains a dataset ({existing[0]} exists); choose an empty --out")
    out.mkdir(parents=True, exist_ok=True)
    plans = plan_splits(config)
    started = time.perf_counter()
    log(f"demo data: seed {config.seed}, scale {config.scale}, {config.width}x{config.height} -> {out}")
    order = sorted(SPLITS, key=lambda s: -sum(d.frames for d in plans[s]))  # longest first balances workers
    if config.jobs > 1:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=config.jobs, mp_context=context) as pool:
            futures = {s: pool.submit(generate_split, config, s, plans[s], progress) for s in order}
            summaries = {s: futures[s].result() for s in order}
    else:
        summaries = {s: generate_split(config, s, plans[s], progress) for s in order}
    dataset = {
        "generator": "ood_monitor.demo_world.generator",
        "generator_version": GENERATOR_VERSION,
        "seed": config.seed,
        "scale": config.scale,
        "width": config.width,
        "height": config.height,
        "fps": config.fps,
        "frame_id": FRAME_ID,
        "topics": TOPICS,
        "splits": {s: _summary_json(summaries[s]) for s in SPLITS},
    }
    (out / "classes.json").write_text(json.dumps(classes(), indent=2) + "\n", encoding="utf-8")
    (out / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n", encoding="utf-8")
    log(f"demo data: {sum(s.frames for s in summaries.values())} frames in {time.perf_counter() - started:.1f} s")
    return dataset


def _summary_json(summary: SplitSummary) -> dict[str, object]:
    data = asdict(summary)
    data.pop("split")
    data.pop("seconds")
    data["bag"] = f"bags/{summary.split}"
    data["images"] = f"images/{summary.split}"
    return data
