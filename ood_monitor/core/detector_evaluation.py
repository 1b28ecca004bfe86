"""Frame-level evaluation of a detector's scores on a labelled sequence: metrics per OOD kind and per
category (each against all in-distribution frames), and the alarm tests run over the sequence as the
node runs them (detection delay from each episode's onset, false alarms per 1000 in-distribution
frames). One definition, used by `ood-monitor evaluate`, the benchmarks and the tests."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ood_monitor.core.conformal import AlarmConfig, monitor_sequence
from ood_monitor.core.detector_metrics import alarm_metrics, frame_metrics


@dataclass(frozen=True)
class Labels:
    """Per-frame ground truth in stream order."""

    is_ood: np.ndarray
    category: np.ndarray
    kind: np.ndarray
    episode: np.ndarray
    sequence: np.ndarray | None = None  # changes where the stream restarts (alarm state is reset)


def group_masks(labels: Labels) -> dict[str, np.ndarray]:
    """OOD frames of each category ("category:<c>") and each kind ("kind:<k>")."""
    ood = labels.is_ood.astype(bool)
    groups = {f"category:{c}": ood & (labels.category == c) for c in sorted(set(labels.category[ood]))}
    groups.update({f"kind:{k}": ood & (labels.kind == k) for k in sorted(set(labels.kind[ood]))})
    groups["all"] = ood
    return groups


def frame_table(scores: np.ndarray, labels: Labels) -> dict[str, dict[str, float]]:
    """AUROC, AUPR-in, AUPR-out, FPR@95 of each group against every in-distribution frame."""
    nominal = ~labels.is_ood.astype(bool)
    table = {}
    for name, sel in group_masks(labels).items():
        keep = sel | nominal
        if sel.any() and nominal.any():
            table[name] = {**frame_metrics(scores[keep], labels.is_ood[keep]), "frames": int(sel.sum())}
    return table


def alarm_table(calibration: np.ndarray, scores: np.ndarray, labels: Labels, tests: dict[str, AlarmConfig],
                ) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, dict[str, np.ndarray]]]:
    """Per alarm test: its metrics per category (delays, missed episodes) and on all frames (false
    alarms); also the monitor's per-frame outputs for the timelines."""
    nominal = ~labels.is_ood.astype(bool)
    results, traces = {}, {}
    for name, cfg in tests.items():
        trace = monitor_sequence(calibration, scores, cfg, labels.sequence)
        traces[name] = trace
        rows = {"all": alarm_metrics(trace["is_ood"], labels.is_ood, labels.episode)}
        for group, sel in group_masks(labels).items():
            if group.startswith("category:"):
                keep = sel | nominal
                rows[group] = alarm_metrics(trace["is_ood"][keep], labels.is_ood[keep], labels.episode[keep])
        results[name] = rows
    return results, traces
