"""ament_python package ood_monitor: nodes, the ood-monitor CLI, launch/config/models as data files."""
import os
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "ood_monitor"


def tree_data_files(folder: str) -> list[tuple[str, list[str]]]:
    """Install every file under `folder` into share/<package>/<folder>, keeping sub-folders."""
    entries = []
    for root, _dirs, files in os.walk(folder):
        paths = [os.path.join(root, f) for f in files if not f.startswith(".")]
        if paths:
            entries.append((os.path.join("share", PACKAGE, root), paths))
    return entries


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml", "LICENSE"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        *tree_data_files("models"),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="ood_monitor maintainers",
    maintainer_email="maintainers@ood-monitor.dev",
    description="Runtime OOD and anomaly monitoring for camera-driven robots (ROS 2).",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "ood-monitor = ood_monitor.cli.main:main",
            # ros/entry.py: a light wrapper, so a Ctrl-C while the node imports torch still exits 0
            "preprocess_node = ood_monitor.ros.entry:preprocess_node",
            "vae_detector_node = ood_monitor.ros.entry:vae_detector_node",
            "synthesizer_node = ood_monitor.ros.entry:synthesizer_node",
            "analysis_node = ood_monitor.ros.entry:analysis_node",
            "nav_bridge_node = ood_monitor.ros.entry:nav_bridge_node",
        ],
    },
)
