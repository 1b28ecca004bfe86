"""Parameter declaration from one table of defaults per node, so config/default.yaml, the README and
the launch-file tests can all be checked against what a node really declares.

Limits travel as ROS parameter descriptors, where `ros2 param describe`, rqt and a lifecycle manager see
them and rclpy enforces them on every set and on the start-up values (a parameter file with
`steps: 0` makes the node refuse to start with the reason): a numeric range becomes a
FloatingPointRange / IntegerRange, a set of allowed strings is checked by `check_choice` and listed in
`additional_constraints`, and a parameter that only takes effect at process start is `read_only`.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node

OPEN = sys.float_info.epsilon  # the lower end of "> 0" ranges (a descriptor range is closed)


@dataclass(frozen=True)
class Limits:
    """What a parameter accepts: a closed numeric range, a set of choices, read-only after start."""

    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    read_only: bool = False

    def describe(self) -> str:
        parts = []
        if self.low is not None or self.high is not None:
            parts.append(f"range [{_fmt(self.low, '-inf')}, {_fmt(self.high, 'inf')}]")
        if self.choices:
            parts.append("one of " + " | ".join(self.choices))
        if self.read_only:
            parts.append("read-only: takes effect at process start")
        return "; ".join(parts)


def _fmt(value: float | None, missing: str) -> str:
    return missing if value is None else f"{value:g}"


def positive(high: float | None = None) -> Limits:
    """> 0 (as a closed range from the smallest positive step)."""
    return Limits(OPEN, high)


def at_least(low: float, high: float | None = None) -> Limits:
    return Limits(low, high)


def one_of(*choices: str) -> Limits:
    return Limits(choices=tuple(choices))


def descriptor(description: str, default: Any, limits: Limits | None) -> ParameterDescriptor:
    d = ParameterDescriptor(description=description)
    if limits is None:
        return d
    d.read_only = limits.read_only
    d.additional_constraints = limits.describe()
    if limits.low is not None or limits.high is not None:
        if isinstance(default, bool):
            raise TypeError("a boolean parameter has no range")
        if isinstance(default, int):
            lo = -(2**63) if limits.low is None else math.ceil(limits.low)
            hi = 2**63 - 1 if limits.high is None else math.floor(limits.high)
            d.integer_range = [IntegerRange(from_value=lo, to_value=hi, step=0)]
        else:
            lo = -sys.float_info.max if limits.low is None else float(limits.low)
            hi = sys.float_info.max if limits.high is None else float(limits.high)
            d.floating_point_range = [FloatingPointRange(from_value=lo, to_value=hi, step=0.0)]
    return d


def check_choice(name: str, value: Any, limits: Limits | None) -> str:
    """'' when `value` is allowed, else the reason (ranges and read-only are rclpy's to check)."""
    if limits is not None and limits.choices and value not in limits.choices:
        return f"invalid value for {name}: {value!r}; set parameter {name} to one of: {', '.join(limits.choices)}"
    return ""


def declare_parameters(node: Node, spec: dict[str, tuple[Any, str]],
                       limits: dict[str, Limits] | None = None) -> dict[str, Any]:
    """Declare every `name: (default, description)` with its descriptor and return the values in effect;
    a start-up value outside its choices raises ValueError (rclpy raises for ranges and types)."""
    limits = limits or {}
    values = {}
    for name, (default, description) in spec.items():
        param = node.declare_parameter(name, default, descriptor(description, default, limits.get(name)))
        reason = check_choice(name, param.value, limits.get(name))
        if reason:
            raise ValueError(reason)
        values[name] = param.value
    return values
