"""`ood-monitor run --params config/default.yaml`: the launch file's nodes in one process
(one executor, single-threaded by default), for machines without ROS launch. Same node names, same YAML."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXECUTORS = ("single", "multi")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the node graph in one process with a ROS parameter file")
    p.add_argument("--params", type=Path, default=Path("config/default.yaml"), help="ROS 2 parameter YAML")
    p.add_argument("--stages", default="all", help="comma-separated stages to run (default all)")
    p.add_argument("--namespace", default="", help="namespace of every node (one per camera)")
    p.add_argument("--use-sim-time", action="store_true", help="follow /clock (e.g. from ood-monitor replay --clock)")
    p.add_argument("--executor", choices=EXECUTORS, default="single",
                   help="single (default: as launch runs each node) or multi (a thread pool; busy-waits)")
    p.add_argument("--threads", type=int, default=4, help="threads of --executor multi (default 4)")
    p.add_argument("--nice", type=int, default=0, help="lower this process's CPU priority by N (e.g. 10 for "
                   "the synthesis/analysis process, so the camera-rate detectors keep their rate on a small CPU)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rclpy.executors import ExternalShutdownException

    from ood_monitor.pipeline import nodes_for
    from ood_monitor.ros.graph import NodeGraph
    from ood_monitor.ros.node_main import START_ERRORS

    if args.nice:
        import os

        os.nice(args.nice)  # before any thread starts: every thread of the process inherits it
    try:
        graph = NodeGraph(nodes_for(args.stages), args.params, args.namespace, args.use_sim_time, args.threads,
                          executor=args.executor)
    except START_ERRORS as exc:
        print(f"ood-monitor run: cannot start: {exc}", file=sys.stderr, flush=True)
        return 1
    try:
        print(f"running {', '.join(graph.nodes)} (Ctrl-C stops)", flush=True)
        graph.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        graph.close()
    return 0
