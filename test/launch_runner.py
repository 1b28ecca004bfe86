"""Runs one launch file as `ros2 launch` does (launch.LaunchService), for test_launch.py.

    python launch_runner.py FILE [name:=value ...]

It runs until the launched system shuts down: a terminal's Ctrl-C (the test sends SIGINT to the whole
process group, as a terminal does) or a required node exiting. `sigterm_timeout` is launch's own (5 s):
a process still alive then gets SIGTERM, which launch logs ("escalating to 'SIGTERM'") and the test reads
as a node that did not exit in time. (A stricter 2 s failed once in CI: on two loaded cores the niced
synthesizer and analysis nodes needed longer; here they take 0.1-0.3 s.)"""
from __future__ import annotations

import sys

import launch
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource


def main(argv: list[str]) -> int:
    path, arguments = argv[0], [tuple(a.split(":=", 1)) for a in argv[1:]]
    service = launch.LaunchService()
    service.include_launch_description(launch.LaunchDescription([
        IncludeLaunchDescription(PythonLaunchDescriptionSource(path), launch_arguments=arguments),
    ]))
    return service.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
