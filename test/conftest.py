"""Test session setup: an isolated DDS domain per run, and the demo dataset built once."""
from __future__ import annotations

import csv
import os
import random
import shutil
from pathlib import Path

os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(20, 99)))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory):
    """The demo dataset at scale 0.1 (every split and OOD kind, a few seconds to generate)."""
    from ood_monitor.demo_world.generator import DemoConfig, generate

    out = tmp_path_factory.mktemp("demo") / "data"
    generate(DemoConfig(out=out, scale=0.1, seed=3, jobs=1), log=None)
    return out


@pytest.fixture(scope="session")
def tiny_image_model(demo_dataset, tmp_path_factory):
    """A calibrated 32x32 image β-VAE trained for 2 epochs on the demo train split, through the CLI, with
    the shipped model's score (kl_texture_photometric_structure: the texture head, the photometric and
    structure statistics are fitted at training, the part scales by calibrate)."""
    from ood_monitor.cli.main import main as cli

    bags = demo_dataset / "bags"
    model = tmp_path_factory.mktemp("tiny") / "vae_image"
    assert cli(["train", "vae", "--kind", "image", "--data", str(bags / "train"), "--out", str(model), "--size", "32",
                "--latent", "6", "--widths", "8,16,16", "--hidden", "32", "--epochs", "2", "--min-steps", "0", "--batch", "32",
                "--select-k", "3", "--threads", "2", "--score", "kl_texture_photometric_structure"]) == 0
    assert cli(["calibrate", "--model", str(model), "--data", str(bags / "calibration")]) == 0
    return model


@pytest.fixture(scope="module")
def ray_local():
    """One in-process Ray instance per fleet test module (start-up costs seconds), 2 CPUs; shut down after
    the module, so Ray's daemons do not share the two cores with the later tests (launched nodes then
    missed the time launch gives between SIGINT and SIGTERM)."""
    ray = pytest.importorskip("ray")
    from ood_monitor.fleet.ray_engine import ensure_ray

    ensure_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def clips(demo_dataset, tmp_path_factory) -> list[Path]:
    """Three 16-frame image folders cut from the demo test split (8 nominal frames, then an 8-frame
    episode), plus a damaged bag (its storage file cut in half) and a bag whose metadata is garbage."""
    src = demo_dataset / "images" / "test"
    with (src / "labels.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    root = tmp_path_factory.mktemp("fleet")
    out = []
    for k in range(3):
        clip = root / "fleet" / f"robot{k}"
        (clip / "frames").mkdir(parents=True)
        part = rows[16 * k:16 * (k + 1)]
        for row in part:
            name = f"{int(row['frame']):06d}.png"
            shutil.copy(src / "frames" / name, clip / "frames" / name)
        with (clip / "labels.csv").open("w", newline="") as handle:
            w = csv.DictWriter(handle, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(part)
        out.append(clip)
    truncated = root / "fleet" / "robot3_truncated"
    shutil.copytree(demo_dataset / "bags" / "calibration", truncated)
    storage = next(truncated.glob("*.mcap"))
    storage.write_bytes(storage.read_bytes()[: storage.stat().st_size // 2])
    garbage = root / "fleet" / "robot4_garbage"
    garbage.mkdir()
    (garbage / "metadata.yaml").write_text("rosbag2_bagfile_information: [not, a, bag\n")
    return out + [truncated, garbage]
