"""A node graph in one process: the pipeline's nodes (ood_monitor.pipeline specs) created in a private
rclpy context from a ROS parameter file, spun by a MultiThreadedExecutor. `ood-monitor run`, the demo
and the pipeline benchmark all start the nodes this way, so they run what a launch file runs."""
from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

import rclpy
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter

from ood_monitor.pipeline import NodeSpec


class NodeGraph:
    def __init__(self, specs: list[NodeSpec], params_file: str | Path | None = None, namespace: str = "",
                 use_sim_time: bool = False, threads: int = 4,
                 overrides: dict[str, dict[str, Any]] | None = None) -> None:
        if params_file is not None and not Path(params_file).is_file():
            raise FileNotFoundError(f"parameter file not found: {params_file}")
        self.context = rclpy.Context()
        args = ["--ros-args", "--params-file", str(params_file)] if params_file else []
        rclpy.init(args=args, context=self.context)
        self.executor = MultiThreadedExecutor(num_threads=threads, context=self.context)
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
