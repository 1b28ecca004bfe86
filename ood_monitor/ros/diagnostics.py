"""/diagnostics publishing for every node: one DiagnosticStatus per node on a timer, built from the
node's StageStats plus node-specific key/values (backend, model, calibration state ...)."""
from __future__ import annotations

from collections.abc import Callable

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node

from ood_monitor.core.stage_stats import ERROR, OK, STALE, WARN, StageStats

LEVELS = {OK: DiagnosticStatus.OK, WARN: DiagnosticStatus.WARN, ERROR: DiagnosticStatus.ERROR,
          STALE: DiagnosticStatus.STALE}


def build_status(name: str, hardware_id: str, stats: StageStats, extra: dict[str, str],
                 fault: str = "") -> DiagnosticStatus:
    """`fault`, when not empty, overrides the level with ERROR and is the message (a node's bug)."""
    level, message = (ERROR, fault) if fault else stats.level()
    values = {**stats.values(), **extra}
    return DiagnosticStatus(
        level=LEVELS[level], name=name, message=message, hardware_id=hardware_id,
        values=[KeyValue(key=k, value=str(v)) for k, v in values.items()],
    )


class DiagnosticsPublisher:
    """Publishes the node's status every `period_s` on /diagnostics (absolute topic, as the aggregator
    expects). `extra` is called at each publication for node-specific values."""

    def __init__(self, node: Node, stats: StageStats, period_s: float = 1.0,
                 extra: Callable[[], dict[str, str]] | None = None,
                 fault: Callable[[], str] | None = None) -> None:
        self._node = node
        self._stats = stats
        self._extra = extra or dict
        self._fault = fault or str
        self._name = f"{node.get_namespace().rstrip('/')}/{node.get_name()}".lstrip("/")
        self._pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._timer = node.create_timer(period_s, self.publish)

    def publish(self) -> DiagnosticStatus:
        status = build_status(self._name, "ood_monitor", self._stats, self._extra(), self._fault())
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self._node.get_clock().now().to_msg()
        self._pub.publish(msg)
        return status
