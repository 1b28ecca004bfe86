"""Frame-level evaluation of a detector's scores on a labelled sequence: metrics per OOD kind and per
category (each against all in-distribution frames), and the alarm tests run over the sequence as the
node runs them (detection delay from each episode's onset, false alarms per 1000 in-distribution
frames). One definition, used by `ood-monitor evaluate`, the benchmarks and the tests.

The alarm state restarts exactly where the detector node restarts it: at a stamp gap longer than
`max_gap_s`, at a stamp that jumps back, and (offline) at the start of every recording. Episodes are
numbered per sequence, so back-to-back episodes of concatenated clips are never merged."""
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
    counted: np.ndarray | None = None  # frames the metrics count (None: all); see `flow_input_labels`

    def subset(self, keep: np.ndarray) -> Labels:
        """These labels on the frames `keep` selects (a boolean mask), in order."""
        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else np.asarray(a)[keep]

        return Labels(self.is_ood[keep], self.category[keep], self.kind[keep], self.episode[keep],
                      pick(self.sequence), pick(self.counted))

    def counted_mask(self) -> np.ndarray:
        return np.ones(self.is_ood.size, bool) if self.counted is None else np.asarray(self.counted, bool)


def flow_input_labels(labels: Labels) -> Labels:
    """Labels for a flow detector: a flow field is computed from a frame and the one before it, so the first
    clean frame after an episode pairs the episode's last frame with a clean one. Its input is not clean,
    and it is not an episode frame: the alarm runs over it as the node's does, but no metric counts it (a
    false alarm there was the episode's flow, not nominal motion)."""
    is_ood = np.asarray(labels.is_ood, bool)
    sequence = labels.sequence if labels.sequence is not None else np.zeros(is_ood.size, np.int64)
    after = np.r_[False, is_ood[:-1] & (np.asarray(sequence)[1:] == np.asarray(sequence)[:-1])] & ~is_ood
    return Labels(labels.is_ood, labels.category, labels.kind, labels.episode, labels.sequence,
                  labels.counted_mask() & ~after)


def detector_labels(kind: str, labels: Labels) -> Labels:
    """The labels a detector of `kind` ("image" or "flow") is measured against (`flow_input_labels`)."""
    return flow_input_labels(labels) if kind == "flow" else labels


def counted_alarm_metrics(alarmed: np.ndarray, labels: Labels) -> dict[str, float]:
    """`alarm_metrics` of per-frame alarms on the frames the labels count."""
    keep = labels.counted_mask()
    return alarm_metrics(np.asarray(alarmed, bool)[keep], labels.is_ood[keep], labels.episode[keep])


def sequence_ids(stamp_ns: np.ndarray, max_gap_s: float, source: np.ndarray | None = None) -> np.ndarray:
    """0, 1, 2, ... per frame: a new sequence wherever vae_detector_node restarts its alarm state (the
    stamp jumps back or advances by more than `max_gap_s`) and wherever `source` (the recording) changes."""
    stamps = np.asarray(stamp_ns, dtype=np.int64)
    if max_gap_s <= 0:
        raise ValueError(f"max_gap_s must be positive, got {max_gap_s}")
    step = np.diff(stamps)
    breaks = (step <= 0) | (step > int(max_gap_s * 1e9))
    if source is not None:
        src = np.asarray(source)
        breaks |= src[1:] != src[:-1]
    return np.r_[0, np.cumsum(breaks)].astype(np.int64) if stamps.size else np.zeros(0, np.int64)


def episode_ids(episode: np.ndarray, sequence: np.ndarray, is_ood: np.ndarray) -> np.ndarray:
    """Episode numbers made unique per sequence: every (sequence, episode) pair with OOD frames gets its
    own id 1, 2, ... in stream order (an episode cut by a restart counts once per sequence, as the node
    sees it); frames of no such pair get 0."""
    episode, sequence, is_ood = np.asarray(episode), np.asarray(sequence), np.asarray(is_ood, bool)
    out = np.zeros(episode.size, np.int64)
    ids: dict[tuple[int, int], int] = {}
    for i in np.flatnonzero(is_ood):
        key = (int(sequence[i]), int(episode[i]))
        ids.setdefault(key, len(ids) + 1)
    for (seq, ep), new in ids.items():
        out[(sequence == seq) & (episode == ep)] = new
    return out


def stream_labels(is_ood: np.ndarray, category: np.ndarray, kind: np.ndarray, episode: np.ndarray,
                  stamp_ns: np.ndarray, max_gap_s: float, source: np.ndarray | None = None) -> Labels:
    """Labels with the node's sequences and per-sequence episode ids (see `sequence_ids`, `episode_ids`)."""
    sequence = sequence_ids(stamp_ns, max_gap_s, source)
    return Labels(np.asarray(is_ood, bool), np.asarray(category), np.asarray(kind),
                  episode_ids(episode, sequence, is_ood), sequence)


def group_masks(labels: Labels) -> dict[str, np.ndarray]:
    """OOD frames of each category ("category:<c>") and each kind ("kind:<k>")."""
    ood = labels.is_ood.astype(bool)
    groups = {f"category:{c}": ood & (labels.category == c) for c in sorted(set(labels.category[ood]))}
    groups.update({f"kind:{k}": ood & (labels.kind == k) for k in sorted(set(labels.kind[ood]))})
    groups["all"] = ood
    return groups


def frame_table(scores: np.ndarray, labels: Labels) -> dict[str, dict[str, float]]:
    """AUROC, AUPR-in, AUPR-out, FPR@95 of each group against every in-distribution frame (counted ones)."""
    keep = labels.counted_mask()
    scores, labels = np.asarray(scores)[keep], labels.subset(keep)
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
    alarms); also the monitor's per-frame outputs for the timelines. The monitor runs over every frame;
    the metrics count the `counted` ones."""
    counted = labels.counted_mask()
    kept = labels.subset(counted)
    nominal = ~kept.is_ood.astype(bool)
    results, traces = {}, {}
    for name, cfg in tests.items():
        trace = monitor_sequence(calibration, scores, cfg, labels.sequence)
        traces[name] = trace
        alarmed = trace["is_ood"][counted]
        rows = {"all": counted_alarm_metrics(trace["is_ood"], labels)}
        for group, sel in group_masks(kept).items():
            if group.startswith("category:"):
                keep = sel | nominal
                rows[group] = alarm_metrics(alarmed[keep], kept.is_ood[keep], kept.episode[keep])
        results[name] = rows
    return results, traces
