"""A node graph in one process: the pipeline's nodes (ood_monitor.pipeline specs) created in a private
rclpy context from a ROS parameter file, spun by one executor (single-threaded by default). `ood-monitor
run`, the demo and the pipeline benchmark all start the nodes this way, so they run what a launch runs."""
from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

import rclpy
from rclpy.executors import Executor, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter

from ood_monitor.pipeline import NodeSpec

EXECUTORS = ("single", "multi")


def make_executor(kind: str, context: rclpy.Context, threads: int = 4) -> Executor:
    """single: what `ros2 run`/launch give each node, and the default; multi: a thread pool. rclpy's
    MultiThreadedExecutor busy-waits while a callback runs, taking the GIL from the callbacks: measured
    with `bench pipeline` on 2 cores, the detectors fell from 30 Hz to 1-5 Hz. (rclpy's experimental
    EventsExecutor delivered nothing to the lifecycle nodes here, so it is not offered.)"""
    if kind == "single":
        return SingleThreadedExecutor(context=context)
    if kind == "multi":
        return MultiThreadedExecutor(num_threads=threads, context=context)
    raise ValueError(f"executor must be one of {EXECUTORS}, got {kind!r}")


class NodeGraph:
    def __init__(self, specs: list[NodeSpec], params_file: str | Path | None = None, namespace: str = "",
                 use_sim_time: bool = False, threads: int = 4,
                 overrides: dict[str, dict[str, Any]] | None = None, executor: str = "single") -> None:
        if params_file is not None and not Path(params_file).is_file():
            raise FileNotFoundError(f"parameter file not found: {params_file}")
        self.context = rclpy.Context()
        args = ["--ros-args", "--params-file", str(params_file)] if params_file else []
        rclpy.init(args=args, context=self.context)
        self.executor = make_executor(executor, self.context, threads)
        self.nodes: dict[str, Node] = {}
        self._thread: threading.Thread | None = None
        try:
            for spec in specs:
                fixed = {**spec.parameters, "use_sim_time": use_sim_time, **(overrides or {}).get(spec.name, {})}
                node = spec.load_class()(spec.name, namespace=namespace, context=self.context,
                                         parameter_overrides=[Parameter(k, value=v) for k, v in fixed.items()])
                self.add(node, spec.name)
        except BaseException:
            self.close()
            raise

    def add(self, node: Node, name: str | None = None) -> Node:
        self.nodes[name or node.get_name()] = node
        self.executor.add_node(node)
        return node

    def helper_node(self, name: str) -> Node:
        """A plain node in the graph's context (players, recorders, probes)."""
        return self.add(rclpy.create_node(name, context=self.context))

    def spin(self) -> None:
        self.executor.spin()

    def spin_in_background(self) -> None:
        self._thread = threading.Thread(target=self._spin_quietly, daemon=True)
        self._thread.start()

    def _spin_quietly(self) -> None:
        with contextlib.suppress(Exception):  # the executor is shut down under it at close()
            self.executor.spin()

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        for node in self.nodes.values():
            node.destroy_node()
        self.nodes.clear()
        if self.context.ok():
            rclpy.shutdown(context=self.context)
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def __enter__(self) -> NodeGraph:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
