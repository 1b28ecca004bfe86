"""ros2 launch ood_monitor replay.launch.py bag:=/path/to/bag [rate:=1.0] [stages:=all]

Plays a rosbag2 bag (with /clock) and runs the node graph on sim time: evaluation on recordings."""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.substitutions import ExecutableInPackage

SHARE = get_package_share_directory("ood_monitor")


def generate_launch_description():
    pipeline = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(SHARE, "launch", "ood_monitor.launch.py")),
        launch_arguments={"use_sim_time": "true", "stages": LaunchConfiguration("stages"),
                          "params_file": LaunchConfiguration("params_file"),
                          "namespace": LaunchConfiguration("namespace")}.items())
    player = ExecuteProcess(  # lib/ood_monitor/ood-monitor of the install: not on PATH in a colcon workspace
        cmd=[ExecutableInPackage("ood-monitor", "ood_monitor"), "replay", LaunchConfiguration("bag"),
             "--rate", LaunchConfiguration("rate"), "--clock"],
        name="ood_replay", output="screen")
    return LaunchDescription([
        DeclareLaunchArgument("bag", description="rosbag2 bag directory (MCAP or sqlite3)"),
        DeclareLaunchArgument("rate", default_value="1.0", description="playback speed factor"),
        DeclareLaunchArgument("stages", default_value="all", description="comma-separated stages, or all"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of every node"),
        DeclareLaunchArgument("params_file", default_value=os.path.join(SHARE, "config", "default.yaml"),
                              description="ROS 2 parameter file"),
        pipeline,
        player,
    ])
