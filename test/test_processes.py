"""Nodes as real processes over DDS: `ood-monitor run` starts the graph from the YAML in one process,
and with one process per node, killing one leaves the others running."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import Image
from skimage import data as skdata
from std_msgs.msg import Header

from ood_monitor.ros.image import array_to_image
from ood_msgs.msg import OODScore

from ros_harness import RosHarness

pytestmark = [pytest.mark.ros, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "config" / "default.yaml"
# A domain of their own: a SIGKILLed participant lingers in discovery (and in shared memory) until its
# lease expires, and must not slow the tests that run after these.
DOMAIN = int(os.environ.get("ROS_DOMAIN_ID", "0")) % 100 + 100


def frames(n: int) -> list[np.ndarray]:
    tex = cv2.cvtColor(cv2.resize(skdata.gravel(), (400, 300)), cv2.COLOR_GRAY2RGB)
    return [np.ascontiguousarray(tex[i:i + 240, i:i + 320]) for i in range(n)]


def header(i: int) -> Header:
    h = Header(frame_id="camera")
    t = 1_700_000_000 * 10**9 + i * 66_666_667
    h.stamp.sec, h.stamp.nanosec = t // 10**9, t % 10**9
    return h


def spawn(*argv: str) -> subprocess.Popen:
    return subprocess.Popen(list(argv), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "ROS_DOMAIN_ID": str(DOMAIN)})


def stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.stdout.read() if proc.stdout else ""


def feed_until(ros: RosHarness, predicate, timeout: float = 60.0, start: int = 0) -> int:
    """Publish camera frames at ~15 Hz until predicate() holds; returns the next frame index."""
    pub = ros.publisher(Image, "/camera/image_raw")
    seq = frames(60)
    deadline, i = time.monotonic() + timeout, start
    while time.monotonic() < deadline and not predicate():
        pub.publish(array_to_image(seq[i % len(seq)], "rgb8", header=header(i)))
        i += 1
        time.sleep(0.066)
    assert predicate(), "timed out"
    return i


def test_ood_monitor_run_starts_the_graph_from_yaml():
    proc = spawn(sys.executable, "-m", "ood_monitor.cli.main", "run", "--params", str(PARAMS),
                 "--stages", "preprocess,detect")
    try:
        with RosHarness(domain_id=DOMAIN) as ros:
            image_scores = ros.collect(OODScore, "/ood/score/image")
            flow_scores = ros.collect(OODScore, "/ood/score/flow")
            feed_until(ros, lambda: len(image_scores) >= 3 and len(flow_scores) >= 3)
            assert image_scores[0].detector == "image" and flow_scores[0].detector == "flow"
            assert image_scores[0].header.frame_id == "camera"
    finally:
        out = stop(proc)
    assert "running preprocess_node, vae_image_detector, vae_flow_detector" in out, out


def test_killing_one_node_process_leaves_the_others_running():
    pre = spawn("preprocess_node", "--ros-args", "--params-file", str(PARAMS))
    det = spawn("vae_detector_node", "--ros-args", "-r", "__node:=vae_image_detector", "--params-file", str(PARAMS))
    try:
        with RosHarness(domain_id=DOMAIN) as ros:
            images = ros.collect(Image, "/ood/image")
            scores = ros.collect(OODScore, "/ood/score/image")
            i = feed_until(ros, lambda: len(scores) >= 3)
            os.killpg(det.pid, signal.SIGKILL)
            det.wait(timeout=10)
            n_images, n_scores = len(images), len(scores)
            feed_until(ros, lambda: len(images) >= n_images + 10, start=i)
            assert pre.poll() is None, "preprocess_node died with the detector"
            time.sleep(0.5)
            assert len(scores) == n_scores
    finally:
        stop(det)
        stop(pre)


def test_a_node_without_its_model_refuses_to_start_with_a_clear_line(tmp_path):
    proc = subprocess.run(["vae_detector_node", "--ros-args", "-p", f"model_dir:={tmp_path / 'none'}"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "ROS_DOMAIN_ID": str(DOMAIN)})
    assert proc.returncode == 1
    assert "cannot start" in proc.stderr and "config.json not found: run `ood-monitor train vae" in proc.stderr
    assert "Traceback" not in proc.stderr
