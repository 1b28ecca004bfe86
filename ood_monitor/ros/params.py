"""Parameter declaration from one table of defaults per node, so config/default.yaml, the README and
the launch-file tests can all be checked against what a node really declares."""
from __future__ import annotations

from typing import Any

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node


def declare_parameters(node: Node, spec: dict[str, tuple[Any, str]]) -> dict[str, Any]:
    """Declare every `name: (default, description)` and return the values in effect."""
    values = {}
    for name, (default, description) in spec.items():
        param = node.declare_parameter(name, default, ParameterDescriptor(description=description))
        values[name] = param.value
    return values
