"""`ood-monitor run --params config/default.yaml`: the launch file's nodes in one process
(MultiThreadedExecutor), for machines without ROS launch. Same node names, same YAML."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the node graph in one process with a ROS parameter file")
    p.add_argument("--params", type=Path, default=Path("config/default.yaml"), help="ROS 2 parameter YAML")
    p.add_argument("--stages", default="all", help="comma-separated stages to run (default all)")
    p.add_argument("--namespace", default="", help="namespace of every node (one per camera)")
    p.add_argument("--use-sim-time", action="store_true", help="follow /clock (e.g. from ood-monitor replay --clock)")
    p.add_argument("--threads", type=int, default=4, help="executor threads (default 4)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
    from rclpy.parameter import Parameter

    from ood_monitor.pipeline import nodes_for
    from ood_monitor.ros.node_main import START_ERRORS

    if not args.params.is_file():
        raise FileNotFoundError(f"parameter file not found: {args.params}")
    specs = nodes_for(args.stages)
    rclpy.init(args=["--ros-args", "--params-file", str(args.params)])
    executor = MultiThreadedExecutor(num_threads=args.threads)
    nodes = []
    try:
        for spec in specs:
            fixed = {**spec.parameters, "use_sim_time": args.use_sim_time}
            overrides = [Parameter(k, value=v) for k, v in fixed.items()]
            try:
                node = spec.load_class()(spec.name, namespace=args.namespace, parameter_overrides=overrides)
            except START_ERRORS as exc:
                print(f"[{spec.name}] cannot start: {exc}", file=sys.stderr, flush=True)
                return 1
            nodes.append(node)
            executor.add_node(node)
        print(f"running {', '.join(n.get_name() for n in nodes)} (Ctrl-C stops)", flush=True)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown(timeout_sec=2.0)
        for node in nodes:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0
