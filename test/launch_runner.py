"""Runs one launch file as `ros2 launch` does (launch.LaunchService), for test_launch.py.

    python launch_runner.py FILE [name:=value ...]

It runs until the launched system shuts down: a terminal's Ctrl-C (the test sends SIGINT to the whole
process group, as a terminal does) or a required node exiting. `sigterm_timeout` is 2 s instead of
launch's 5 s: a process still alive 2 s after SIGINT gets SIGTERM, which launch logs ("escalating to
'SIGTERM'") and the test reads as a node that did not exit in time."""
from __future__ import annotations

import sys

import launch
from launch.actions import IncludeLaunchDescription, SetLaunchConfiguration
from launch.launch_description_sources import PythonLaunchDescriptionSource

SIGTERM_TIMEOUT_S = "2"


def main(argv: list[str]) -> int:
    path, arguments = argv[0], [tuple(a.split(":=", 1)) for a in argv[1:]]
    service = launch.LaunchService()
    service.include_launch_description(launch.LaunchDescription([
        SetLaunchConfiguration("sigterm_timeout", SIGTERM_TIMEOUT_S),
        IncludeLaunchDescription(PythonLaunchDescriptionSource(path), launch_arguments=arguments),
    ]))
    return service.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
