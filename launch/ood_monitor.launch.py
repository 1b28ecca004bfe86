"""ros2 launch ood_monitor ood_monitor.launch.py [namespace:=front] [image_topic:=/cam/image_raw] ...

Starts the ood_monitor node graph (ood_monitor.pipeline.NODES) with one parameter file."""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from ood_monitor.pipeline import nodes_for

SHARE = get_package_share_directory("ood_monitor")
BACKEND_NODES = ("vae_detector_node",)  # nodes that take the `backend` parameter
BEST_EFFORT_STAGES = ("synthesize", "analysis")  # run at lower CPU priority (heavy_nice) on small CPUs


def make_nodes(context):
    arg = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    use_sim_time = arg("use_sim_time").lower() in ("true", "1")
    nodes = []
    for spec in nodes_for(arg("stages")):
        overrides = {**spec.parameters, "use_sim_time": use_sim_time}
        if spec.executable == "preprocess_node":
            overrides.update(image_topic=arg("image_topic"), camera_info_topic=arg("camera_info_topic"),
                             transport=arg("transport"))
        if spec.executable in BACKEND_NODES and arg("backend"):
            overrides["backend"] = arg("backend")
        files = [arg("params_file")] + ([arg("overlay_params_file")] if arg("overlay_params_file") else [])
        nice = int(arg("heavy_nice") or 0) if spec.stage in BEST_EFFORT_STAGES else 0
        nodes.append(Node(package="ood_monitor", executable=spec.executable, name=spec.name,
                          namespace=arg("namespace"), parameters=[*files, overrides],
                          prefix=f"nice -n {nice}" if nice else None, output="screen", emulate_tty=True))
    return nodes


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("namespace", default_value="", description="namespace of every node (one per camera)"),
        DeclareLaunchArgument("image_topic", default_value="camera/image_raw", description="camera image topic"),
        DeclareLaunchArgument("camera_info_topic", default_value="camera/camera_info", description="CameraInfo topic"),
        DeclareLaunchArgument("transport", default_value="raw", description="raw | compressed"),
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
