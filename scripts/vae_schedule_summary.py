"""Summarise `bench real --json` reports side by side (scripts/vae_schedule_probe.sh): per report, the mean
image AUROC over the visible corruption, scene and object kinds, the kinds below 0.9, the visible episodes
the image detector's martingale alarmed, its false alarms per 1000 clean test frames and the clean frames
with p < 0.05.

    python scripts/vae_schedule_summary.py work/A_REC.json work/B_REC.json
"""
import json
import math
import sys
from pathlib import Path


def alarmed(delay: float | None) -> bool:
    return delay is not None and not (isinstance(delay, float) and math.isnan(delay))


def summary(path: Path) -> str:
    report = json.loads(path.read_text())
    rec = report["recordings"][0]
    rows = [r for r in report["rows"] if r["category"] != "motion" and (r["visible"] or r["category"] == "object")]
    aurocs = [r["image_auroc"] for r in rows]
    caught = sum(alarmed(r["vae_image_martingale_delay"]) for r in rows)
    low = {r["kind"]: round(r["image_auroc"], 2) for r in rows if r["image_auroc"] < 0.9}
    return (f"{path.stem:34s} mean AUROC {sum(aurocs) / len(aurocs):.3f}  below 0.9: {len(low):2d}  "
            f"image alarms {caught}/{len(rows)}  false alarms / 1000 {rec['vae_image_fa_per_1000_martingale']:.1f}  "
            f"clean p<0.05 {rec['vae_image_clean_p_below_0.05']:.3f}  {low}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: vae_schedule_summary.py REPORT.json ...")
    for arg in sys.argv[1:]:
        print(summary(Path(arg)))
