"""Test session setup: an isolated DDS domain per run, and the demo dataset built once."""
from __future__ import annotations

import os
import random

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
    the shipped model's score (kl_texture: the texture head is fitted at training)."""
    from ood_monitor.cli.main import main as cli

    bags = demo_dataset / "bags"
    model = tmp_path_factory.mktemp("tiny") / "vae_image"
    assert cli(["train", "vae", "--kind", "image", "--data", str(bags / "train"), "--out", str(model), "--size", "32",
                "--latent", "6", "--widths", "8,16,16", "--hidden", "32", "--epochs", "2", "--min-steps", "0", "--batch", "32",
                "--select-k", "3", "--threads", "2", "--score", "kl_texture"]) == 0
    assert cli(["calibrate", "--model", str(model), "--data", str(bags / "calibration")]) == 0
    return model
