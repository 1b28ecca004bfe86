"""ros2 launch ood_monitor jetson.launch.py [namespace:=front] [image_topic:=...] [stages:=...]

The Jetson profile: config/default.yaml with config/jetson.yaml applied over it (overlay_params_file:
TensorRT fp16 engines, cached on disk), and the TensorRT backend for the detectors. Without TensorRT the
detectors refuse to start with one line and the launch ends."""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration

SHARE = get_package_share_directory("ood_monitor")


def generate_launch_description():
    forwarded = ("namespace", "image_topic", "camera_info_topic", "transport", "stages", "use_sim_time")
    pipeline = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(SHARE, "launch", "ood_monitor.launch.py")),
        launch_arguments={**{name: LaunchConfiguration(name) for name in forwarded},
                          "params_file": os.path.join(SHARE, "config", "default.yaml"),
                          "overlay_params_file": os.path.join(SHARE, "config", "jetson.yaml"),
                          "backend": LaunchConfiguration("backend")}.items())
    return LaunchDescription([
        DeclareLaunchArgument("namespace", default_value="", description="namespace of every node"),
        DeclareLaunchArgument("image_topic", default_value="", description="camera image topic (empty: the YAML's)"),
        DeclareLaunchArgument("camera_info_topic", default_value="",
                              description="camera CameraInfo topic (empty: the YAML's)"),
        DeclareLaunchArgument("transport", default_value="", description="raw | compressed (empty: the YAML's)"),
        DeclareLaunchArgument("stages", default_value="all", description="comma-separated stages, or all"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="follow /clock"),
        DeclareLaunchArgument("backend", default_value="tensorrt", description="detector backend"),
        pipeline,
    ])
