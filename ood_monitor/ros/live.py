"""Running the node graph live for the demo and the pipeline benchmark: end-to-end latency by header
stamp, and the heavy stages (synthesis, analysis, Nav2 bridge) in a process of their own, where torch
must not starve the camera-rate stages of the GIL. `heavy_per_stage=True` gives synthesis and analysis a
process each, as `ros2 launch` runs every node; on 2 cores that was slower (docs/benchmarks-masks.md:
the two heavy processes' threads then compete with the detectors, where one process's GIL kept the heavy
work near one core)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HEAVY_STAGES = ("synthesize", "analysis", "nav")
HEAVY_PROCESSES = {"synthesize": "synthesis_stage", "analysis": "analysis_stage", "nav": "analysis_stage"}
HEAVY_NICE = 10  # the best-effort stages yield the CPU to the camera-rate detectors on a small machine
STAGE_OUTPUTS = {"/ood/image": "preprocess_node", "/ood/score/image": "vae_image_detector",
                 "/ood/score/flow": "vae_flow_detector", "/ood/synthesis": "synthesizer_node",
                 "/ood/anomaly": "analysis_node", "/ood/costmap": "nav_bridge_node"}
CAMERA_TOPIC = "/camera/image_raw"
LATENCY_TOPICS = {"/ood/image": "Image", "/ood/score/image": "OODScore", "/ood/score/flow": "OODScore",
                  "/ood/anomaly": "AnomalyMask"}  # outputs whose camera->output latency is measured


def latency_topic_classes() -> dict[str, type]:
    """LATENCY_TOPICS with their message classes (what LiveGraph subscribes)."""
    import sensor_msgs.msg

    import ood_msgs.msg

    return {t: getattr(ood_msgs.msg, kind, None) or getattr(sensor_msgs.msg, kind) for t, kind in LATENCY_TOPICS.items()}


def stamp_of(msg) -> int:
    """A stamped message's header stamp in nanoseconds (ros/stage_node.stamp_ns)."""
    from ood_monitor.ros.stage_node import stamp_ns

    return stamp_ns(msg.header)


class LatencyProbe:
    """Camera message published -> each output received, matched by header stamp (wall clock). Keeps
    (arrival time, latency) so latency can be followed over time; `max_pending` bounds the stamps kept
    for outputs that never come (a dropped frame), so a long run does not grow without limit."""

    def __init__(self, topics: list[str], max_pending: int = 4096) -> None:
        self.t0 = time.monotonic()
        self.sent: dict[int, float] = {}
        self.max_pending = max_pending
        self.samples: dict[str, list[tuple[float, float]]] = {t: [] for t in topics}

    def on_publish(self, topic: str, msg) -> None:
        if topic == CAMERA_TOPIC:
            self.sent[stamp_of(msg)] = time.monotonic()
            while len(self.sent) > self.max_pending:
                del self.sent[next(iter(self.sent))]

    def callback(self, topic: str):
        def record(msg) -> None:
            t = self.sent.get(stamp_of(msg))
            if t is not None:
                now = time.monotonic()
                self.samples[topic].append((now - self.t0, (now - t) * 1e3))
        return record

    def latencies(self, topic: str, start_s: float = 0.0, end_s: float = float("inf")) -> np.ndarray:
        """Latencies (ms) of outputs that arrived between start_s and end_s after the probe started."""
        return np.array([ms for t, ms in self.samples[topic] if start_s <= t < end_s], float)

    def percentiles(self) -> dict[str, dict[str, float]]:
        out = {}
        for topic in self.samples:
            values = self.latencies(topic)
            if values.size:
                p50, p95, p99 = np.percentile(values, [50, 95, 99])
                out[topic] = {"p50": float(p50), "p95": float(p95), "p99": float(p99), "n": int(values.size)}
        return out


def start_stages(params: Path, stages: list[str], nice: int = 0) -> subprocess.Popen:
    """`ood-monitor run` for these stages in a process of its own (its own session, for a clean SIGINT)."""
    return subprocess.Popen([sys.executable, "-m", "ood_monitor.cli.main", "run", "--params", str(params),
                             "--stages", ",".join(stages), "--nice", str(nice)], start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_for_publishers(node, topics: list[str], timeout_s: float = 120.0) -> bool:
    """Until every topic has a publisher (another process finished loading its models)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(node.count_publishers(t) for t in topics):
            return True
        time.sleep(0.5)
    return False


def stop_process(proc: subprocess.Popen | None) -> None:
    """SIGINT (clean shutdown of the nodes), SIGKILL after 15 s."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def node_figures(values: dict[str, str]) -> dict:
    """A node's counters and latency from the key/values of its /diagnostics status."""
    num = lambda k: float(values.get(k, "nan"))  # noqa: E731
    return {"received": int(num("received")), "processed": int(num("processed")),
            "dropped_upstream": int(num("dropped_upstream")), "rejected": int(num("rejected")),
            "input_rate_hz": num("input_rate_hz"),
            "latency_ms": {"p50": num("latency_p50_ms"), "p95": num("latency_p95_ms"), "p99": num("latency_p99_ms")}}


def stats_figures(stats) -> dict:
    """The same figures from an in-process node's StageStats."""
    return {"received": stats.received, "processed": stats.processed, "dropped_upstream": stats.dropped,
            "rejected": stats.rejected, "input_rate_hz": stats.rate_hz(), "latency_ms": stats.latency_percentiles()}


def last_statuses(msgs, names: list[str]) -> dict[str, dict]:
    """node name -> figures of its last status among DiagnosticArray messages."""
    last = {}
    for msg in msgs:
        for status in msg.status:
            name = status.name.rsplit("/", 1)[-1]
            if name in names:
                last[name] = {kv.key: kv.value for kv in status.values}
    return {name: node_figures(values) for name, values in last.items()}


def rss_mb(pid: int | None = None) -> float:
    """Resident memory of a process in MB from /proc (Linux); NaN where it cannot be read."""
    try:
        status = Path(f"/proc/{pid or os.getpid()}/status").read_text()
    except OSError:
        return float("nan")
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


class LiveGraph:
    """The whole graph as deployed, fed from a bag: heavy stages in child processes; camera-rate stages
    in this process (NodeGraph, their StageStats readable directly) or, with `camera_in_process=False`,
    in a second child process, as on a robot where the camera driver is a process of its own. A helper
    node `io` carries the bag player on the camera topics, latency probes on `latency_topics`
    ({topic: message class}) and a /diagnostics listener for the nodes in other processes."""

    def __init__(self, params: Path, stages: str, bag: Path, playback, latency_topics: dict[str, type],
                 io_name: str = "ood_live_io", camera_in_process: bool = True, heavy_per_stage: bool = False) -> None:
        from ood_monitor.pipeline import nodes_for

        specs = nodes_for(stages)
        self.params, self.bag, self.playback, self.io_name = params, bag, playback, io_name
        self.latency_topics = latency_topics
        camera = [s for s in specs if s.stage not in HEAVY_STAGES]
        heavy = [s for s in specs if s.stage in HEAVY_STAGES]
        groups = {} if camera_in_process else {"camera_stages": camera}
        for spec in heavy:  # the Nav2 bridge is light: it shares the analysis' process
            groups.setdefault(HEAVY_PROCESSES[spec.stage] if heavy_per_stage else "heavy_stages", []).append(spec)
        self.process_specs = {name: group for name, group in groups.items() if group}
        self.in_process_specs = camera if camera_in_process else []
        self.remote_names = [s.name for group in self.process_specs.values() for s in group]
        self.heavy_names = [s.name for s in heavy]
        self.probe = LatencyProbe(list(latency_topics))
        self.procs: dict[str, subprocess.Popen] = {}
        self.diagnostics: list = []
        self.stop = threading.Event()

    def __enter__(self) -> LiveGraph:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        from ood_monitor.ros.bag_bridge import BagPlayer
        from ood_monitor.ros.graph import NodeGraph
        from ood_monitor.ros.stage_node import freeze_long_lived

        for name, group in self.process_specs.items():
            nice = 0 if name == "camera_stages" else HEAVY_NICE
            self.procs[name] = start_stages(self.params, list(dict.fromkeys(s.stage for s in group)), nice)
        self.graph = NodeGraph(self.in_process_specs, self.params).__enter__()
        self.io = self.graph.helper_node(self.io_name)
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        for topic, cls in self.latency_topics.items():
            self.io.create_subscription(cls, topic, self.probe.callback(topic), reliable)
        if self.remote_names:
            self.io.create_subscription(DiagnosticArray, "/diagnostics", self._keep_diagnostics, reliable)
        self.playback.on_publish = self.probe.on_publish
        self.player = BagPlayer(self.io, self.bag, self.playback)
        self.graph.spin_in_background()
        if self.procs:  # the other processes are loading their models
            wait_for_publishers(self.io, [t for t, name in STAGE_OUTPUTS.items() if name in self.remote_names])
            time.sleep(2.0)
        freeze_long_lived()  # as the nodes do: the player and the probes must not stall on a full collection
        return self

    def _keep_diagnostics(self, msg) -> None:
        self.diagnostics = [*self.diagnostics[-200:], msg]

    def play(self) -> threading.Thread:
        """Start the bag player in a thread (stopped by `self.stop` or when the bag ends)."""
        thread = threading.Thread(target=self.player.play, args=(self.stop,), daemon=True)
        self.probe.t0 = time.monotonic()
        thread.start()
        return thread

    def rss_mb(self) -> dict[str, float]:
        """Resident memory of each process of the graph."""
        here = {"camera_stages": rss_mb()} if self.in_process_specs else {}
        return {**here, **{name: rss_mb(proc.pid) for name, proc in self.procs.items()}}

    def node_figures(self) -> dict[str, dict]:
        """Counters and latency of every node: StageStats here, last /diagnostics of the others."""
        here = {name: stats_figures(node.stats) for name, node in self.graph.nodes.items()
                if getattr(node, "stats", None) is not None}
        return {**here, **last_statuses(self.diagnostics, self.remote_names)}

    def stop_processes(self) -> None:
        for proc in self.procs.values():
            stop_process(proc)

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.stop_processes()
        self.graph.__exit__(*exc)
