"""Command-line options for ground truth given as colour-coded label PNGs (RUGD-style datasets), shared
by `train`, `calibrate` and `evaluate` so the same folder reads the same way everywhere."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ood_monitor.data.labels import LabelSpec


def add_label_options(p: argparse.ArgumentParser, training: bool = False) -> None:
    g = p.add_argument_group("colour-coded labels (image folders labelled like RUGD)")
    g.add_argument("--labels", type=Path, default=None, metavar="DIR",
                   help="folder of colour label PNGs named like the frames (creek_00001.png for creek_00001.jpg)")
    g.add_argument("--colormap", type=Path, default=None, metavar="FILE",
                   help="class colours: 'id name R G B' lines (RUGD_annotation-colormap.txt), 'name,R,G,B' "
                        "lines or classes.json; when omitted, a *colormap*.txt or classes.json in or above "
                        "the label/data folder")
    g.add_argument("--anomaly-classes", default="", metavar="NAMES",
                   help="comma-separated class names that are anomalies, e.g. pole,vehicle,bicycle")
    if training:
        g.add_argument("--keep-anomalous-frames", action="store_true",
                       help="also use frames labelled OOD (default: skip them, the model learns "
                            "in-distribution data only)")


def label_spec(args: argparse.Namespace) -> LabelSpec | None:
    """The LabelSpec the options describe; None when none of them is given."""
    from ood_monitor.data.labels import LabelSpec

    labels, colormap = getattr(args, "labels", None), getattr(args, "colormap", None)
    names = tuple(n.strip() for n in getattr(args, "anomaly_classes", "").split(",") if n.strip())
    if labels is None and colormap is None and not names:
        return None
    return LabelSpec(labels_dir=labels, colormap=colormap, anomaly_classes=names)
