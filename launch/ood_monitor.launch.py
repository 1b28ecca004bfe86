"""ros2 launch ood_monitor ood_monitor.launch.py [namespace:=front] [image_topic:=/cam/image_raw] ...

Starts the ood_monitor node graph (ood_monitor.pipeline.NODES) with one parameter file (and an optional
overlay). The topic arguments override the parameter file only when given: left empty, a user's own
params_file decides. Every node is required: one that exits (a missing model, TensorRT unavailable ...)
shuts the whole launch down, so a monitor never runs with a part silently missing."""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from ood_monitor.pipeline import nodes_for

SHARE = get_package_share_directory("ood_monitor")
BACKEND_NODES = ("vae_detector_node",)  # nodes that take the `backend` parameter
BEST_EFFORT_STAGES = ("synthesize", "analysis")  # run at lower CPU priority (heavy_nice) on small CPUs
TOPIC_ARGUMENTS = {  # launch argument -> the nodes whose parameter of that name it overrides (when given)
    "image_topic": ("preprocess_node",),
    "transport": ("preprocess_node",),
    "camera_info_topic": ("preprocess_node", "analysis_node"),  # nav_bridge reads ood/camera_info (AnomalyMask size)
}


def make_nodes(context):
    arg = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    use_sim_time = arg("use_sim_time").lower() in ("true", "1")
    nodes = []
    for spec in nodes_for(arg("stages")):
        overrides = {**spec.parameters, "use_sim_time": use_sim_time}
        for name, targets in TOPIC_ARGUMENTS.items():
            if spec.name in targets and arg(name):
                overrides[name] = arg(name)
        if spec.executable in BACKEND_NODES and arg("backend"):
            overrides["backend"] = arg("backend")
        files = [arg("params_file")] + ([arg("overlay_params_file")] if arg("overlay_params_file") else [])
        nice = int(arg("heavy_nice") or 0) if spec.stage in BEST_EFFORT_STAGES else 0
        nodes.append(Node(package="ood_monitor", executable=spec.executable, name=spec.name,
                          exec_name=spec.name,  # the log names the node, not the `nice` prefix
                          namespace=arg("namespace"), parameters=[*files, overrides],
                          prefix=f"nice -n {nice}" if nice else None, output="screen", emulate_tty=True,
                          on_exit=Shutdown(reason=f"{spec.name} exited")))
    return nodes


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("namespace", default_value="", description="namespace of every node (one per camera)"),
        DeclareLaunchArgument("image_topic", default_value="",
                              description="camera image topic (empty: params_file's, camera/image_raw by default)"),
        DeclareLaunchArgument("camera_info_topic", default_value="",
                              description="camera CameraInfo topic (empty: params_file's, camera/camera_info by default)"),
        DeclareLaunchArgument("transport", default_value="",
                              description="raw | compressed (empty: params_file's, raw by default)"),
        DeclareLaunchArgument("params_file", default_value=os.path.join(SHARE, "config", "default.yaml"),
                              description="ROS 2 parameter file"),
        DeclareLaunchArgument("overlay_params_file", default_value="",
                              description="second parameter file applied over params_file (e.g. jetson.yaml)"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="follow /clock (bag replay)"),
        DeclareLaunchArgument("stages", default_value="all", description="comma-separated stages, or all"),
        DeclareLaunchArgument("backend", default_value="", description="inference backend override (empty: from params_file)"),
        DeclareLaunchArgument("heavy_nice", default_value="10",
                              description="nice of synthesizer and analysis (best effort) so the detectors keep "
                                          "the camera rate on a small CPU; 0: off"),
        OpaqueFunction(function=make_nodes),
    ])
