"""The launch files run for real, the way a robot runs them: the package colcon-built into a scratch
workspace (once per test session), each launch file started by launch.LaunchService (what `ros2 launch`
runs) from a working directory outside the repository, the demo test bag played into it, the outputs and
/diagnostics observed with rclpy, and a terminal's Ctrl-C (SIGINT to the process group) to end it.

Needs launch / launch_ros, which are not on PyPI: their upstream sources are vendored beside the
repository at ../shared/vendor/ros2-launch (CI has them; OOD_ROS2_LAUNCH_DIR overrides the place). In a
clone without them these tests skip, saying so."""
from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from msg_contracts import check_anomaly_mask, check_camera_view, check_ood_score, check_synthesis
from nav_msgs.msg import OccupancyGrid
from rcl_interfaces.srv import GetParameters
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Float32

from ood_monitor.core.diffusion.synthesizer import REALTIME_SAMPLING
from ood_msgs.msg import AnomalyMask, OODScore, SynthesisResult

from ros_harness import RosHarness, wait_until

try:  # nav_bridge_node publishes nav2_msgs/SpeedLimit where it imports, else std_msgs/Float32
    from nav2_msgs.msg import SpeedLimit
except ImportError:
    SpeedLimit = None

pytestmark = [pytest.mark.ros, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
VENDOR_ENV = "OOD_ROS2_LAUNCH_DIR"
RUNNER = Path(__file__).resolve().parent / "launch_runner.py"
NODE_NAMES = ("preprocess_node", "vae_image_detector", "vae_flow_detector", "synthesizer_node", "analysis_node",
              "nav_bridge_node")
START_TIMEOUT_S = 240  # six Python processes importing torch on a loaded 2-core machine
OUTPUT_TIMEOUT_S = 180  # CPU synthesis, then analysis, then the Nav2 bridge


def vendor_dir() -> Path:
    return Path(os.environ.get(VENDOR_ENV) or ROOT.parent / "shared" / "vendor" / "ros2-launch").resolve()


def skip_reason() -> str:
    vendor = vendor_dir()
    if not (vendor / "python" / "launch").is_dir() or not (vendor / "msg" / "composition_interfaces").is_dir():
        return (f"launch/launch_ros sources not found at {vendor} (a clone without ../shared/vendor/ros2-launch; "
                f"set {VENDOR_ENV} to run the real launch tests)")
    try:
        import osrf_pycommon  # noqa: F401  (launch's PyPI dependency)
    except ImportError:
        return "osrf-pycommon is not installed (pip install -c constraints.txt osrf-pycommon)"
    return ""


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> dict:
    """colcon build of composition_interfaces (launch_ros imports it), ood_msgs and ood_monitor into a
    scratch workspace, as on a robot; returns the environment of `. install/setup.sh`."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    # OOD_LAUNCH_TEST_WS: build there instead (colcon is incremental: quick reruns while developing)
    ws = Path(os.environ.get("OOD_LAUNCH_TEST_WS") or tmp_path_factory.mktemp("colcon_ws"))
    ws.mkdir(parents=True, exist_ok=True)
    vendor = vendor_dir()
    cmd = ["colcon", "--log-base", str(ws / "log"), "build", "--build-base", str(ws / "build"),
           "--install-base", str(ws / "install"), "--symlink-install",
           "--paths", str(vendor / "msg" / "composition_interfaces"), str(ROOT / "ood_msgs"), str(ROOT),
           "--cmake-args", "-DBUILD_TESTING=OFF", f"-DPython3_EXECUTABLE={sys.executable}"]
    build = subprocess.run(cmd, cwd=ws, capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, f"colcon build failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}"
    dump = subprocess.run(["bash", "-c", f". {ws / 'install' / 'setup.sh'} && env -0"], capture_output=True,
                          timeout=60, check=True, env=os.environ)
    env = dict(item.split("=", 1) for item in dump.stdout.decode().split("\0") if "=" in item)
    env["PYTHONPATH"] = os.pathsep.join([str(vendor / "python"), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    env["RCUTILS_COLORIZED_OUTPUT"] = "0"
    # a robot's PATH: no development venv offering `ood-monitor` (the install has it in lib/ood_monitor only)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and not (Path(p) / "ood-monitor").exists())
    share = ws / "install" / "ood_monitor" / "share" / "ood_monitor"
    assert (share / "models" / "vae_image" / "config.json").is_file(), "colcon did not install the models"
    return {"env": env, "share": share, "ws": ws}


class Launched:
    """One `ros2 launch` run: started in its own process group from `cwd`, its log in a file."""

    def __init__(self, workspace: dict, launch_file: str, cwd: Path, *arguments: str) -> None:
        self.log_path = cwd / f"{launch_file}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(RUNNER), str(workspace["share"] / "launch" / launch_file), *arguments],
            cwd=cwd, env=workspace["env"], stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def ctrl_c(self, timeout: float = 60.0) -> int:
        """SIGINT to the process group, as a terminal's Ctrl-C; waits for launch to end."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        return self.wait(timeout)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            pytest.fail(f"launch did not end within {timeout} s:\n{self.log()[-4000:]}")
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def started_pids(log: str) -> dict[str, int]:
    """process label (e.g. analysis_node-5) -> pid, from launch's 'process started' lines."""
    return {m[0]: int(m[1]) for m in re.findall(r"\[INFO\] \[([\w.-]+)\]: process started with pid \[(\d+)\]", log)}


def assert_clean_shutdown(log: str, rc: int, names: tuple[str, ...]) -> None:
    """Every process started, named after its node, exited by itself with status 0 within launch's
    sigterm_timeout (5 s, launch's default) of the SIGINT, and none is left running."""
    pids = started_pids(log)
    labels = {label.rsplit("-", 1)[0] for label in pids}
    assert set(names) <= labels, f"processes started: {sorted(labels)}; expected {names}"
    assert not any(label.startswith("nice") for label in labels), "a process is named after its `nice` prefix"
    assert "escalating to 'SIGTERM'" not in log, "a node did not exit within 5 s of SIGINT:\n" + log[-4000:]
    assert "process has died" not in log, "a node exited with an error:\n" + log[-4000:]
    for label, pid in pids.items():
        assert f"process has finished cleanly [pid {pid}]" in log, f"{label} did not finish cleanly"
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # no process left behind
    assert "Traceback" not in log, log[-4000:]
    assert rc == 0


def play(ros: RosHarness, bag: Path, frames: int, rate: float = 1.0) -> list[int]:
    """Play the first `frames` camera frames of the demo bag (images + camera_info); returns their stamps."""
    from ood_monitor.ros.bag_bridge import BagPlayer, PlaybackConfig

    stamps: list[int] = []
    stop = threading.Event()

    def on_publish(topic: str, msg) -> None:
        if topic.endswith("image_raw"):
            stamps.append(msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec)
            if len(stamps) >= frames:
                stop.set()

    cfg = PlaybackConfig(rate=rate, topics=["/camera/image_raw", "/camera/camera_info"], on_publish=on_publish)
    BagPlayer(ros.probe, bag, cfg).play(stop)
    return stamps


def bag_image_stamps(bag: Path) -> set[int]:
    """Header stamps of every camera image in a bag."""
    from rclpy.serialization import deserialize_message

    from ood_monitor.ros.bag_bridge import open_reader

    reader = open_reader(bag)
    try:
        conns = [c for c in reader.connections if c.topic.endswith("image_raw")]
        return {stamp_of(deserialize_message(bytes(raw), Image)) for _, _, raw in reader.messages(connections=conns)}
    finally:
        reader.close()


def stamp_of(msg) -> int:
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


def statuses(diags: list, name: str) -> list[DiagnosticStatus]:
    return [s for d in diags for s in d.status if s.name == name]


def values(status: DiagnosticStatus) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


def wait_for_nodes(launched: Launched, diags: list, names: tuple[str, ...]) -> None:
    def all_up() -> bool:
        assert launched.proc.poll() is None, "launch ended early:\n" + launched.log()[-4000:]
        return all(statuses(diags, n) for n in names)

    assert wait_until(all_up, START_TIMEOUT_S, period=0.5), \
        f"not every node reported on /diagnostics within {START_TIMEOUT_S} s:\n{launched.log()[-4000:]}"


@pytest.fixture
def cwd(tmp_path) -> Path:
    """A working directory outside the repository: nothing may be found relative to the source tree."""
    path = tmp_path / "elsewhere"
    path.mkdir()
    assert ROOT not in path.parents
    return path


# ------------------------------------------------------------------------------------ ood_monitor.launch.py

OUTPUTS = {
    "ood/image": Image, "ood/flow": Image, "ood/camera_info": CameraInfo, "ood/score/image": OODScore,
    "ood/score/flow": OODScore, "ood/synthesis": SynthesisResult, "ood/anomaly": AnomalyMask,
    "ood/anomaly/mask": Image, "ood/anomaly/confidence": Image, "ood/obstacles": PointCloud2,
    "ood/costmap": OccupancyGrid, "ood/speed_limit": SpeedLimit or Float32,
}


def test_ood_monitor_launch_runs_the_graph_on_the_demo_bag(workspace, demo_dataset, cwd):
    share = workspace["share"]
    with RosHarness() as ros:
        got = {topic: ros.collect(t, topic) for topic, t in OUTPUTS.items()}
        diags = ros.collect(DiagnosticArray, "/diagnostics")
        launched = Launched(workspace, "ood_monitor.launch.py", cwd)
        try:
            wait_for_nodes(launched, diags, NODE_NAMES)
            stamps = set(play(ros, demo_dataset / "bags" / "test", frames=45))
            assert len(stamps) >= 45  # the player may finish the frame in flight after the stop

            def all_outputs() -> bool:
                assert launched.proc.poll() is None, "launch ended early:\n" + launched.log()[-4000:]
                return all(got.values())

            if not wait_until(all_outputs, OUTPUT_TIMEOUT_S / 2, period=0.5):
                # DDS discovery between the six processes can lag their /diagnostics on a loaded machine, so a
                # subscription may match only after the 45 frames went by (seen once in CI: no ood/score/image,
                # every other output there); a camera keeps streaming, so play them once more
                stamps |= set(play(ros, demo_dataset / "bags" / "test", frames=45))
            assert wait_until(all_outputs, OUTPUT_TIMEOUT_S / 2, period=0.5), \
                f"no output on {[t for t, m in got.items() if not m]}:\n{launched.log()[-4000:]}"
            wait_until(lambda: False, 2.5)  # two more /diagnostics periods
        finally:
            rc = launched.ctrl_c() if launched.proc.poll() is None else launched.proc.returncode
            launched.kill()
        log = launched.log()

    # every output carries the stamp of a camera frame that was played
    for topic, msgs in got.items():
        if topic != "ood/speed_limit" or SpeedLimit:  # std_msgs/Float32 (without nav2_msgs) has no header
            foreign = [stamp_of(m) for m in msgs if stamp_of(m) not in stamps]
            assert not foreign, f"{topic} published stamps {foreign[:3]} that no input had"
    # ... and keeps its contract (ood_msgs/msg/*.msg)
    info = got["ood/camera_info"][0]
    prepared = (info.width, info.height)
    assert prepared == (128, 128)
    assert all((m.encoding, m.width, m.height) == ("rgb8", 128, 128) for m in got["ood/image"])
    assert all((m.encoding, m.width, m.height) == ("32FC3", 128, 128) for m in got["ood/flow"])
    for detector in ("image", "flow"):
        for m in got[f"ood/score/{detector}"]:
            check_ood_score(m, detector)
    for m in got["ood/synthesis"]:
        check_synthesis(m, steps=REALTIME_SAMPLING["steps"])  # the shipped sampling: realtime
    for m in got["ood/anomaly"]:
        check_anomaly_mask(m, prepared)
    dataset = yaml.safe_load((demo_dataset / "dataset.json").read_text())
    for topic in ("ood/anomaly/mask", "ood/anomaly/confidence"):
        for m in got[topic]:
            check_camera_view(m, (dataset["width"], dataset["height"]))
    percent = [m.speed_limit if SpeedLimit else m.data for m in got["ood/speed_limit"]]
    assert all(math.isfinite(p) and 0.0 <= p <= 100.0 for p in percent)

    # every node reported OK while it worked, with the shipped models from the installed share directory
    for name in NODE_NAMES:
        seen = statuses(diags, name)
        assert all(values(s)["unexpected_exceptions"] == "0" for s in seen), name
        assert not [s for s in seen if s.level == DiagnosticStatus.ERROR], f"{name} reported ERROR"
        assert any(s.level == DiagnosticStatus.OK and int(values(s)["processed"]) > 0 for s in seen), \
            f"{name} never reported OK after processing: {[s.message for s in seen][-5:]}"
    last = {name: values(statuses(diags, name)[-1]) for name in NODE_NAMES}
    for name, folder in (("vae_image_detector", "vae_image"), ("vae_flow_detector", "vae_flow"),
                         ("synthesizer_node", "latent_dit")):
        assert last[name]["model"] == str(share / "models" / folder)
    assert last["analysis_node"]["models_dir"] == str(share / "models")
    assert last["analysis_node"]["features"] == f"dcae ({share / 'models' / 'dcae'})"
    assert str(share / "models" / "analysis_nominal") in last["analysis_node"]["nominal_stats"]

    assert_clean_shutdown(log, rc, NODE_NAMES)
    assert "random conv" not in log


# ---------------------------------------------------------------------------------------- jetson.launch.py

def test_jetson_launch_without_tensorrt_fails_fast_with_one_line(workspace, cwd):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorRT is installed here: the Jetson launch would run")
    launched = Launched(workspace, "jetson.launch.py", cwd, "stages:=detect")
    rc = launched.wait(START_TIMEOUT_S)  # ends by itself: a required node exited
    log = launched.log()
    lines = [line for line in log.splitlines() if "cannot start:" in line]
    assert {re.search(r"\[(\w+)\] cannot start", line)[1] for line in lines} <= {"vae_detector_node"} and lines
    assert all("tensorrt" in line and "set parameter backend" in line for line in lines), lines
    assert "Traceback" not in log and "exit code 1" in log
    for pid in started_pids(log).values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert rc == 0  # launch itself ran correctly; the detectors' status 1 is in the log


# ---------------------------------------------------------------------------------------- replay.launch.py

def test_replay_launch_plays_the_bag_on_sim_time(workspace, demo_dataset, cwd):
    """replay.launch.py starts `ood-monitor replay` from the install's lib/ood_monitor (not on PATH in a
    colcon workspace) with /clock, and the nodes on sim time score the bag's frames."""
    names = ("preprocess_node", "vae_image_detector", "vae_flow_detector")
    with RosHarness() as ros:
        scores = {d: ros.collect(OODScore, f"ood/score/{d}") for d in ("image", "flow")}
        diags = ros.collect(DiagnosticArray, "/diagnostics")
        launched = Launched(workspace, "replay.launch.py", cwd, f"bag:={demo_dataset / 'bags' / 'test'}",
                            "stages:=preprocess,detect", "rate:=3.0")
        try:
            wait_for_nodes(launched, diags, names)

            def player_done() -> bool:  # the bag played to its end and the player exited by itself
                pid = next((p for label, p in started_pids(launched.log()).items() if label.startswith("ood_replay")),
                           None)
                return launched.proc.poll() is not None or f"process has finished cleanly [pid {pid}]" in launched.log()

            assert wait_until(player_done, OUTPUT_TIMEOUT_S, period=0.5), launched.log()[-4000:]
            wait_until(lambda: all(len(s) >= 5 for s in scores.values()), 30)
        finally:
            rc = launched.ctrl_c() if launched.proc.poll() is None else launched.proc.returncode
            launched.kill()
        log = launched.log()
    assert "replaying" in log, log[-3000:]
    played = bag_image_stamps(demo_dataset / "bags" / "test")
    for detector, msgs in scores.items():
        assert len(msgs) >= 5, f"ood/score/{detector}: {len(msgs)} scores"
        assert {stamp_of(m) for m in msgs} <= played
        for m in msgs:
            check_ood_score(m, detector)
    assert_clean_shutdown(log, rc, (*names, "ood_replay"))


# ----------------------------------------------------------------------- parameter file vs launch arguments

def get_parameter(ros: RosHarness, node: str, name: str):
    client = ros.probe.create_client(GetParameters, f"/{node}/get_parameters")
    assert client.wait_for_service(timeout_sec=START_TIMEOUT_S), f"no /{node}/get_parameters"
    future = client.call_async(GetParameters.Request(names=[name]))
    assert wait_until(future.done, 30)
    return future.result().values[0].string_value


def test_topic_arguments_override_the_parameter_file_only_when_given(workspace, cwd):
    params = yaml.safe_load((ROOT / "config" / "default.yaml").read_text())
    section = params["/**/preprocess_node"]["ros__parameters"]
    section.update(image_topic="my_cam/image", camera_info_topic="my_cam/info", transport="compressed")
    user_file = cwd / "user.yaml"
    user_file.write_text(yaml.safe_dump({"/**/preprocess_node": {"ros__parameters": section}}))
    with RosHarness() as ros:
        for arguments, expected in (((), ("my_cam/image", "my_cam/info", "compressed")),
                                    (("image_topic:=front/image", "transport:=raw"),
                                     ("front/image", "my_cam/info", "raw"))):
            launched = Launched(workspace, "ood_monitor.launch.py", cwd, "stages:=preprocess",
                                f"params_file:={user_file}", *arguments)
            try:
                got = tuple(get_parameter(ros, "preprocess_node", n)
                            for n in ("image_topic", "camera_info_topic", "transport"))
            finally:
                rc = launched.ctrl_c()
            assert got == expected, f"arguments {arguments}: {got}"
            assert_clean_shutdown(launched.log(), rc, ("preprocess_node",))
