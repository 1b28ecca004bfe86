"""QoS profiles: sensor-data QoS for every input (a slow stage drops stale frames, never queues) and a
parameterised profile for outputs."""
from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

OUTPUT_RELIABILITY = {"reliable": ReliabilityPolicy.RELIABLE, "best_effort": ReliabilityPolicy.BEST_EFFORT}


def sensor_qos() -> QoSProfile:
    """Best effort, keep last 1, volatile: matches any camera driver and never builds a backlog."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=1,
        reliability=ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.VOLATILE,
    )


def output_qos(reliability: str = "reliable", depth: int = 5) -> QoSProfile:
    """Output profile from the `output_qos` / `output_depth` parameters."""
    if reliability not in OUTPUT_RELIABILITY:
        raise ValueError(f"output_qos must be one of {sorted(OUTPUT_RELIABILITY)}, got {reliability!r}")
    if depth < 1:
        raise ValueError(f"output_depth must be >= 1, got {depth}")
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=OUTPUT_RELIABILITY[reliability],
        durability=DurabilityPolicy.VOLATILE,
    )
