"""`ood-monitor`: one command with a sub-command per job (data, replay, bench, demo, ...).

Each sub-command lives in its own module exposing `register(subparsers)`, which adds its parser and
sets `func(args) -> int`. Modules are imported lazily so `ood-monitor --help` stays fast and a
missing optional dependency of one command never breaks the others.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "data": "ood_monitor.cli.data_cmd",
    "train": "ood_monitor.cli.train_cmd",
    "calibrate": "ood_monitor.cli.calibrate_cmd",
    "calibrate-analysis": "ood_monitor.cli.calibrate_analysis_cmd",
    "evaluate": "ood_monitor.cli.evaluate_cmd",
    "compress": "ood_monitor.cli.compress_cmd",
    "replay": "ood_monitor.cli.replay_cmd",
    "run": "ood_monitor.cli.run_cmd",
    "bench": "ood_monitor.cli.bench_cmd",
    "demo": "ood_monitor.cli.demo_cmd",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ood-monitor", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMANDS.values():
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"ood-monitor {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
