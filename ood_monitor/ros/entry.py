"""Console-script entry points of the nodes (`ros2 run ood_monitor <node>`, what launch files start).

Kept free of heavy imports on purpose: a node imports torch, OpenCV and its models for seconds before
rclpy installs its signal handling, and a Ctrl-C of `ros2 launch` in that window must still end the
process quietly with status 0 — not with a KeyboardInterrupt traceback from deep inside an import."""
from __future__ import annotations

import importlib
import os
import signal
import sys


def _exit_during_import(signum, _frame) -> None:
    sys.stderr.flush()
    os._exit(0)  # nothing started yet: no DDS participant, no files, nothing to clean up


def _run(module: str) -> None:
    handlers = {s: signal.signal(s, _exit_during_import) for s in (signal.SIGINT, signal.SIGTERM)}
    node_module = importlib.import_module(f"ood_monitor.nodes.{module}")
    for s, handler in handlers.items():
        signal.signal(s, handler)
    node_module.main()


def preprocess_node() -> None:
    _run("preprocess_node")


def vae_detector_node() -> None:
    _run("vae_detector_node")


def synthesizer_node() -> None:
    _run("synthesizer_node")


def analysis_node() -> None:
    _run("analysis_node")


def nav_bridge_node() -> None:
    _run("nav_bridge_node")
