"""Alarm thresholds chosen for a false-alarm target on nominal data the score calibration never saw.

A fixed martingale threshold does not transfer between cameras: what log M can reach depends on how
many calibration frames there are (the smallest conformal p-value is 1/(n+1)), and what nominal frames
reach depends on how well the calibration covers the camera's ordinary variation (later stretches of a
drive are not exchangeable with earlier ones). So `calibrate` chooses the thresholds on the data:

1. The nominal frames are cut into contiguous blocks (temporal drift stays *between* blocks, where it
   shows). Each block is scored against the others as calibration (cross-fitting), so every frame gets
   the p-value a new frame of that kind of footage would get, and every block's alarm statistics are
   traced as the node traces them (window, CUSUM, restarts at sequence boundaries).
2. For each candidate window, the martingale threshold is the larger of the theoretical bound under
   exchangeability (log M > log(1000 / r) has probability <= r / 1000 per frame, by Markov's inequality
   on E[M] = 1) and the held-out traces' own level (at most r per 1000 held-out frames above it). CUSUM
   likewise, with Kingman's bound exp(-theta h) for its stationary tail.
3. Detection power left: the shortest run of frames at the p-value floor that crosses each threshold,
   and the largest log M a window can reach at all. The window that catches the shortest episode wins.
   If no window can cross its threshold, the data cannot support the target and calibration refuses.

The coverage check — the fraction of held-out nominal frames with p < 0.05, which is 5 % when the
calibration covers the footage — is reported, with a warning when it is far above.
Method: inductive conformal anomaly detection with martingales (docs/methods.md#conformal-martingales).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import NamedTuple

import numpy as np

from ood_monitor.core.conformal import (
    AlarmConfig,
    hill_tail_index,
    log_mixture_martingale,
    log_power_martingale,
    monitor_sequence,
    p_values,
)

WINDOWS = (2, 3, 4, 5, 6, 8, 10, 15, 20)
NOMINAL_P = 0.5  # a typical nominal frame's p-value, for the "shortest episode" estimate
SLOW_ALARM_FRAMES = 4  # a shortest catchable episode longer than this is warned of (0.2 s at 20 fps)
REFERENCE_EXCESS = 2.0  # with a tail: the "shortest episode" is counted at a score this many times the largest nominal one
MIN_BLOCK_FRAMES = 8


class AlarmCalibrationError(ValueError):
    """The nominal data cannot support the requested false-alarm target (the message says why, with numbers)."""


@dataclass(frozen=True)
class AlarmTarget:
    """What to calibrate for: `false_alarms_per_1000` alarmed frames per 1000 nominal frames, over
    `blocks` contiguous blocks, trying `windows` for the martingale."""

    false_alarms_per_1000: float = 1.0
    blocks: int = 5
    windows: tuple[int, ...] = WINDOWS
    martingale: str = "mixture"
    epsilon: float = 0.5
    cusum_delta: float = 2.0
    p_floor: float = 0.005
    tail: str = "none"
    score_tolerance: float = 1.0  # >= 1 fixed (1: none); 0: measured between the blocks (block_tolerance)
    coverage_alpha: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 < self.false_alarms_per_1000 < 1000.0:
            raise ValueError(f"false alarms per 1000 frames must be in (0, 1000), got {self.false_alarms_per_1000}")
        if self.blocks < 2:
            raise ValueError(f"alarm calibration needs at least 2 blocks, got {self.blocks}")
        if not self.windows or min(self.windows) < 1:
            raise ValueError("martingale windows must be >= 1")
        if self.score_tolerance != 0.0 and not self.score_tolerance >= 1.0:
            raise ValueError(f"score tolerance must be >= 1 (1: none) or 0 (measure it), got {self.score_tolerance}")

    @classmethod
    def from_settings(cls, stored: dict) -> AlarmTarget:
        """The target a stored alarm section (AlarmCalibration.to_dict) was calibrated for."""
        return cls(false_alarms_per_1000=float(stored.get("target_false_alarms_per_1000", 1.0)),
                   blocks=int(stored.get("heldout", {}).get("blocks", 5)),
                   martingale=stored.get("martingale", "mixture"), epsilon=float(stored.get("epsilon", 0.5)),
                   cusum_delta=float(stored.get("cusum_delta", 2.0)), p_floor=float(stored.get("p_floor", 0.005)),
                   tail=stored.get("tail", "none"),
                   score_tolerance=0.0 if stored.get("score_tolerance_measured") else
                   float(stored.get("score_tolerance", 1.0)))

    @property
    def rate(self) -> float:
        return self.false_alarms_per_1000 / 1000.0


@dataclass
class AlarmCalibration:
    """Chosen settings (AlarmConfig fields) and what was measured on the held-out blocks."""

    settings: dict
    heldout_frames: int
    coverage: float
    block_coverage: list[float]
    heldout_false_alarms_per_1000: dict[str, float]
    shortest_episode: dict[str, int | None]
    reachable_log_martingale: float
    p_min: float
    windows: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def alarm_config(self, test: str = "martingale") -> AlarmConfig:
        return AlarmConfig(test=test, **self.settings)

    def to_dict(self, target: AlarmTarget) -> dict:
        return {**self.settings, "target_false_alarms_per_1000": target.false_alarms_per_1000,
                "score_tolerance_measured": target.score_tolerance == 0.0,
                "heldout": {"frames": self.heldout_frames, "blocks": len(self.block_coverage),
                            "coverage_p05": self.coverage, "block_coverage_p05": self.block_coverage,
                            "false_alarms_per_1000": self.heldout_false_alarms_per_1000},
                "power": {"shortest_episode_frames": self.shortest_episode,
                          "reachable_log_martingale": self.reachable_log_martingale, "p_min": self.p_min},
                "windows": self.windows, "warnings": self.warnings}


def block_ids(sequence: np.ndarray, blocks: int) -> np.ndarray:
    """Contiguous block number of each frame: about `blocks` nearly equal stretches of the stream, each
    within one sequence. Every sequence gets a share of the blocks in proportion to its length (at least
    one), so a recording boundary never leaves a sliver of a block behind."""
    sequence = np.asarray(sequence)
    n = sequence.size
    starts = np.flatnonzero(np.r_[True, sequence[1:] != sequence[:-1]]) if n else np.zeros(0, np.int64)
    out = np.empty(n, np.int64)
    first = 0
    for a, b in zip(starts, np.r_[starts[1:], n], strict=True):
        share = max(1, int(round(blocks * (b - a) / n)))
        out[a:b] = first + np.arange(b - a) * share // (b - a)
        first += share
    return out


def cusum_theta(delta: float) -> float:
    """Adjustment coefficient of the CUSUM increment X = E - delta, E ~ Exp(1) (the -log p of an exact
    p-value): the theta > 0 with E[exp(theta X)] = exp(-theta delta) / (1 - theta) = 1 (bisection)."""
    if delta <= 1.0:
        raise ValueError(f"CUSUM delta must exceed 1 (the mean of -log p under no change), got {delta}")
    lo, hi = 1e-9, 1.0 - 1e-12
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if -mid * delta - math.log1p(-mid) < 0.0:
            lo = mid
        else:
            hi = mid
    return lo


def log_martingale(log_ps: np.ndarray, target: AlarmTarget) -> float:
    s, n = float(np.sum(log_ps)), len(log_ps)
    return log_mixture_martingale(s, n) if target.martingale == "mixture" else log_power_martingale(s, n, target.epsilon)


def martingale_run(window: int, run: int, p_min: float, target: AlarmTarget) -> float:
    """log M of a window holding `run` p-values at the floor and the rest typical nominal ones."""
    logs = np.r_[np.full(run, math.log(p_min)), np.full(window - run, math.log(NOMINAL_P))]
    return log_martingale(logs, target)


def shortest_martingale_run(window: int, threshold: float, p_min: float, target: AlarmTarget) -> int | None:
    """Fewest consecutive floor p-values that push log M over `threshold` (None: not even a full window)."""
    for run in range(1, window + 1):
        if martingale_run(window, run, p_min, target) > threshold:
            return run
    return None


def shortest_cusum_run(threshold: float, delta: float, p_min: float) -> int | None:
    step = -math.log(p_min) - delta
    return None if step <= 0 else int(math.floor(threshold / step)) + 1


def level_with_budget(trace: np.ndarray, allowed: int) -> float:
    """Smallest threshold with at most `allowed` trace values strictly above it."""
    ordered = np.sort(np.asarray(trace, np.float64))[::-1]
    return float(ordered[allowed]) if allowed < ordered.size else float("-inf")


class Fold(NamedTuple):
    """One held-out block of the nominal data: the calibration the other blocks give it, its own scores,
    and the score tolerance it is checked with (measured on the other blocks only)."""

    calibration: np.ndarray
    heldout: np.ndarray
    tolerance: float


def score_folds(scores: np.ndarray, blocks: np.ndarray, tolerance: dict[int, float] | None = None) -> dict[int, Fold]:
    """The folds of one score: each block against all the others, with its `heldout_tolerances` entry."""
    return {int(b): Fold(scores[blocks != b], scores[blocks == b], tolerance[int(b)] if tolerance else 1.0)
            for b in np.unique(blocks)}


def heldout_pvalues(folds: dict[int, Fold], blocks: np.ndarray, floor: float, tail_index: float = 0.0) -> np.ndarray:
    """Each frame's conformal p-value against the frames of every other block (cross-fitting), its score
    divided by the held-out block's score tolerance."""
    p = np.empty(blocks.size)
    for b, fold in folds.items():
        p[blocks == b] = p_values(np.sort(fold.calibration), fold.heldout, floor, tail_index, fold.tolerance)
    return p


def block_tolerance(scores: np.ndarray, blocks: np.ndarray) -> float:
    """The score tolerance the nominal data asks for: the largest factor by which a contiguous block's top
    score exceeds the top score of all blocks before it (1 if none does). Within a block, frames are
    near-duplicates; later the camera has moved on, and how far a new stretch went past everything seen
    before it is how far the next one may go past the calibration (conformal.py: Score tolerance)."""
    kappa, top = 1.0, None
    for b in np.unique(blocks):  # block ids follow the stream
        peak = float(scores[blocks == b].max())
        if top is not None and top > 0.0:
            kappa = max(kappa, peak / top)
        top = peak if top is None else max(top, peak)
    return kappa


def heldout_tolerances(scores: np.ndarray, blocks: np.ndarray, target: AlarmTarget) -> dict[int, float]:
    """The score tolerance each held-out block is checked with: the target's fixed one, or (measured)
    `block_tolerance` of the other blocks only, so the check never sees the block it checks."""
    if target.score_tolerance:
        return {int(b): target.score_tolerance for b in np.unique(blocks)}
    return {int(b): block_tolerance(scores[blocks != b], blocks[blocks != b]) for b in np.unique(blocks)}


def drift_tail_index(scores: np.ndarray, blocks: np.ndarray, tolerance: float = 1.0,
                     folds: dict[int, Fold] | None = None) -> float:
    """The Pareto index p-values are extrapolated with: the heavier (smaller) of Hill's estimate over all
    nominal scores and the one the blocks themselves show, i.e. how far each held-out block's frames go
    past `tolerance` times the largest score of the other blocks (the MLE of a Pareto index from those
    excess ratios). Within one stretch of footage the tail is light; between stretches (later in the
    drive, another session) nominal frames overshoot further, and that is the overshoot a new stretch
    will show. `folds`: the held-out blocks' scores as `score_folds` (or a fused score's folds) give them."""
    hill = hill_tail_index(np.sort(scores))
    log_excess = []
    for fold in (folds or score_folds(scores, blocks)).values():
        top = tolerance * fold.calibration.max()
        if top > 0:
            over = fold.heldout[fold.heldout > top]
            log_excess.extend(np.log(over / top))
    if not log_excess or hill == 0.0:
        return hill
    return min(hill, len(log_excess) / max(float(np.sum(log_excess)), 1e-12))


def reference_p(n: int, tail_index: float, floor: float) -> float:
    """The p-value the "shortest episode" is counted at: the conformal floor 1/(n+1), or with a tail the
    p-value of a score REFERENCE_EXCESS times the largest nominal one (never below `floor`)."""
    return max(floor, REFERENCE_EXCESS ** -tail_index / (n + 1.0))


def heldout_traces(folds: dict[int, Fold], blocks: np.ndarray, cfg: AlarmConfig) -> dict[str, np.ndarray]:
    """log M and (uncapped) CUSUM over each held-out block, as the node would run them with the other
    blocks as calibration (and the block's score tolerance); restarts at every block boundary."""
    out = {"log_martingale": np.empty(blocks.size), "cusum": np.empty(blocks.size)}
    for b, fold in folds.items():
        held = blocks == b
        cfg_uncapped = AlarmConfig(**{**asdict(cfg), "cusum_threshold": 1e12, "score_tolerance": fold.tolerance})
        trace = monitor_sequence(fold.calibration, fold.heldout, cfg_uncapped)
        out["log_martingale"][held] = trace["log_martingale"]
        out["cusum"][held] = trace["cusum"]
    return out


def alarm_blocks(n: int, sequence: np.ndarray | None, target: AlarmTarget) -> tuple[int, np.ndarray]:
    """How many contiguous blocks n nominal frames are cut into for `target`, and each frame's block."""
    sequence = np.zeros(n, np.int64) if sequence is None else np.asarray(sequence)
    n_blocks = min(target.blocks, n // MIN_BLOCK_FRAMES)
    return n_blocks, block_ids(sequence, max(n_blocks, 1))


@dataclass(frozen=True)
class PartFusion:
    """How the parts of a fused score (core/nonconformity.FUSED) are put on one scale: each part is
    divided by its tolerance times its largest nominal score (`scales`), and the fused score, the largest
    of them, is compared with its calibration under the smaller tolerance (`tolerance`). A frame then
    passes the calibration's range exactly when one of its parts passes its own tolerance times its own
    largest nominal score, so a part that drifts little keeps its narrow margin beside one that drifts
    much (docs/methods.md#photometric-part)."""

    tolerances: tuple[float, ...]
    maxima: tuple[float, ...]

    @property
    def scales(self) -> tuple[float, ...]:
        return tuple(k * m for k, m in zip(self.tolerances, self.maxima, strict=True))

    @property
    def tolerance(self) -> float:
        return min(self.tolerances)

    def fuse(self, parts: np.ndarray) -> np.ndarray:
        return (np.asarray(parts, np.float64) / np.asarray(self.scales)).max(axis=1)

    def to_dict(self, measured: bool = True) -> dict:
        """The card's record; `measured`: the tolerances were measured between the blocks (not fixed)."""
        return {"scales": list(self.scales), "tolerances": list(self.tolerances), "maxima": list(self.maxima),
                "measured": measured}


def fuse_parts(parts: np.ndarray, blocks: np.ndarray, target: AlarmTarget) -> PartFusion:
    """Each part's tolerance (the target's, or measured between the `blocks` as for a single score) and
    largest score on the nominal (N, parts) `parts`."""
    parts = np.asarray(parts, np.float64)
    if parts.ndim != 2 or parts.shape[1] < 2 or not np.all(np.isfinite(parts)) or parts.min() < 0:
        raise AlarmCalibrationError("fused scores need an (N, parts >= 2) array of finite non-negative part scores")
    maxima = tuple(max(float(parts[:, j].max()), 1e-12) for j in range(parts.shape[1]))
    tolerances = tuple(target.score_tolerance or block_tolerance(parts[:, j], blocks) for j in range(parts.shape[1]))
    return PartFusion(tolerances, maxima)


def fused_folds(parts: np.ndarray, blocks: np.ndarray, target: AlarmTarget) -> dict[int, Fold]:
    """The folds of a fused score: for each held-out block, the parts' scales fitted on the other blocks
    only, so the held-out check never sees the block it checks (as `heldout_tolerances` for one score)."""
    folds = {}
    for b in np.unique(blocks):
        held = blocks == b
        fusion = fuse_parts(parts[~held], blocks[~held], target)
        folds[int(b)] = Fold(fusion.fuse(parts[~held]), fusion.fuse(parts[held]), fusion.tolerance)
    return folds


def calibrate_fused(parts: np.ndarray, sequence: np.ndarray | None, target: AlarmTarget
                    ) -> tuple[PartFusion, np.ndarray, AlarmTarget, AlarmCalibration]:
    """A fused score's part scales on the nominal (N, parts) `parts`, the fused nominal scores, the target
    their alarms are calibrated for (the smaller part tolerance, fixed) and the alarm calibration, whose
    held-out blocks each get part scales fitted without them."""
    parts = np.asarray(parts, np.float64)
    _, blocks = alarm_blocks(len(parts), sequence, target)
    fusion = fuse_parts(parts, blocks, target)
    scores, fixed = fusion.fuse(parts), replace(target, score_tolerance=round_up(fusion.tolerance))
    alarms = calibrate_alarms(scores, sequence, fixed, folds=lambda b: fused_folds(parts, b, target))
    return fusion, scores, fixed, alarms


def calibrate_alarms(scores: np.ndarray, sequence: np.ndarray | None = None, target: AlarmTarget | None = None,
                     folds: Callable[[np.ndarray], dict[int, Fold]] | None = None) -> AlarmCalibration:
    """Choose martingale window/threshold and CUSUM threshold for `target` on nominal `scores` (stream
    order; `sequence` changes where the stream restarts, e.g. between recordings)."""
    target = target or AlarmTarget()
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 1 or not np.all(np.isfinite(scores)):
        raise AlarmCalibrationError("nominal scores must be a 1-D array of finite numbers")
    n_blocks, blocks = alarm_blocks(scores.size, sequence, target)
    sizes = np.bincount(blocks)
    if n_blocks < 2 or sizes.min() < MIN_BLOCK_FRAMES // 2:
        raise AlarmCalibrationError(
            f"{scores.size} nominal frames ({len(sizes)} blocks of {sizes.min()}..{sizes.max()} frames): alarm "
            f"calibration needs at least 2 blocks of {MIN_BLOCK_FRAMES}+ frames; record more nominal footage")
    warnings: list[str] = []
    if n_blocks < target.blocks:
        warnings.append(f"{scores.size} nominal frames: {n_blocks} blocks instead of {target.blocks}")
    kappa = target.score_tolerance or block_tolerance(scores, blocks)
    held = folds(blocks) if folds else score_folds(scores, blocks, heldout_tolerances(scores, blocks, target))
    tail_index = drift_tail_index(scores, blocks, kappa, held) if target.tail == "pareto" else 0.0
    p = heldout_pvalues(held, blocks, target.p_floor, tail_index)
    low = p < target.coverage_alpha
    coverage = float(low.mean())
    block_coverage = [float(low[blocks == b].mean()) for b in np.unique(blocks)]
    if coverage > 2 * target.coverage_alpha:
        warnings.append(f"coverage: {coverage:.1%} of held-out nominal frames have p < {target.coverage_alpha} "
                        f"(exchangeable data: {target.coverage_alpha:.0%}); the calibration does not cover "
                        f"this footage's nominal variation; blocks {fmt_blocks(block_coverage)}: record "
                        f"nominal footage from more places, times and days")
    odd = unusual_blocks(low, blocks, target.coverage_alpha)
    if odd:
        warnings.append(f"blocks not exchangeable: block(s) {', '.join(map(str, odd))} of {len(block_coverage)} have "
                        f"far more p < {target.coverage_alpha} than chance allows ({fmt_blocks(block_coverage)}): "
                        f"those stretches look unlike the rest of the nominal footage")
    n = scores.size
    p_min = reference_p(n, tail_index, target.p_floor)
    allowed = int(math.floor(target.rate * n))
    if n * target.rate < 1.0:
        warnings.append(f"{n} held-out frames can show a false-alarm rate down to {1000.0 / n:.1f} per 1000 only: "
                        f"the {target.false_alarms_per_1000:g} per 1000 target rests on the exchangeability "
                        f"bound (record {int(math.ceil(1.0 / target.rate))}+ nominal frames to check it)")
    base = AlarmConfig(martingale=target.martingale, epsilon=target.epsilon, cusum_delta=target.cusum_delta,
                       p_floor=target.p_floor, tail=target.tail, tail_index=round(tail_index, 6),
                       score_tolerance=round_up(kappa))
    bound = math.log(1.0 / target.rate)
    rows, best = [], None
    for window in target.windows:
        trace = heldout_traces(held, blocks, AlarmConfig(**{**asdict(base), "window": window}))
        threshold = max(bound, level_with_budget(trace["log_martingale"], allowed))
        run = shortest_martingale_run(window, threshold, p_min, target)
        reach = martingale_run(window, window, p_min, target)
        rows.append({"window": window, "threshold": round(threshold, 4), "reachable": round(reach, 4),
                     "shortest_episode": run})
        if run is not None and (best is None or run < best[1]):
            best = (window, run, threshold, trace)
    if best is None:
        detail = "; ".join(f"window {r['window']}: needs {r['threshold']:.1f}, reaches {r['reachable']:.1f}"
                           for r in rows)
        raise AlarmCalibrationError(
            f"no martingale window can raise an alarm at {target.false_alarms_per_1000:g} false alarms per 1000 "
            f"frames on this data ({n} nominal frames, smallest p-value {p_min:.4f}, held-out coverage "
            f"{coverage:.1%}): {detail}. More calibration frames lower the p-value floor; nominal footage that "
            f"covers more variation lowers the held-out level; a higher --false-alarms-per-1000 lowers both")
    window, run, threshold, trace = best
    if run > SLOW_ALARM_FRAMES:
        far = "score twice the largest nominal score" if target.tail == "pareto" else "score past every nominal one"
        warnings.append(slow_alarm_warning(window, run, threshold, bound, p_min, trace["log_martingale"], blocks, far))
    h = max(bound / cusum_theta(target.cusum_delta), level_with_budget(trace["cusum"], allowed))
    cusum_run = shortest_cusum_run(h, target.cusum_delta, p_min)
    settings = {**asdict(base), "window": window, "martingale_threshold": round_up(threshold),
                "cusum_threshold": round_up(h)}
    settings.pop("test")
    settings.pop("frame_p_max")  # a node parameter, not calibrated: the card never decides it
    fa = {"martingale": 1000.0 * float((trace["log_martingale"] > threshold).mean()),
          "cusum": 1000.0 * float((trace["cusum"] > h).mean())}
    return AlarmCalibration(settings, n, coverage, block_coverage, fa,
                            {"martingale": run, "cusum": cusum_run},
                            round(martingale_run(window, window, p_min, target), 4), p_min, rows, warnings)


def slow_alarm_warning(window: int, run: int, threshold: float, bound: float, p_min: float,
                       heldout_log_m: np.ndarray, blocks: np.ndarray, far: str) -> str:
    """Why the alarms will miss short anomalies, in numbers: the nominal blocks' own level (the threshold
    sits above the highest log M they reached) or the p-value a far frame gets (too few or too spread
    calibration scores)."""
    head = (f"the martingale alarms only after {run} frames in a row {far} (window {window}, threshold "
            f"{threshold:.1f}): shorter anomalies raise no alarm. ")
    if threshold > bound + 1e-9:
        worst = int(blocks[int(np.argmax(heldout_log_m))])
        return head + (f"The nominal footage itself reached log M {float(np.max(heldout_log_m)):.1f} (block {worst}); "
                       "calibration footage that covers that stretch's variation, or a higher "
                       "--false-alarms-per-1000, lowers the threshold")
    return head + (f"Such a frame gets p = {p_min:.2g} only; more calibration frames (or less spread between "
                   "their blocks) lower it")


def unusual_blocks(low: np.ndarray, blocks: np.ndarray, alpha: float, significance: float = 1e-3) -> list[int]:
    """Blocks whose count of small p-values is implausible under exchangeability (binomial tail)."""
    from scipy.stats import binom

    odd = []
    for b in np.unique(blocks):
        sel = low[blocks == b]
        if binom.sf(int(sel.sum()) - 1, sel.size, alpha) < significance:
            odd.append(int(b))
    return odd


# settings added later: what a model stored without them runs
OPTIONAL_ALARM = {"tail": "none", "tail_index": 0.0, "score_tolerance": 1.0}
UNCALIBRATED = ("pvalue_threshold", "frame_p_max")  # fixed settings: a parameter or AlarmConfig's default
CALIBRATED = ("martingale", "epsilon", "window", "martingale_threshold", "cusum_delta", "cusum_threshold", "p_floor",
              "tail", "tail_index", "score_tolerance")


def resolve_alarm(test: str, overrides: dict, stored: Callable[[], dict]) -> AlarmConfig:
    """The alarm a detector runs: explicit settings in `overrides` win; the calibrated ones (0 or "" in
    `overrides`, or absent) come from `stored()` (a model card's `alarm_settings`), which is only asked
    for when something is left to take from it."""
    explicit = {k: v for k, v in overrides.items() if k in CALIBRATED + UNCALIBRATED and v not in ("", 0)}
    unused = {"tail_index"} if explicit.get("tail") == "none" else set()  # no tail: its index is never read
    missing = [k for k in CALIBRATED if k not in explicit and k not in unused]
    base = {**OPTIONAL_ALARM, **stored()} if missing else {}
    return AlarmConfig(test=test, **{k: base[k] for k in missing}, **explicit)


def round_up(value: float, digits: int = 4) -> float:
    """Rounded for config.json, never below the chosen value (a threshold must not lose its bound)."""
    return math.ceil(value * 10**digits) / 10**digits


def fmt_blocks(values: list[float]) -> str:
    return ", ".join(f"{v:.0%}" for v in values)
