"""The `main()` every node shares: init, construct, spin, clean shutdown; a start-up failure (missing
or mismatched model, bad parameter, unavailable backend) ends the process with one clear line and
exit status 1 instead of a traceback."""
from __future__ import annotations

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
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0
