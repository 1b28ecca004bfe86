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


def stop_quietly(node: Node | None) -> None:
    """Destroy the node and shut rclpy down; a second Ctrl-C (or launch's SIGINT to a node that is already
    stopping, e.g. after a failed start) must not turn a clean stop into a traceback and status -2."""
    with contextlib.suppress(KeyboardInterrupt):
        if node is not None:
            node.destroy_node()
    with contextlib.suppress(KeyboardInterrupt):
        if rclpy.ok():
            rclpy.shutdown()
    for sig in (signal.SIGINT, signal.SIGTERM):  # stopped: further signals change nothing
        signal.signal(sig, signal.SIG_IGN)


def exit_process(code: int) -> None:
    """Flush what was written, then end the process now (see the module docstring)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
