"""Real rclpy over Fast DDS in one process: a private context, a MultiThreadedExecutor spinning in a
thread, and small helpers to collect messages and wait for conditions."""
from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

import rclpy
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy


class RosHarness:
    def __init__(self, threads: int = 4, domain_id: int | None = None) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.executor = MultiThreadedExecutor(num_threads=threads, context=self.context)
        self.nodes: list[Node] = []
        self._executors: list = []
        self._threads: list[threading.Thread] = []
        self.probe = self.add(Node("test_probe", context=self.context))
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        with contextlib.suppress(Exception):  # the executor shut down while spinning
            self.executor.spin()

    def add(self, node: Node) -> Node:
        self.nodes.append(node)
        self.executor.add_node(node)
        return node

    def add_isolated(self, node: Node) -> Node:
        """Spin `node` on an executor of its own, as a separate process would: the probe's callbacks
        never delay its callbacks."""
        executor = SingleThreadedExecutor(context=self.context)
        executor.add_node(node)
        self.nodes.append(node)
        self._executors.append(executor)
        thread = threading.Thread(target=self._spin_quietly, args=(executor,), daemon=True)
        thread.start()
        self._threads.append(thread)
        return node

    @staticmethod
    def _spin_quietly(executor) -> None:
        with contextlib.suppress(Exception):  # shut down under it at close()
            executor.spin()

    def collect(self, msg_type, topic: str, qos: QoSProfile | None = None,
                callback: Callable | None = None) -> list:
        """Subscribe on the probe node; returns the list that fills with received messages."""
        received: list = []

        def on_msg(msg) -> None:
            received.append(msg)
            if callback is not None:
                callback(msg)

        qos = qos or QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.probe.create_subscription(msg_type, topic, on_msg, qos)
        return received

    def publisher(self, msg_type, topic: str, qos: QoSProfile | None = None):
        return self.probe.create_publisher(msg_type, topic, qos or QoSProfile(depth=100))

    def wait_for_subscribers(self, pub, count: int = 1, timeout: float = 10.0) -> None:
        assert wait_until(lambda: pub.get_subscription_count() >= count, timeout), \
            f"no subscriber on {pub.topic_name} after {timeout} s"

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        for executor in self._executors:
            executor.shutdown(timeout_sec=2.0)
        for thread in self._threads:
            thread.join(timeout=5.0)
        for node in self.nodes:
            node.destroy_node()
        rclpy.shutdown(context=self.context)
        self._thread.join(timeout=5.0)

    def __enter__(self) -> RosHarness:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, period: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(period)
    return predicate()
