"""Probe (docs/real_footage.md#three-test-builds-per-report-recording): would another rule for choosing the
martingale window catch more episodes than `calibrate`'s (the window that catches the shortest run of far
frames)? Real shifts often hold moderate evidence (p about 0.001-0.005) for many frames, which a longer
window accumulates.

Every window `calibrate` tried is stored in the card with its threshold (`alarm.windows`), and a window
changes nothing but the martingale's sum, so each rule is replayed from `evaluate`'s per-frame p-values
(a `bench real` work folder's eval/scores_*.csv) exactly as the node runs the alarm: restarted at each
sequence, the newest frame's p at or below `frame_p_max`. An episode counts when either detector alarms
inside it; visible episodes only (the data folder's dataset.json). Rules:

- `shortest-far`: `calibrate`'s (fewest frames at the far p-value; ties to the shorter window);
- `shortest-gate`: fewest frames at the gate's p-value (0.005), the weakest evidence that can alarm;
- `longest-fast`: the longest window whose shortest far run is at most 4 frames.

    python scripts/window_rule_probe.py real_tune_rc/tub_20221129_221024:work/tub_20221129_221024 ...

Arguments: DATA/RECORDING:WORK/RECORDING pairs (tuning builds only).
"""
import csv
import json
import math
import sys
from collections import deque
from pathlib import Path

import numpy as np

from ood_monitor.core.alarm_calibration import SLOW_ALARM_FRAMES, AlarmTarget, shortest_martingale_run
from ood_monitor.core.conformal import AlarmConfig, log_mixture_martingale

GATE = AlarmConfig().frame_p_max
NEVER = 10**6


def replay(rows: list[dict], window: int, threshold: float) -> np.ndarray:
    """Alarms of the mixture martingale over the rows' p-values, as ConformalMonitor raises them."""
    out, logs, sequence = [], deque(maxlen=window), None
    for r in rows:
        if r["sequence"] != sequence:
            logs.clear()
            sequence = r["sequence"]
        p = float(r["p_value"])
        logs.append(math.log(p))
        out.append(log_mixture_martingale(sum(logs), len(logs)) > threshold and p <= GATE)
    return np.array(out)


def far_run(w: dict) -> int:
    return NEVER if w["shortest_episode"] is None else w["shortest_episode"]


def choose(windows: list[dict], rule: str) -> dict:
    if rule == "shortest-far":
        return min(windows, key=lambda w: (far_run(w), w["window"]))
    if rule == "shortest-gate":
        target = AlarmTarget()
        return min(windows, key=lambda w: (shortest_martingale_run(w["window"], w["threshold"], GATE, target) or NEVER,
                                           far_run(w), w["window"]))
    fast = [w for w in windows if far_run(w) <= SLOW_ALARM_FRAMES]
    return max(fast, key=lambda w: w["window"]) if fast else choose(windows, "shortest-far")


def build_alarms(data: Path, work: Path, rule: str) -> tuple[int, int, int, int]:
    """(visible episodes caught, visible episodes, clean frames alarmed, clean frames) under `rule`."""
    alarmed: dict[str, bool] = {}
    for detector in ("vae_flow", "vae_image"):  # image last: its rows cover every frame
        card = json.loads((work / detector / "config.json").read_text())["alarm"]
        w = choose(card["windows"], rule)
        with open(work / "eval" / f"scores_{detector}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        for row, alarm in zip(rows, replay(rows, w["window"], w["threshold"]), strict=True):
            alarmed[row["frame"]] = alarmed.get(row["frame"], False) or bool(alarm)
    visible = {e["kind"] for e in json.loads((data / "dataset.json").read_text())["episodes"]
               if e["category"] != "motion" and e.get("visible", True)}
    alarms = np.array([alarmed[r["frame"]] for r in rows])
    ood, kinds = np.array([r["is_ood"] == "1" for r in rows]), np.array([r["kind"] for r in rows])
    caught = sum(bool(alarms[ood & (kinds == k)].any()) for k in visible)
    return caught, len(visible), int(alarms[~ood].sum()), int((~ood).sum())


def main(pairs: list[str]) -> None:
    rules = ("shortest-far", "shortest-gate", "longest-fast")
    totals = {rule: np.zeros(4, np.int64) for rule in rules}
    for pair in pairs:
        data, work = map(Path, pair.split(":"))
        figures = {rule: build_alarms(data, work, rule) for rule in rules}
        print(f"{data}: " + "  ".join(f"{r} {c}/{v}, {fa} clean alarmed" for r, (c, v, fa, _) in figures.items()))
        for rule, row in figures.items():
            totals[rule] += row
    for rule, (c, v, fa, clean) in totals.items():
        print(f"{rule:14s} {c}/{v} visible episodes, {fa} of {clean} clean frames alarmed")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
