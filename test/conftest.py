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
    from ood_monitor.data.demo import DemoConfig, generate

    out = tmp_path_factory.mktemp("demo") / "data"
    generate(DemoConfig(out=out, scale=0.1, seed=3, jobs=1), log=None)
    return out
