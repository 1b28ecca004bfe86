"""Alarm thresholds for a false-alarm target, chosen on held-out nominal blocks."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ood_monitor.core.alarm_calibration import (
    AlarmCalibrationError,
    AlarmTarget,
    block_ids,
    block_tolerance,
    calibrate_alarms,
    cusum_theta,
    drift_tail_index,
    heldout_tolerances,
    resolve_alarm,
)
from ood_monitor.core.conformal import AlarmConfig, monitor_sequence


def test_blocks_are_contiguous_and_never_span_two_recordings() -> None:
    seq = np.r_[np.zeros(50, int), np.ones(30, int)]
    blocks = block_ids(seq, 4)
    assert np.all(np.diff(blocks) >= 0)  # contiguous, in order
    assert set(blocks[:50]).isdisjoint(blocks[50:])  # a block belongs to one recording
    assert len(np.unique(blocks)) == 4  # two per recording: shares in proportion to the lengths
    uneven = block_ids(np.r_[np.zeros(95, int), np.ones(385, int)], 5)  # a boundary just past a fifth
    sizes = np.bincount(uneven)
    assert set(uneven[:95]) == {0} and sizes.min() >= 90  # no sliver of a block at the boundary


def test_cusum_theta_solves_the_adjustment_equation() -> None:
    for delta in (1.5, 2.0, 3.0):
        theta = cusum_theta(delta)
        assert 0 < theta < 1 and math.exp(-theta * delta) / (1 - theta) == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(ValueError, match="must exceed 1"):
        cusum_theta(1.0)


def test_exchangeable_data_gets_the_bound_and_meets_the_target_on_new_frames() -> None:
    rng = np.random.default_rng(0)
    result = calibrate_alarms(rng.normal(size=600), target=AlarmTarget(false_alarms_per_1000=1.0))
    s = result.settings
    assert s["martingale_threshold"] >= math.log(1000) and s["cusum_threshold"] >= math.log(1000) / cusum_theta(2.0)
    assert result.heldout_false_alarms_per_1000["martingale"] <= 1.0
    assert 0.02 < result.coverage < 0.08  # ~5 % of exchangeable p-values are below 0.05
    assert 1 <= result.shortest_episode["martingale"] <= s["window"]
    assert result.reachable_log_martingale > s["martingale_threshold"]
    # fresh nominal frames of the same distribution, scored against the same calibration: the rate holds
    cal = rng.normal(size=600)
    fresh = rng.normal(size=40_000)
    for test in ("martingale", "cusum"):
        alarms = monitor_sequence(cal, fresh, AlarmConfig(test=test, **s))["is_ood"]
        assert alarms.mean() * 1000 <= 2.0, test
    # and an episode at the floor is caught within the promised number of frames
    episode = np.r_[rng.normal(size=30), np.full(20, 50.0)]
    trace = monitor_sequence(cal, episode, AlarmConfig(**s))["is_ood"]
    assert trace[:30].sum() == 0 and np.argmax(trace[30:]) + 1 <= result.shortest_episode["martingale"]


def test_drift_between_blocks_raises_the_threshold_and_warns() -> None:
    rng = np.random.default_rng(1)
    steady = calibrate_alarms(rng.normal(size=500))
    drifting = np.r_[rng.normal(size=400), rng.normal(2.5, 1.0, size=100)]  # the last block looks unlike the rest
    result = calibrate_alarms(drifting)
    assert any("not exchangeable" in w and "block(s) 4" in w for w in result.warnings)
    assert any(w.startswith("coverage") for w in result.warnings)
    assert result.coverage > 0.1
    assert (result.settings["martingale_threshold"], result.settings["cusum_threshold"]) > (
        steady.settings["martingale_threshold"], steady.settings["cusum_threshold"])


def test_a_threshold_only_long_anomalies_can_cross_is_warned_of_with_its_cause() -> None:
    rng = np.random.default_rng(6)
    steady = calibrate_alarms(rng.chisquare(10, size=300), target=AlarmTarget(tail="pareto"))
    assert not any("alarms only after" in w for w in steady.warnings)
    # one calibration block scoring 4x the rest: the held-out level forces a 20-frame window
    odd = rng.chisquare(10, size=300) * np.repeat([1.0, 4.0, 1.0, 1.0, 1.0], 60)
    result = calibrate_alarms(odd, target=AlarmTarget(tail="pareto"))
    run = result.shortest_episode["martingale"]
    assert run > 4
    [warning] = [w for w in result.warnings if "alarms only after" in w]
    assert f"after {run} frames" in warning and "block 1" in warning and "--false-alarms-per-1000" in warning
    assert "score twice the largest nominal score" in warning
    # 60 frames, no tail: the threshold is the bound; what is missing is a small enough p-value (1/61)
    few = calibrate_alarms(rng.normal(size=60), target=AlarmTarget(tail="none"))
    assert few.settings["martingale_threshold"] == pytest.approx(math.log(1000), abs=1e-3)
    [warning] = [w for w in few.warnings if "alarms only after" in w]
    assert "score past every nominal one" in warning and "p = 0.016" in warning and "more calibration frames" in warning


def test_refuses_when_the_data_cannot_support_the_target() -> None:
    rng = np.random.default_rng(2)
    with pytest.raises(AlarmCalibrationError, match="at least 2 blocks"):
        calibrate_alarms(rng.normal(size=10))
    # 30 frames: the smallest p-value is 1/31, and a 2-frame window cannot reach log(1e6)
    with pytest.raises(AlarmCalibrationError, match=r"window 2: needs 13\.8, reaches"):
        calibrate_alarms(rng.normal(size=30), target=AlarmTarget(false_alarms_per_1000=0.001, windows=(2,)))


def test_stored_settings_round_trip_and_explicit_ones_win() -> None:
    result = calibrate_alarms(np.random.default_rng(3).normal(size=200))
    stored = result.to_dict(AlarmTarget())
    assert AlarmTarget.from_settings(stored) == AlarmTarget()
    cfg = resolve_alarm("cusum", {"window": 0, "martingale_threshold": 0.0}, lambda: stored)
    assert cfg.test == "cusum" and cfg.window == stored["window"] and cfg.cusum_threshold == stored["cusum_threshold"]
    explicit = {"martingale": "power", "epsilon": 0.4, "window": 9, "martingale_threshold": 11.0, "cusum_delta": 3.0,
                "cusum_threshold": 30.0, "p_floor": 0.01, "tail": "pareto", "tail_index": 2.5,
                "score_tolerance": 1.5}

    def never() -> dict:
        raise AssertionError("stored settings read although every setting was given")

    assert resolve_alarm("martingale", explicit, never) == AlarmConfig(test="martingale", **explicit)


def test_pareto_tail_keeps_the_rate_and_catches_far_frames_at_once() -> None:
    rng = np.random.default_rng(4)
    nominal = rng.chisquare(10, size=600)
    result = calibrate_alarms(nominal, target=AlarmTarget(tail="pareto", p_floor=1e-6))
    s = result.settings
    assert s["tail"] == "pareto" and s["tail_index"] > 1.0
    assert result.p_min < 1.0 / 601  # the "shortest episode" is counted past the conformal floor
    plain = calibrate_alarms(nominal).settings
    fresh = rng.chisquare(10, size=40_000)
    alarms = monitor_sequence(nominal, fresh, AlarmConfig(**s))["is_ood"]
    assert alarms.mean() * 1000 <= 2.0
    # a stretch far past every nominal score: the tail alarms on its first frames, the floor cannot
    episode = np.r_[rng.chisquare(10, size=30), np.full(20, 10.0 * nominal.max())]
    first = {name: int(np.argmax(monitor_sequence(nominal, episode, AlarmConfig(**cfg))["is_ood"][30:])) + 1
             for name, cfg in (("tail", s), ("plain", plain))}
    assert first["tail"] <= 2 and first["tail"] < first["plain"]


def test_blocks_that_overshoot_each_other_make_the_tail_heavier() -> None:
    rng = np.random.default_rng(5)
    steady = rng.chisquare(10, size=500)
    blocks = block_ids(np.zeros(500, int), 5)
    drifting = steady * np.repeat([1.0, 1.0, 1.0, 1.0, 1.6], 100)  # the last stretch runs past the rest
    assert drift_tail_index(drifting, blocks) < drift_tail_index(steady, blocks)


def test_score_tolerance_is_measured_between_blocks_and_never_on_the_block_it_checks() -> None:
    rng = np.random.default_rng(6)
    steady = rng.chisquare(10, size=500)
    blocks = block_ids(np.zeros(500, int), 5)
    drifting = steady * np.repeat([1.0, 1.0, 1.0, 2.0, 2.0], 100)  # the camera moved on for the last two fifths
    kappa = block_tolerance(drifting, blocks)
    assert 1.0 <= block_tolerance(steady, blocks) < 1.5 < kappa
    nested = heldout_tolerances(drifting, blocks, AlarmTarget(score_tolerance=0.0))
    assert nested[4] > 1.4 and nested[3] > 1.4  # the other drifted block taught each one the tolerance
    assert heldout_tolerances(drifting, blocks, AlarmTarget(score_tolerance=2.5)) == {b: 2.5 for b in range(5)}
    measured = calibrate_alarms(drifting, target=AlarmTarget(score_tolerance=0.0))
    fixed = calibrate_alarms(drifting, target=AlarmTarget(score_tolerance=2.0))
    plain = calibrate_alarms(drifting)
    assert measured.settings["score_tolerance"] == pytest.approx(kappa, abs=1e-4)
    assert measured.to_dict(AlarmTarget(score_tolerance=0.0))["score_tolerance_measured"]
    assert fixed.settings["score_tolerance"] == 2.0 and plain.settings["score_tolerance"] == 1.0
    # a last stretch at 2x, checked against the others: covered with the tolerance, strange without it
    last = steady * np.repeat([1.0, 1.0, 1.0, 1.0, 2.0], 100)
    covered = calibrate_alarms(last, target=AlarmTarget(score_tolerance=2.0)).coverage
    assert covered < 0.07 < 0.1 < calibrate_alarms(last).coverage
    # a stretch 2x the calibration is nominal with the tolerance; 10x still alarms within 2 frames
    cal = np.sort(steady)
    moved = monitor_sequence(cal, 2.0 * rng.chisquare(10, size=2000), AlarmConfig(**fixed.settings))["is_ood"]
    assert moved.mean() * 1000 <= 2.0
    far = np.r_[rng.chisquare(10, size=30), np.full(20, 10.0 * cal[-1])]
    fired = monitor_sequence(cal, far, AlarmConfig(**{**fixed.settings, "tail": "none", "p_floor": 0.005}))
    assert 1 <= int(np.argmax(fired["is_ood"][30:])) + 1 <= 4


def test_score_tolerance_must_be_at_least_one() -> None:
    with pytest.raises(ValueError, match="score tolerance"):
        AlarmConfig(score_tolerance=0.5)
    with pytest.raises(ValueError, match="score tolerance"):
        AlarmTarget(score_tolerance=0.9)
