"""Conformal p-values, martingales and CUSUM (core/conformal)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.special import gammainc, gammaln

from ood_monitor.core.conformal import (
    AlarmConfig,
    ConformalMonitor,
    hill_tail_index,
    log_mixture_martingale,
    log_power_martingale,
    monitor_sequence,
    p_values,
    score_threshold,
)

RNG_SEED = 1234


def calibration(n: int = 999, seed: int = 0) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).normal(size=n))


def test_p_value_formula() -> None:
    cal = np.array([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(p_values(cal, [0.0, 2.0, 2.5, 10.0], floor=0.0), [1.0, 0.8, 0.6, 0.2])
    assert p_values(cal, 10.0, floor=0.3)[0] == 0.3


def test_p_values_uniform_on_exchangeable_data() -> None:
    # uniform over calibration draws too: one fixed set of n scores is only uniform to ~1/sqrt(n)
    rng = np.random.default_rng(RNG_SEED)
    p = np.concatenate([p_values(np.sort(rng.normal(size=499)), rng.normal(size=1000), floor=0.0)
                        for _ in range(30)])
    for q in (0.05, 0.1, 0.5, 0.9):
        assert np.mean(p <= q) == pytest.approx(q, abs=0.01)


def test_p_values_small_on_shifted_data() -> None:
    p = p_values(calibration(), np.random.default_rng(RNG_SEED).normal(3.0, 1.0, size=500))
    assert np.median(p) < 0.01 and p.min() == 0.005


@pytest.mark.parametrize("n,s", [(1, -0.5), (5, -2.0), (20, -20.0), (20, -60.0), (20, -106.0), (3, -0.01)])
def test_mixture_martingale_matches_closed_form(n: int, s: float) -> None:
    # integral_0^1 eps^n e^{(eps-1) S} d eps = e^b * gamma_lower(n+1, b) / b^(n+1) with b = -S
    b = -s
    expected = b + np.log(gammainc(n + 1, b)) + gammaln(n + 1) - (n + 1) * np.log(b)
    assert log_mixture_martingale(s, n) == pytest.approx(expected, rel=1e-6, abs=1e-8)


def test_power_martingale_formula() -> None:
    p = np.array([0.2, 0.5, 0.01])
    expected = np.log(np.prod(0.3 * p ** (0.3 - 1)))
    assert log_power_martingale(np.log(p).sum(), 3, 0.3) == pytest.approx(expected)


def test_martingales_are_calibrated_under_exchangeability() -> None:
    sums = np.log(np.random.default_rng(RNG_SEED).uniform(size=(40000, 20))).sum(1)
    # E[M] = 1; at eps = 0.8 the variance is finite, so the sample mean is a sharp check
    assert np.exp(log_power_martingale(sums, 20, 0.8)).mean() == pytest.approx(1.0, abs=0.05)
    # Markov: P(M >= 20) <= 1/20 for the mixture too (its mean is dominated by rare huge values)
    log_m = np.array([log_mixture_martingale(s, 20) for s in sums])
    assert np.mean(log_m >= np.log(20)) <= 0.05


@pytest.mark.parametrize("test", ["martingale", "cusum"])
@pytest.mark.parametrize("martingale", ["mixture", "power"])
def test_sequential_tests_quiet_then_alarm_on_shift(test: str, martingale: str) -> None:
    rng = np.random.default_rng(RNG_SEED)
    cal = calibration()
    cfg = AlarmConfig(test=test, martingale=martingale)
    quiet = monitor_sequence(cal, rng.normal(size=3000), cfg)
    assert not quiet["is_ood"].any()
    assert quiet["log_martingale"].max() < cfg.martingale_threshold
    assert quiet["cusum"].max() < cfg.cusum_threshold
    shifted = monitor_sequence(cal, np.r_[rng.normal(size=100), rng.normal(4.0, 1.0, size=100)], cfg)
    assert not shifted["is_ood"][:100].any()
    first = int(np.argmax(shifted["is_ood"][100:]))
    assert shifted["is_ood"][100 + first] and first <= 10
    assert shifted["log_martingale"][150] > 20
    assert shifted["cusum"][150] == pytest.approx(cfg.cusum_threshold + cfg.cusum_delta)  # capped


def test_capped_cusum_clears_soon_after_a_long_episode() -> None:
    rng = np.random.default_rng(RNG_SEED)
    cfg = AlarmConfig(test="cusum")
    episode = np.r_[rng.normal(size=50), np.full(200, 10.0), rng.normal(size=100)]
    out = monitor_sequence(calibration(), episode, cfg)
    assert out["is_ood"][60:250].all()  # a 200-frame episode at the p-value floor is alarmed throughout
    assert out["cusum"].max() <= cfg.cusum_threshold + cfg.cusum_delta
    assert not out["is_ood"][255:].any()  # and the alarm ends within a few nominal frames


@pytest.mark.parametrize("test", ["martingale", "cusum"])
def test_alarm_needs_the_newest_frames_own_evidence(test: str) -> None:
    """Two frames at the floor, then a middling nominal frame (p ~ 0.04): the window still holds enough
    to cross, but with the gate the alarm ends on that frame; without it (1: off) the alarm lingers."""
    cal = calibration(199)
    scores = np.r_[np.zeros(5), np.full(3, 10.0), [float(np.quantile(cal, 0.96))], np.zeros(5)]
    kw = dict(test=test, window=2, martingale_threshold=2.5, cusum_delta=2.0, cusum_threshold=6.0)
    gated = monitor_sequence(cal, scores, AlarmConfig(**kw))
    ungated = monitor_sequence(cal, scores, AlarmConfig(**kw, frame_p_max=1.0))
    assert 0.01 < gated["p_value"][8] < 0.1
    assert ungated["is_ood"][8] and not gated["is_ood"][8]
    assert gated["is_ood"][6:8].all() and (gated["is_ood"] <= ungated["is_ood"]).all()  # it only removes alarms


def test_frame_gate_never_makes_an_alarm_unreachable() -> None:
    """Without a tail no p-value falls below 1/(n+1) = 0.01 here: that becomes the gate."""
    cal = calibration(99)
    mon = ConformalMonitor(cal, AlarmConfig(window=2, martingale_threshold=2.0, p_floor=0.001, frame_p_max=0.005))
    assert mon.frame_p_gate == pytest.approx(0.01)
    assert [mon.update(10.0).is_ood for _ in range(2)] == [False, True]
    with pytest.raises(ValueError, match="frame_p_max"):
        AlarmConfig(frame_p_max=0.0)


def test_pvalue_test_alarms_per_frame() -> None:
    cal = calibration()
    out = monitor_sequence(cal, np.array([0.0, 5.0, 0.0]), AlarmConfig(test="pvalue", pvalue_threshold=0.01))
    assert list(out["is_ood"]) == [False, True, False]


def test_window_forgets_and_reset_clears() -> None:
    cal = calibration()
    mon = ConformalMonitor(cal, AlarmConfig(window=5))
    for _ in range(5):
        mon.update(10.0)
    high = mon.update(10.0)
    assert high.is_ood and high.cusum > 0
    for _ in range(5):
        low = mon.update(-10.0)  # p = 1 for every frame in the window
    assert low.log_martingale < 0 and not low.is_ood
    mon.update(10.0)
    mon.reset()
    fresh = mon.update(0.0)
    assert fresh.cusum == 0.0 and fresh.log_martingale == pytest.approx(log_mixture_martingale(np.log(fresh.p_value), 1))


def test_sequence_resets_at_boundaries() -> None:
    cal = calibration()
    scores = np.r_[np.full(10, 5.0), np.zeros(1)]
    seq = np.r_[np.zeros(10), np.ones(1)]
    with_reset = monitor_sequence(cal, scores, sequence=seq)
    without = monitor_sequence(cal, scores)
    assert with_reset["cusum"][-1] == 0.0 and without["cusum"][-1] > 0


def test_score_threshold_matches_p_values() -> None:
    cal = calibration(199)
    for alpha in (0.01, 0.05, 0.2):
        t = score_threshold(cal, alpha)
        assert p_values(cal, t + 1e-9, floor=0.0)[0] <= alpha < p_values(cal, t, floor=0.0)[0]
    assert score_threshold(cal, 0.001) == float("inf")


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError):
        AlarmConfig(test="vote")
    with pytest.raises(ValueError):
        AlarmConfig(epsilon=1.5)
    with pytest.raises(ValueError):
        ConformalMonitor(np.array([]))
    with pytest.raises(ValueError, match="finite"):
        ConformalMonitor(calibration()).update(float("nan"))


def test_tail_p_values_extend_past_the_calibration() -> None:
    cal = np.sort(np.random.default_rng(RNG_SEED).chisquare(10, size=199))
    inside = np.linspace(0.0, cal[-1], 50)
    np.testing.assert_array_equal(p_values(cal, inside, 0.0, 3.0), p_values(cal, inside, 0.0))
    beyond = cal[-1] * np.array([1.000001, 1.5, 2.0, 10.0])
    p = p_values(cal, beyond, 0.0, 3.0)
    assert p[0] == pytest.approx(1 / 200, rel=1e-4)  # continuous where the calibration ends
    np.testing.assert_allclose(p[1:], np.array([1.5, 2.0, 10.0]) ** -3.0 / 200)
    assert np.all(np.diff(p) < 0)
    assert p_values(cal, cal[-1] * 100, 1e-6, 3.0)[0] == 1e-6  # the floor still holds


def test_hill_tail_index_recovers_a_pareto_index() -> None:
    rng = np.random.default_rng(RNG_SEED)
    estimates = [hill_tail_index(np.sort(rng.pareto(3.0, size=2000) + 1.0)) for _ in range(10)]
    assert np.mean(estimates) == pytest.approx(3.0, rel=0.1)
    assert hill_tail_index(np.sort(rng.normal(-5.0, 0.1, size=100))) == 0.0  # non-positive scores: no tail


@pytest.mark.parametrize("draw", ["chisquare", "pareto", "lognormal"])
def test_tail_p_values_stay_close_to_valid_under_exchangeability(draw: str) -> None:
    """Fresh nominal frames get p <= q about q of the time, also for q far below 1/(n+1)."""
    rng = np.random.default_rng(RNG_SEED)
    sample = {"chisquare": lambda n: rng.chisquare(10, n), "pareto": lambda n: rng.pareto(3.0, n) + 1.0,
              "lognormal": lambda n: rng.lognormal(0.0, 1.0, n)}[draw]
    p = []
    for _ in range(20):
        cal = np.sort(sample(300))
        p.append(p_values(cal, sample(20_000), 0.0, hill_tail_index(cal)))
    p = np.concatenate(p)
    for q in (1e-3, 1e-4):
        assert np.mean(p <= q) <= 2.0 * q, q


def test_monitor_extrapolates_only_with_the_pareto_tail() -> None:
    cal = np.random.default_rng(RNG_SEED).chisquare(10, size=99)
    far = 10.0 * cal.max()
    plain = ConformalMonitor(cal, AlarmConfig(p_floor=1e-9))
    assert plain.tail_index == 0.0 and plain.p_value(far) == pytest.approx(0.01)
    estimated = ConformalMonitor(cal, AlarmConfig(p_floor=1e-9, tail="pareto"))
    assert estimated.tail_index == pytest.approx(hill_tail_index(np.sort(cal)))
    given = ConformalMonitor(cal, AlarmConfig(p_floor=1e-9, tail="pareto", tail_index=2.0))
    assert given.p_value(far) == pytest.approx(0.01 * 10.0 ** -2.0)
    with pytest.raises(ValueError, match="tail"):
        AlarmConfig(tail="gaussian")
