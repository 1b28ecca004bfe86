"""`ood-monitor replay BAG`: publish a rosbag2 bag (MCAP or sqlite3) into live ROS, paced by its
recorded times — `ros2 bag play` for machines without ros2cli."""
from __future__ import annotations

import argparse
import threading


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="publish a bag into live ROS, paced by its recorded times")
    p.add_argument("bag", help="rosbag2 bag directory (or its .mcap/.db3 file)")
    p.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default 1.0)")
    p.add_argument("--loop", action="store_true", help="play again from the start until interrupted")
    p.add_argument("--topics", nargs="+", default=[], help="only these topics (default: all)")
    p.add_argument("--remap", nargs="+", default=[], metavar="FROM:=TO", help="rename topics on publication")
    p.add_argument("--clock", action="store_true", help="publish /clock with the bag's time (use_sim_time)")
    p.add_argument("--restamp", action="store_true", help="header stamps shifted to now (with --loop: time "
                   "keeps going forward, as from a live camera)")
    p.set_defaults(func=run)


def parse_remaps(items: list[str]) -> dict[str, str]:
    remap = {}
    for item in items:
        src, sep, dst = item.partition(":=")
        if not sep or not src or not dst:
            raise ValueError(f"remap must look like FROM:=TO, got {item!r}")
        remap[src] = dst
    return remap


def run(args: argparse.Namespace) -> int:
    import rclpy

    from ood_monitor.ros.bag_bridge import BagPlayer, PlaybackConfig

    cfg = PlaybackConfig(rate=args.rate, loop=args.loop, topics=args.topics,
                         remap=parse_remaps(args.remap), clock=args.clock,
                         restamp=args.restamp)
    rclpy.init()
    node = rclpy.create_node("ood_replay")
    stop = threading.Event()
    try:
        player = BagPlayer(node, args.bag, cfg)
        print(f"replaying {args.bag} at {cfg.rate}x{' (loop)' if cfg.loop else ''} ...", flush=True)
        n = player.play(stop)
        print(f"published {n} messages")
    except KeyboardInterrupt:
        stop.set()
    finally:
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0
