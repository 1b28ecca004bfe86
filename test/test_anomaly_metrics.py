"""Pixel AUC-PR and F* (the definitions of anomalies by synthesis, docs/methods.md#mask-metrics) on hand-built
cases."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from ood_monitor.core.mask_metrics import (
    FStar,
    PixelAucPr,
    average_precision,
    min_object_px,
    object_scores,
    pixel_auc_pr,
)


def test_average_precision_hand_computed_and_matches_sklearn():
    # ranking: pos, neg, pos -> precision at recalls 0.5, 1.0 = 1, 2/3 -> AP = 0.5 + 1/3
    assert average_precision([0.9, 0.8, 0.7], [1, 0, 1]) == pytest.approx(0.5 + 1 / 3)
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(500), 2)  # many ties
    labels = rng.random(500) < 0.3
    assert average_precision(scores, labels) == pytest.approx(average_precision_score(labels, scores))
    assert np.isnan(average_precision([0.1, 0.2], [0, 0]))


def test_pixel_auc_pr_uses_only_anomaly_frames():
    gt = np.zeros((4, 4), np.uint8)
    gt[0, :2] = 255
    perfect = gt.astype(np.float32) / 255
    nominal_noise = np.ones((4, 4), np.float32)  # would be all false positives if it were counted
    acc = PixelAucPr()
    assert acc.add(perfect, gt)
    assert not acc.add(nominal_noise, np.zeros((4, 4), np.uint8))
    assert acc.frames == 1 and acc.value() == pytest.approx(1.0)
    assert pixel_auc_pr([1 - perfect], [gt]) == pytest.approx(2 / 16)  # inverted: the positives ranked last
    with pytest.raises(ValueError):
        acc.add(perfect, gt[:2])


def test_min_object_size_scales_with_area():
    assert min_object_px(550, 688) == 500
    assert min_object_px(240, 320) == round(500 * 320 * 240 / (688 * 550))  # 101


def semantic_case() -> tuple[np.ndarray, np.ndarray]:
    """240x320: ground (1) below, sky (3) above, two separate anomaly blobs of class 10, a tiny bush (4)."""
    sem = np.ones((240, 320), np.uint8)
    sem[:100] = 3
    sem[150:170, 20:40] = 10  # 400 px
    sem[150:170, 200:230] = 10  # 600 px, separate component of the same class
    sem[110:115, 100:105] = 4  # 25 px < 101: not an object
    score = np.zeros(sem.shape, np.float32)
    score[150:170, 20:40] = 0.95
    score[150:170, 200:230] = 0.55
    score[:100] = 0.25  # sky slightly suspicious
    return sem, score


def test_objects_are_components_of_every_class_with_size_bound():
    sem, score = semantic_case()
    s, pos = object_scores(score, sem, anomaly_ids=[10])
    assert sorted(pos.tolist()) == [False, False, True, True]  # ground, sky, two anomaly components
    assert sorted(s[pos].round(3).tolist()) == [0.55, 0.95]
    assert s[~pos].max() == pytest.approx(0.25)
    s_ign, pos_ign = object_scores(score, sem, anomaly_ids=[10], ignore_ids=[3])
    assert len(s_ign) == 3  # sky ignored


def test_f_star_best_threshold_and_f1_values():
    sem, score = semantic_case()
    fs = FStar(anomaly_ids=(10,))
    fs.add(score, sem)
    per_tau = fs.f1_per_tau()
    assert per_tau[0.2] == pytest.approx(2 * 2 / (2 * 2 + 1))  # sky is a false positive at 0.2
    assert per_tau[0.3] == pytest.approx(1.0) and per_tau[0.5] == pytest.approx(1.0)
    assert per_tau[0.6] == pytest.approx(2 / 3)  # one anomaly missed
    assert per_tau[0.9] == pytest.approx(2 / 3)
    assert fs.value() == (pytest.approx(1.0), 0.3)
    empty = FStar(anomaly_ids=(10,))
    empty.add(np.zeros_like(score), sem)
    assert empty.value()[0] == 0.0
