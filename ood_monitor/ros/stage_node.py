"""Base of every ood_monitor node: a lifecycle node that also runs on its own.

With `autostart: true` (the default) the node configures and activates itself at start, so `ros2 run`,
launch files and `ood-monitor run` need nothing else. With `autostart: false` it waits for
nav2_lifecycle_manager (or `ros2 lifecycle set`): configure loads models and builds engines (the
subclass's `setup`), activate starts processing, deactivate pauses it, cleanup frees it all.

Parameters named in a node's TUNABLE collection can be changed at run time with `ros2 param set`; the
value is checked against the parameter's descriptor (LIMITS: range, choices — see ros/params.py), applied
through `retune`, and a bad one is refused with a reason. Other parameters are read at configure:
changing them on a configured node is refused with a message saying how to reconfigure. `autostart` is
read-only: it takes effect at process start.

Callbacks refuse malformed input with a reason (`_reject`, counted as `rejected`). An exception no
validation anticipated is a bug: `_unexpected` keeps the node alive but counts it separately
(`unexpected_exceptions` on /diagnostics, level ERROR, with the traceback in the log) so tests and
operators can tell "bad input, refused" from "our code broke".
"""
from __future__ import annotations

import gc
import threading
import traceback
from collections.abc import Callable, Collection
from typing import Any, ClassVar

from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import QoSProfile

from ood_monitor.core.stage_stats import StageStats
from ood_monitor.ros.diagnostics import DiagnosticsPublisher
from ood_monitor.ros.node_main import START_ERRORS
from ood_monitor.ros.params import Limits, check_choice, declare_parameters
from ood_monitor.ros.qos import output_qos


def stamp_ns(header) -> int:
    """A message header's stamp in integer nanoseconds: the key outputs and inputs are matched by."""
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def stage_parameters(output_depth: int = 5, stale_timeout_s: float = 2.0,
                     outputs: str = "the outputs") -> dict[str, tuple[Any, str]]:
    """The output QoS and health parameters every node declares (defaults differ per node)."""
    return {
        "output_qos": ("reliable", f"reliability of {outputs}: reliable | best_effort"),
        "output_depth": (output_depth, f"history depth of {outputs}"),
        "diagnostics_period_s": (1.0, "period of /diagnostics publications"),
        "stale_timeout_s": (stale_timeout_s, "no input for this long reports STALE on /diagnostics"),
    }


LIFECYCLE_PARAMETERS = {
    "autostart": (True, "configure and activate at start; false: wait for a lifecycle manager"),
}
STAGE_LIMITS = {
    "output_qos": Limits(choices=("reliable", "best_effort")),
    "output_depth": Limits(1, 1000),
    "diagnostics_period_s": Limits(0.01, 3600.0),
    "stale_timeout_s": Limits(0.01, 3600.0),
    "autostart": Limits(read_only=True),
}


WORKER_STOP_TIMEOUT_S = 1.5  # lifecycle cleanup: let a frame in progress finish before the worker is replaced
# at exit the process ends (os._exit) right after destroy_node, so a frame still in progress is not waited for
# long: ros2 launch escalates to SIGTERM 5 s after SIGINT, and a niced node on a loaded CPU is slow to finish one
EXIT_WORKER_WAIT_S = 0.3


def freeze_long_lived() -> None:
    """Put everything alive after a node's set-up (modules, models, ROS entities) out of the cyclic garbage
    collector's reach. Why: a full collection walks every tracked object, and with torch, ONNX Runtime and
    rclpy loaded it stalled a node process for 140-280 ms once every one to five minutes (`bench pipeline`,
    2-core EPYC): several camera frames late at once. Once frozen, a full collection walks only what was
    made since. Reference counting still frees frozen objects; a cleanup unfreezes, so a reconfigured
    node's old models can be collected."""
    gc.collect()
    gc.freeze()


class StageNode(LifecycleNode):
    PARAMETERS: ClassVar[dict[str, tuple[Any, str]]] = {}
    # names changeable on a running node; a dict's values may add a check beyond LIMITS (name -> valid?)
    TUNABLE: ClassVar[Collection[str] | dict[str, Callable[[Any], bool] | None]] = ()
    LIMITS: ClassVar[dict[str, Limits]] = {}

    @classmethod
    def declared_parameters(cls) -> dict[str, tuple[Any, str]]:
        return {**cls.PARAMETERS, **LIFECYCLE_PARAMETERS}

    @classmethod
    def parameter_limits(cls) -> dict[str, Limits]:
        return {**STAGE_LIMITS, **cls.LIMITS}

    def __init__(self, node_name: str, **kwargs) -> None:
        self.unexpected_exceptions = 0
        self.last_unexpected = ""
        super().__init__(node_name, **kwargs)
        self.p = declare_parameters(self, self.declared_parameters(), self.parameter_limits())
        self.active = False
        self.configured = False
        self.start_error: Exception | None = None
        self._entities: tuple[list, list, list] = ([], [], [])
        self.add_on_set_parameters_callback(self._on_set_parameters)
        if self.p["autostart"]:
            self.trigger_configure()
            if self.start_error is not None:
                raise self.start_error
            self.trigger_activate()

    def setup(self, p: dict[str, Any]) -> None:
        """Load models, create publishers, subscriptions and timers (subclasses)."""

    def start_worker(self, target: Callable[[], None], name: str) -> None:
        """Run `target` on a daemon thread; it loops while `self.running` and waits on `self.cond` (both the
        node's), so the executor never blocks on heavy work."""
        self.running = True
        self.worker = threading.Thread(target=target, name=name, daemon=True)
        self.worker.start()

    def stop_worker(self, timeout_s: float = WORKER_STOP_TIMEOUT_S) -> None:
        """Clear `running`, wake the worker and join it (from any thread but the worker's own); a worker
        still busy after `timeout_s` is logged and left to finish its frame (or to die with the process)."""
        with self.cond:
            self.running = False
            self.cond.notify_all()
        worker = getattr(self, "worker", None)
        if worker is not None and worker.is_alive() and threading.current_thread() is not worker:
            worker.join(timeout=timeout_s)
            if worker.is_alive():
                self.get_logger().error(f"{worker.name} worker still running {timeout_s} s after stop")
        self.worker = None

    def start_health(self) -> QoSProfile:
        """In setup: the node's StageStats and its /diagnostics publisher, from the stage parameters;
        returns the output QoS."""
        self.stats = StageStats(stale_timeout_s=self.p["stale_timeout_s"])
        self.diagnostics = DiagnosticsPublisher(self, self.stats, self.p["diagnostics_period_s"],
                                                self._diagnostic_values, self._fault)
        return output_qos(self.p["output_qos"], self.p["output_depth"])

    def diagnostic_values(self) -> dict[str, str]:
        """Node-specific key/values of the /diagnostics status (subclasses)."""
        return {}

    def _diagnostic_values(self) -> dict[str, str]:
        return {"unexpected_exceptions": str(self.unexpected_exceptions), **self.diagnostic_values()}

    def condition(self) -> str:
        """A node-specific ERROR on /diagnostics while it lasts (subclasses), else ''."""
        return ""

    def _fault(self) -> str:
        """The ERROR message while an unexpected exception has happened or `condition` holds, else ''."""
        if not self.unexpected_exceptions:
            return self.condition()
        return f"{self.unexpected_exceptions} unexpected exception(s) in callbacks, last: {self.last_unexpected}"

    def retune(self, name: str, value: Any) -> None:
        """Apply a validated run-time change of a TUNABLE parameter (subclasses)."""

    def _reject(self, reason: str) -> None:
        """An input refused: counted on /diagnostics (subclasses keep their StageStats in self.stats),
        logged at most every 2 s, never raised."""
        self.stats.on_reject(reason)
        self.get_logger().warning(reason, throttle_duration_sec=2.0)

    def _unexpected(self, exc: BaseException, where: str) -> None:
        """The last-resort guard of a callback: the node keeps running, but an exception no validation
        anticipated is a bug, counted apart from rejected input and logged with its traceback."""
        self.unexpected_exceptions += 1
        self.last_unexpected = f"{where}: {type(exc).__name__}: {exc}"
        self.get_logger().error(f"unexpected exception in {where} (a bug, please report): "
                                f"{''.join(traceback.format_exception(exc))}", throttle_duration_sec=2.0)

    # ----------------------------------------------------------------------------- lifecycle

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        before = (list(self.publishers), list(self.subscriptions), list(self.timers))
        try:
            self.setup(self.p)
        except START_ERRORS as exc:
            self.start_error = exc
            self.get_logger().error(f"cannot configure: {exc}")
            self._destroy(self._created_since(before))
            return TransitionCallbackReturn.FAILURE
        self.start_error = None
        self._entities = self._created_since(before)
        self.configured = True
        freeze_long_lived()
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.active = True
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.active = False
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.active = False
        gc.unfreeze()  # the models let go here may sit in reference cycles: let the collector see them again
        self._destroy(self._entities)
        self._entities, self.configured = ([], [], []), False
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Finalized: stop processing and free publishers, subscriptions and timers."""
        self.active = False
        self._destroy(self._entities)
        self._entities, self.configured = ([], [], []), False
        return TransitionCallbackReturn.SUCCESS

    def create_subscription(self, msg_type, topic, callback, qos_profile, **kwargs):
        """Subscriptions deliver only while the node is active."""
        def gated(msg) -> None:
            if self.active:
                callback(msg)

        return super().create_subscription(msg_type, topic, gated, qos_profile, **kwargs)

    # ---------------------------------------------------------------------------- parameters

    def _on_set_parameters(self, params) -> SetParametersResult:
        """Runs after rclpy checked type, range and read-only against the descriptor."""
        limits = self.parameter_limits()
        checks = self.TUNABLE if isinstance(self.TUNABLE, dict) else {}
        for param in params:
            if param.name not in self.PARAMETERS:
                continue  # rclpy's own (use_sim_time) and autostart
            if self.configured and param.name not in self.TUNABLE:
                return SetParametersResult(successful=False, reason=(
                    f"{param.name} is read at configure: deactivate and clean up the node, set it, configure again "
                    f"(run-time tunable here: {', '.join(sorted(self.TUNABLE)) or 'none'})"))
            reason = check_choice(param.name, param.value, limits.get(param.name))
            valid = checks.get(param.name)
            if not reason and valid is not None and not valid(param.value):
                reason = f"invalid value for {param.name}: {param.value!r}"
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        for param in params:
            if param.name in self.PARAMETERS:
                self.p[param.name] = param.value
                if self.configured:
                    self.retune(param.name, param.value)
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------------------- helpers

    def _created_since(self, before: tuple[list, list, list]) -> tuple[list, list, list]:
        now = (self.publishers, self.subscriptions, self.timers)
        return tuple([e for e in current if e not in old] for current, old in zip(now, before, strict=True))

    def _destroy(self, entities: tuple[list, list, list]) -> None:
        pubs, subs, timers = entities
        for timer in timers:
            self.destroy_timer(timer)
        for sub in subs:
            self.destroy_subscription(sub)
        for pub in pubs:
            self.destroy_publisher(pub)
