"""The real-footage benchmark: real camera recordings split into train / calibration / labelled test folders.

Every figure of the demo world comes from footage this project rendered itself. Here the nominal data is a
real camera's recording that nobody here made (`ood-monitor data real`): its first seconds train, the
next seconds calibrate, and the rest is held out. The test split replays held-out stretches of the same
recording, each one a short block: a clean lead-in, one OOD episode, a clean tail. Episodes are

* corruptions from public libraries (ood_monitor/real_world/corruptions.py) applied to the real frames;
* a real change of scene: frames of another recording (another camera or place);
* real photographed objects pasted with exact masks and class labels (ood_monitor/real_world/pasted_objects.py);
* real motion anomalies made from the real sequence itself: `frozen` (the onset frame repeated), `jerk_drop`
  (two of every three frames dropped), `jerk_shuffle` (frames out of order), `reversing` (played backwards).

Blocks are separated by a stamp gap (as separate drives in the demo), so the node and the evaluator restart
their alarm state and optical flow between them. Output per recording, in the image-folder format the
rest of the package reads (ood_monitor/data/labeled_frames.py): `<name>/{train,calibration,test}/frames/*.png`
+ `labels.csv`, the test split also `masks/` and `semantic/`, `<name>/classes.json`, `<name>/dataset.json`;
`<name>/held_out/` is the held-out stretch once more, whole and unaltered (the long clean run a false-alarm
rate needs).
"""
from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ood_monitor.data.labeled_frames import IMAGE_SUFFIXES, LabeledFrame
from ood_monitor.real_world import pasted_objects
from ood_monitor.real_world.corruptions import DEFAULT_CORRUPTIONS, Corruption

GENERATOR_VERSION = "1.2.0"  # 1.1: lens and weather corruptions hold still within an episode; 1.2: held_out,
# impulse noise seeded (a rebuild is bit-identical)
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
MOTION_KINDS = ("frozen", "jerk_drop", "jerk_shuffle", "reversing")
SCENE_KIND = "scene_change"
SPLITS = ("train", "calibration", "test", "held_out")
LABEL_COLUMNS = ("frame", "stamp_ns", "kind", "category", "episode", "onset_frame", "is_ood")
FIRST_STAMP_NS = 1_700_000_000 * 1_000_000_000
BLOCK_GAP_NS = 1_000_000_000  # between test blocks: a visible break in the stream
DROP_STEP = 3  # jerk_drop keeps every third frame
VISIBLE_MAD = 3.0  # grey levels at 128 px: the bound for a shift that "visibly changes" a frame


def category_of(kind: str) -> str:
    """labels.csv category: global (corruptions), scene, object or motion."""
    if kind == "nominal":
        return "in_distribution"
    if kind in pasted_objects.OBJECT_KINDS:
        return "object"
    if kind in MOTION_KINDS:
        return "motion"
    if kind == SCENE_KIND:
        return "scene"
    return "global"


@dataclass(frozen=True)
class RealFootageConfig:
    """What to build. Seconds are of the recording at its own frame rate."""

    out: Path
    recordings: tuple[Path, ...]
    scene_sources: tuple[Path, ...] = ()  # more footage for scene changes (besides the other recordings)
    width: int = 320
    fps: float | None = None  # None: the video's rate (image folders: 15)
    train_seconds: float = 5.0
    calibration_seconds: float = 2.0
    episode_frames: int = 8
    gap_frames: int = 8
    corruptions: tuple[str, ...] = DEFAULT_CORRUPTIONS
    severity: int = 3
    objects: tuple[str, ...] = pasted_objects.OBJECT_KINDS
    motion: tuple[str, ...] = MOTION_KINDS
    scene_change: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.recordings:
            raise ValueError("give at least one recording (a video file or a folder of images)")
        if self.width < 32:
            raise ValueError(f"width must be at least 32 px, got {self.width}")
        if self.train_seconds <= 0 or self.calibration_seconds <= 0:
            raise ValueError("train_seconds and calibration_seconds must be positive")
        if self.episode_frames < 2 or self.gap_frames < 2:
            raise ValueError("episode_frames and gap_frames must be at least 2")
        for kind in self.motion:
            if kind not in MOTION_KINDS:
                raise ValueError(f"unknown motion anomaly {kind!r}; choose from {MOTION_KINDS}")
        for kind in self.objects:
            if kind not in pasted_objects.OBJECT_KINDS:
                raise ValueError(f"unknown object kind {kind!r}; choose from {pasted_objects.OBJECT_KINDS}")
        for name in self.corruptions:
            Corruption(name, self.severity)  # validates


@dataclass
class Recording:
    """Frames of one recording (RGB uint8, all one size) and where they came from."""

    name: str
    source: str
    fps: float
    frames: list[np.ndarray]
    sha256: str


def recording_name(path: Path) -> str:
    stem = path.stem if path.is_file() else path.name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem) or "recording"


def read_recording(path: Path | str, width: int, fps: float | None = None) -> Recording:
    """A video file (frames decoded in order) or a folder of images (sorted by name), resized to `width`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such recording: {path}")
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise ValueError(f"no images (.png/.jpg) in {path}")
        raw = [_decode(p) for p in images]
        rate = fps or 15.0
        digest = hashlib.sha256(b"".join(p.read_bytes() for p in images)).hexdigest()
    elif path.suffix.lower() in VIDEO_SUFFIXES:
        capture = cv2.VideoCapture(str(path))
        if not capture.isOpened():
            raise ValueError(f"cannot open video {path}")
        raw = []
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            raw.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        rate = fps or float(capture.get(cv2.CAP_PROP_FPS) or 0.0) or 15.0
        capture.release()
        if not raw:
            raise ValueError(f"no frames could be decoded from {path}")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    else:
        raise ValueError(f"not a video ({', '.join(VIDEO_SUFFIXES)}) or an image folder: {path}")
    h0, w0 = raw[0].shape[:2]
    height = max(2, int(round(width * h0 / w0 / 2)) * 2)
    frames = [_fit(f, width, height) for f in raw]
    return Recording(recording_name(path), str(path), float(rate), frames, digest)


def _decode(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot decode image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _fit(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize to cover width x height, then centre-crop (other cameras' frames keep their aspect)."""
    h, w = image.shape[:2]
    scale = max(width / w, height / h)
    size = (max(width, int(round(w * scale))), max(height, int(round(h * scale))))
    resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    y, x = (size[1] - height) // 2, (size[0] - width) // 2
    return np.ascontiguousarray(resized[y : y + height, x : x + width])


# --- the test plan -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """One test block: `lead` clean frames, the episode, `tail` clean frames; indices into held-out frames."""

    episode: int
    kind: str
    lead: tuple[int, ...]
    source: tuple[int, ...]  # held-out frames under the episode (scene change: of the other footage)
    tail: tuple[int, ...]
    seed: int
    scene_start: int = 0


@dataclass
class Split:
    train: range
    calibration: range
    held_out: range


def split_recording(n: int, fps: float, config: RealFootageConfig) -> Split:
    """First `train_seconds` train, the next `calibration_seconds` calibrate, the rest is held out; the
    held-out part must hold the longest block (lead + jerk_drop's source + tail)."""
    n_train = int(round(config.train_seconds * fps))
    n_cal = int(round(config.calibration_seconds * fps))
    need = needed_held_out(config)
    if n - n_train - n_cal < need:
        raise ValueError(f"recording has {n} frames at {fps:g} fps: {n_train} train + {n_cal} calibration leaves "
                         f"{n - n_train - n_cal} held out, fewer than the {need} one test block needs "
                         f"(shorten --train-seconds/--calibration-seconds or --episode-frames/--gap-frames)")
    return Split(range(0, n_train), range(n_train, n_train + n_cal), range(n_train + n_cal, n))


def needed_held_out(config: RealFootageConfig) -> int:
    longest = DROP_STEP * (config.episode_frames - 1) + 1 if "jerk_drop" in config.motion else config.episode_frames
    return config.gap_frames + max(longest, config.episode_frames + 1) + config.gap_frames


def test_kinds(config: RealFootageConfig, scene: bool) -> list[str]:
    kinds = [*config.corruptions, *config.objects, *config.motion]
    return kinds + ([SCENE_KIND] if scene and config.scene_change else [])


def plan_blocks(kinds: list[str], n_held: int, config: RealFootageConfig, scene_frames: int,
                rng: np.random.Generator) -> list[Block]:
    """One block per kind, in seeded random order, each at a random place in the held-out frames."""
    L, G = config.episode_frames, config.gap_frames
    blocks = []
    for episode, kind in enumerate(rng.permutation(kinds).tolist(), start=1):
        if kind == "reversing":  # lead-in forward, then back over the lead-in and before it, then forward
            s = int(rng.integers(max(G, L + 1), n_held - G + 1))
            source = tuple(range(s - 2, s - 2 - L, -1))
            lead, tail = tuple(range(s - G, s)), tuple(range(s - L, s - L + G))
        else:
            span = DROP_STEP * (L - 1) + 1 if kind == "jerk_drop" else L
            s = int(rng.integers(G, n_held - span - G + 1))
            lead, tail = tuple(range(s - G, s)), tuple(range(s + span, s + span + G))
            if kind == "frozen":
                source = (s,) * L
            elif kind == "jerk_drop":
                source = tuple(range(s, s + span, DROP_STEP))
            elif kind == "jerk_shuffle":
                order = rng.permutation(L)
                while L > 1 and (order == np.arange(L)).any():  # every frame out of place
                    order = rng.permutation(L)
                source = tuple(int(s + i) for i in order)
            else:
                source = tuple(range(s, s + L))
        scene_start = int(rng.integers(0, max(1, scene_frames - L + 1))) if kind == SCENE_KIND else 0
        blocks.append(Block(episode, str(kind), lead, source, tail, int(rng.integers(0, 2**31)), scene_start))
    return blocks


# --- rendering the test split ------------------------------------------------------------------


@dataclass
class EpisodeSummary:
    episode: int
    kind: str
    category: str
    onset_frame: int
    frames: int
    library: str
    mad128: float | None  # mean |shifted - clean| in grey levels at 128x128 (None: motion, pixels unchanged)
    visible: bool  # corruptions: mad128 >= VISIBLE_MAD (the targets apply to visible ones only)


def mad128(clean: np.ndarray, shifted: np.ndarray) -> float:
    """Mean absolute grey-level difference of two frames at the detectors' 128x128 input."""
    def grey(im: np.ndarray) -> np.ndarray:
        return cv2.cvtColor(cv2.resize(im, (128, 128), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY).astype(np.float32)

    return float(np.abs(grey(clean) - grey(shifted)).mean())


def test_frames(held: list[np.ndarray], blocks: list[Block], scene: list[np.ndarray], config: RealFootageConfig,
                fps: float, summaries: list[EpisodeSummary]) -> Iterator[LabeledFrame]:
    """The test split frame by frame; appends one EpisodeSummary per block to `summaries`."""
    h, w = held[0].shape[:2]
    empty = np.zeros((h, w), np.uint8)
    index, stamp = 0, FIRST_STAMP_NS
    for block in blocks:
        onset = index + len(block.lead)
        episode, diffs, library = _episode_frames(block, held, scene, config)
        parts = ([(held[i], empty, empty, "nominal") for i in block.lead] + episode
                 + [(held[i], empty, empty, "nominal") for i in block.tail])
        for image, mask, semantic, kind in parts:
            ood = kind != "nominal"
            yield LabeledFrame(index, stamp, image, mask, semantic, kind, category_of(kind),
                               block.episode if ood else 0, onset if ood else 0, ood)
            index += 1
            stamp += int(round(1e9 / fps))
        stamp += BLOCK_GAP_NS
        mad = float(np.mean(diffs)) if diffs else None
        category = category_of(block.kind)
        summaries.append(EpisodeSummary(block.episode, block.kind, category, onset, len(block.source), library, mad,
                                        mad is None or category != "global" or mad >= VISIBLE_MAD))


def _episode_frames(block: Block, held: list[np.ndarray], scene: list[np.ndarray], config: RealFootageConfig
                    ) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray, str]], list[float], str]:
    """(image, mask, semantic, kind) of each episode frame, the frames' mad128 (not for motion), the source."""
    rng = np.random.default_rng(block.seed)
    placements = pasted_objects.plan(block.kind, rng) if block.kind in pasted_objects.OBJECT_KINDS else []
    empty = np.zeros(held[0].shape[:2], np.uint8)
    frames, diffs = [], []
    library = {"scene": "other footage", "object": "scikit-image photos", "motion": "real sequence"}.get(
        category_of(block.kind), "")
    for k, i in enumerate(block.source):
        clean, mask, semantic = held[i], empty, empty
        if block.kind in pasted_objects.OBJECT_KINDS:
            image, mask, semantic = pasted_objects.paste(clean, placements, k / max(1, len(block.source) - 1))
        elif block.kind == SCENE_KIND:
            image = scene[(block.scene_start + k) % len(scene)]
        elif block.kind in MOTION_KINDS:
            image = clean
        else:
            corruption = Corruption(block.kind, config.severity)
            image = corruption.apply(clean, block.seed + (k if corruption.per_frame else 0))
            library = corruption.library
        if block.kind not in MOTION_KINDS:
            diffs.append(mad128(clean, image))
        frames.append((image, mask, semantic, block.kind))
    return frames, diffs, library


# --- writing -----------------------------------------------------------------------------------


class FolderWriter:
    """One split as an image folder: frames/, labels.csv and (with labels) masks/, semantic/."""

    def __init__(self, folder: Path, with_masks: bool) -> None:
        self.folder, self.with_masks = folder, with_masks
        subs = ("frames", "masks", "semantic") if with_masks else ("frames",)
        for sub in subs:
            (folder / sub).mkdir(parents=True, exist_ok=True)
        self._file = (folder / "labels.csv").open("w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file)
        self._csv.writerow(LABEL_COLUMNS)
        self.count = 0

    def __enter__(self) -> FolderWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._file.close()

    def write(self, frame: LabeledFrame) -> None:
        name = f"{frame.index:06d}.png"
        cv2.imwrite(str(self.folder / "frames" / name), cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if self.with_masks:
            labels = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
            cv2.imwrite(str(self.folder / "masks" / name), frame.mask, labels)
            cv2.imwrite(str(self.folder / "semantic" / name), frame.semantic, labels)
        self._csv.writerow([frame.index, frame.stamp_ns, frame.kind, frame.category, frame.episode,
                            frame.onset_frame, int(frame.is_ood)])
        self.count += 1


def nominal_frames(frames: list[np.ndarray], fps: float) -> Iterator[LabeledFrame]:
    for i, image in enumerate(frames):
        yield LabeledFrame(i, FIRST_STAMP_NS + int(round(i * 1e9 / fps)), image, None, None)


@dataclass
class RecordingSummary:
    name: str
    source: str
    sha256: str
    fps: float
    width: int
    height: int
    frames: int
    seconds: dict[str, float]
    splits: dict[str, int]
    scene_source: str | None
    episodes: list[EpisodeSummary] = field(default_factory=list)


def build_recording(recording: Recording, scene: Recording | None, config: RealFootageConfig,
                    log=print) -> RecordingSummary:
    """Write one recording's three splits, classes.json and dataset.json under `config.out / name`."""
    root = Path(config.out) / recording.name
    if any((root / s).exists() for s in SPLITS):
        raise ValueError(f"{root} already holds a benchmark; choose an empty --out")
    split = split_recording(len(recording.frames), recording.fps, config)
    held = [recording.frames[i] for i in split.held_out]
    scene_frames = [_fit(f, held[0].shape[1], held[0].shape[0]) for f in scene.frames] if scene else []
    rng = np.random.default_rng([config.seed, *recording.sha256.encode()[:8]])
    kinds = test_kinds(config, bool(scene_frames))
    if len(scene_frames) < config.episode_frames and scene is not None:
        raise ValueError(f"scene-change footage {scene.source} has {len(scene_frames)} frames, "
                         f"fewer than --episode-frames {config.episode_frames}")
    blocks = plan_blocks(kinds, len(held), config, len(scene_frames), rng)
    summary = RecordingSummary(
        recording.name, recording.source, recording.sha256, recording.fps, held[0].shape[1], held[0].shape[0],
        len(recording.frames),
        {"train": len(split.train) / recording.fps, "calibration": len(split.calibration) / recording.fps,
         "held_out": len(split.held_out) / recording.fps},
        {}, scene.source if scene else None)
    # held_out: the whole held-out stretch once, in order, untouched: the long clean run a false-alarm rate
    # per 1000 frames needs (the test split's clean frames are 16 per episode, in blocks)
    for name, frames in (("train", split.train), ("calibration", split.calibration), ("held_out", split.held_out)):
        with FolderWriter(root / name, with_masks=False) as writer:
            for frame in nominal_frames([recording.frames[i] for i in frames], recording.fps):
                writer.write(frame)
        summary.splits[name] = writer.count
    with FolderWriter(root / "test", with_masks=True) as writer:
        for frame in test_frames(held, blocks, scene_frames, config, recording.fps, summary.episodes):
            writer.write(frame)
    summary.splits["test"] = writer.count
    (root / "classes.json").write_text(json.dumps(pasted_objects.classes(), indent=2) + "\n", encoding="utf-8")
    data = {"generator": "ood_monitor.real_world.benchmark", "generator_version": GENERATOR_VERSION,
            "config": _config_json(config), **asdict(summary)}
    (root / "dataset.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    log(f"  {recording.name}: {len(split.train)} train, {len(split.calibration)} calibration, "
        f"{len(split.held_out)} held out -> {writer.count} test frames, {len(blocks)} episodes")
    return summary


def generate(config: RealFootageConfig, log=print) -> list[RecordingSummary]:
    """Build every recording; scene changes of a recording come from the next recording (or --scene)."""
    recordings = [read_recording(p, config.width, config.fps) for p in config.recordings]
    names = [r.name for r in recordings]
    if len(set(names)) != len(names):
        raise ValueError(f"recordings must have different names, got {names}")
    extra = [read_recording(p, config.width, config.fps) for p in config.scene_sources]
    Path(config.out).mkdir(parents=True, exist_ok=True)
    summaries = []
    for i, recording in enumerate(recordings):
        others = recordings[i + 1 :] + recordings[:i] + extra
        scene = others[0] if others else None
        summaries.append(build_recording(recording, scene, config, log))
    index = {"generator": "ood_monitor.real_world.benchmark", "generator_version": GENERATOR_VERSION,
             "recordings": [s.name for s in summaries]}
    (Path(config.out) / "real_footage.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return summaries


def _config_json(config: RealFootageConfig) -> dict[str, object]:
    data = asdict(config)
    data["out"] = str(config.out)
    data["recordings"] = [str(p) for p in config.recordings]
    data["scene_sources"] = [str(p) for p in config.scene_sources]
    return data
