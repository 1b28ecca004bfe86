"""`ood-monitor bench <stage>`: side-by-side timings of what the nodes run, as a table and JSON."""
from __future__ import annotations

import argparse
import importlib

STAGES = {
    "preprocess": "ood_monitor.cli.bench_preprocess",
    "vae": "ood_monitor.cli.bench_vae",
    "hvae": "ood_monitor.cli.bench_hvae",
    "analysis": "ood_monitor.cli.bench_analysis",
    "compress": "ood_monitor.cli.bench_compress",
    "synth": "ood_monitor.cli.bench_synth",
    "masks": "ood_monitor.cli.bench_masks",
    "pipeline": "ood_monitor.cli.bench_pipeline",
    "fleet": "ood_monitor.cli.bench_fleet",
    "real": "ood_monitor.cli.bench_real",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks: " + ", ".join(STAGES))
    stages = p.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for module_name in STAGES.values():
        module = importlib.import_module(module_name)
        sp = module.register(stages)
        sp.add_argument("--quick", action="store_true", help="fewer frames, same comparison (< 1 min)")
        sp.add_argument("--json", metavar="PATH", help="also write the report as JSON")
