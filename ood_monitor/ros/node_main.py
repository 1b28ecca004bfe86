"""The `main()` every node shares: init, construct, spin, clean shutdown; a start-up failure (missing
or mismatched model, bad parameter, unavailable backend) ends the process with one clear line and
exit status 1 instead of a traceback.

SIGINT and SIGTERM (Ctrl-C on `ros2 launch`, then its escalation) end the spin; the node is destroyed,
rclpy shut down and the process leaves with `exit_process`, which skips the interpreter's finalization:
with torch loaded that takes seconds on a busy CPU (longer than launch waits) and is where a worker
thread still inside torch used to crash the process (SIGSEGV)."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable

import rclpy
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

# a parameter out of its descriptor's range or of the wrong type is a start-up error like a missing model
START_ERRORS = (RuntimeError, ValueError, FileNotFoundError, ParameterException)


def run_node(factory: Callable[[], Node], name: str, args: list[str] | None = None) -> int:
    rclpy.init(args=args)
    node = None
    try:
        node = factory()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except START_ERRORS as exc:
        if node is not None:  # failed while running, not at start: a real bug, keep the traceback
            raise
        print(f"[{name}] cannot start: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        stop_quietly(node)
    return 0


# destroy_node took 2.8-3.0 s in one launch test of three when all six nodes of ood_monitor.launch.py
# stopped at once on two cores (over 5 s once in CI, and launch escalated to SIGTERM); the process ends
# right after it, so it is given this long and then abandoned: peers that miss the goodbye drop this
# node at their DDS lease timeout. 1.5 s was still too long once (2026-12-04, fresh-clone CI: the image
# detector left 6.6 s after SIGINT, on two loaded cores)
TEARDOWN_WAIT_S = 0.5


def stop_quietly(node: Node | None, wait_s: float = TEARDOWN_WAIT_S) -> None:
    """Destroy the node and shut rclpy down, for at most `wait_s`. Signals are ignored first: a second
    Ctrl-C (or launch's SIGINT to a node that is already stopping, e.g. after a failed start) must not turn
    a clean stop into a traceback and status -2."""
    for sig in (signal.SIGINT, signal.SIGTERM):  # stopping: further signals change nothing
        signal.signal(sig, signal.SIG_IGN)

    def teardown() -> None:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()

    worker = threading.Thread(target=teardown, name="teardown", daemon=True)
    worker.start()
    worker.join(wait_s)
    if worker.is_alive():
        print(f"teardown still running after {wait_s:.1f} s: leaving without it", file=sys.stderr, flush=True)


def exit_process(code: int) -> None:
    """Flush what was written, then end the process now (see the module docstring)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
