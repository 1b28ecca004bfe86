"""Detection metrics (core/detector_metrics) against scikit-learn and hand-made alarm sequences."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from ood_monitor.core.detector_metrics import (
    alarm_metrics,
    aupr_in,
    aupr_out,
    auroc,
    detection_delays,
    false_alarm_events,
    false_alarms_per_1000,
    fpr_at_tpr,
    frame_metrics,
    kind_aurocs,
)


def sample(seed: int, n: int = 600, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.uniform(size=n) < 0.3
    s = rng.normal(size=n) + 1.2 * y
    return (np.round(s, 1) if ties else s), y


def sklearn_fpr95(s: np.ndarray, y: np.ndarray) -> float:
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return float(fpr[np.searchsorted(tpr, 0.95, side="left")])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ties", [False, True])
def test_metrics_equal_sklearn(seed: int, ties: bool) -> None:
    s, y = sample(seed, ties=ties)
    assert auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert aupr_out(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert aupr_in(s, y) == pytest.approx(average_precision_score(~y, -s), abs=1e-12)
    assert fpr_at_tpr(s, y) == pytest.approx(sklearn_fpr95(s, y), abs=1e-12)


def test_metric_extremes() -> None:
    y = np.array([0, 0, 1, 1], bool)
    m = frame_metrics(np.array([0.1, 0.2, 0.8, 0.9]), y)
    assert m == {"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr95": 0.0}
    assert auroc(np.array([0.9, 0.8, 0.2, 0.1]), y) == 0.0
    assert auroc(np.ones(4), y) == 0.5
    with pytest.raises(ValueError, match="both"):
        auroc(np.ones(3), np.ones(3, bool))


def test_detection_delay_and_false_alarms() -> None:
    #                ep 0: onset at its 3rd frame    ep 1: ID only   ep 2: onset at 1st, never alarmed
    episode = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    is_ood = np.array([0, 0, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1], bool)
    alarm = np.array([0, 1, 0, 0, 1, 1, 0, 1, 0, 0, 0, 0], bool)
    delays = detection_delays(alarm, is_ood, episode)
    assert delays[0] == 2.0 and np.isnan(delays[1]) and len(delays) == 2
    assert false_alarms_per_1000(alarm, is_ood) == pytest.approx(1000 * 2 / 5)
    m = alarm_metrics(alarm, is_ood, episode)
    assert m["median_delay"] == 2.0 and m["missed_episodes"] == 1 and m["false_alarm_frames"] == 2
    assert m["false_alarm_events"] == 2  # frames 1 and 7, each alone


def test_grace_skips_only_frames_right_after_an_episode() -> None:
    is_ood = np.array([0, 1, 1, 0, 0, 0, 0], bool)
    alarm = np.array([1, 1, 1, 1, 1, 0, 1], bool)
    assert false_alarms_per_1000(alarm, is_ood) == pytest.approx(1000 * 4 / 5)
    # grace 2 drops frames 3 and 4 (1 and 2 frames after the episode): alarms at 0 and 6 remain
    assert false_alarms_per_1000(alarm, is_ood, grace=2) == pytest.approx(1000 * 2 / 3)
    assert alarm_metrics(alarm, is_ood, np.r_[0, 1, 1, 0, 0, 0, 0], grace=2)["false_alarm_frames"] == 2
    # events: frame 0, frames 3-4 (one run; the episode before them is not a false alarm), frame 6
    assert [false_alarm_events(alarm, is_ood, g) for g in (0, 2)] == [3, 2]


def test_kind_aurocs_compare_each_kind_with_the_clean_frames_only():
    scores = np.array([0.1, 0.2, 0.3, 0.9, 0.8, 0.05, 0.15, 5.0])
    clean = np.array([1, 1, 1, 0, 0, 0, 0, 0], bool)
    kinds = np.array(["nominal"] * 3 + ["fog"] * 2 + ["warp"] * 2 + ["other"])
    fog, warp = kind_aurocs(scores, clean, kinds, ("fog", "warp"))
    assert fog == 1.0  # both fog frames above every clean frame; the "other" frame is not a negative
    assert warp == pytest.approx((0 + 1) / 6)  # 0.05 beats none of 3, 0.15 beats 1 of 3
