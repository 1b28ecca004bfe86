"""Rolling anomaly costmap and the speed-limit policy the Nav2 bridge publishes (ROS-free).

The grid is centred on the robot and scrolls with it in whole cells, so marks stay where they were on
the ground; every cell's evidence decays exponentially, so a detection that is not seen again fades
instead of blocking the path forever. Costs are OccupancyGrid values 0..100 (0 = no anomaly seen).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CostmapConfig:
    resolution: float = 0.1  # m per cell
    size_m: float = 12.0  # width and height of the square window around the robot
    decay_time_s: float = 2.0  # evidence time constant (e-folding); <= 0 disables decay
    min_confidence: float = 0.0  # points below this confidence do not mark

    def __post_init__(self) -> None:
        if self.resolution <= 0 or self.size_m < self.resolution:
            raise ValueError(f"resolution must be > 0 and size_m >= resolution, got {self.resolution}, {self.size_m}")

    @property
    def cells(self) -> int:
        return int(round(self.size_m / self.resolution))


class RollingCostmap:
    """Evidence in [0, 1] per cell; `origin` (x, y of cell (0, 0)'s corner) follows the robot."""

    def __init__(self, cfg: CostmapConfig | None = None) -> None:
        self.cfg = cfg or CostmapConfig()
        n = self.cfg.cells
        self.grid = np.zeros((n, n), np.float32)  # [row = y, col = x]
        self.origin = np.array([-n * self.cfg.resolution / 2, -n * self.cfg.resolution / 2])
        self.stamp_s: float | None = None

    def _origin_for(self, robot_xy: np.ndarray) -> np.ndarray:
        res, half = self.cfg.resolution, self.cfg.cells * self.cfg.resolution / 2
        return np.floor((np.asarray(robot_xy, float) - half) / res + 0.5) * res

    def follow(self, robot_xy) -> None:
        """Re-centre on the robot, shifting the grid by whole cells (cells that leave it are lost)."""
        new = self._origin_for(robot_xy)
        shift = np.rint((new - self.origin) / self.cfg.resolution).astype(int)
        if shift.any():
            self.grid = _shift(self.grid, -shift[1], -shift[0])
            self.origin = self.origin + shift * self.cfg.resolution

    def decay(self, stamp_s: float) -> None:
        """Exponential decay up to `stamp_s`; stamps going back (a replayed bag) decay nothing."""
        if self.stamp_s is not None and self.cfg.decay_time_s > 0:
            dt = stamp_s - self.stamp_s
            if dt > 0:
                self.grid *= math.exp(-dt / self.cfg.decay_time_s)
        self.stamp_s = stamp_s if self.stamp_s is None else max(self.stamp_s, stamp_s)

    def mark(self, points_xy: np.ndarray, confidence: np.ndarray) -> int:
        """Raise cells to the confidence of the points in them; returns how many points landed inside."""
        pts = np.asarray(points_xy, float).reshape(-1, 2)
        conf = np.asarray(confidence, np.float32).reshape(-1)
        cells = np.floor((pts - self.origin) / self.cfg.resolution).astype(int)
        n = self.cfg.cells
        inside = (cells >= 0).all(axis=1) & (cells < n).all(axis=1) & (conf >= self.cfg.min_confidence)
        cols, rows = cells[inside, 0], cells[inside, 1]
        np.maximum.at(self.grid, (rows, cols), np.clip(conf[inside], 0.0, 1.0))
        return int(inside.sum())

    def update(self, stamp_s: float, robot_xy, points_xy: np.ndarray, confidence: np.ndarray) -> int:
        self.follow(robot_xy)
        self.decay(stamp_s)
        return self.mark(points_xy, confidence)

    def occupancy(self) -> np.ndarray:
        """int8 OccupancyGrid data (row-major from the origin): 0..100."""
        return np.rint(self.grid * 100.0).astype(np.int8)


def _shift(grid: np.ndarray, drow: int, dcol: int) -> np.ndarray:
    """grid moved by (drow, dcol) cells, zero-filled."""
    out = np.zeros_like(grid)
    h, w = grid.shape
    if abs(drow) >= h or abs(dcol) >= w:
        return out
    src = grid[max(0, -drow):h - max(0, drow), max(0, -dcol):w - max(0, dcol)]
    out[max(0, drow):max(0, drow) + src.shape[0], max(0, dcol):max(0, dcol) + src.shape[1]] = src
    return out


@dataclass(frozen=True)
class SpeedPolicy:
    """Frame score -> speed limit in percent of the controller's maximum: 100 below `slow_score`,
    falling linearly to `min_percent` at `stop_score`; a limit is held `hold_s` after the last high score
    so one clean frame does not release it."""

    slow_score: float = 0.4
    stop_score: float = 0.8
    min_percent: float = 20.0
    hold_s: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.slow_score < self.stop_score <= 1.0 or not 0.0 <= self.min_percent <= 100.0:
            raise ValueError("need 0 <= slow_score < stop_score <= 1 and 0 <= min_percent <= 100")

    def percent(self, score: float) -> float:
        if not math.isfinite(score) or score <= self.slow_score:
            return 100.0
        frac = min(1.0, (score - self.slow_score) / (self.stop_score - self.slow_score))
        return 100.0 - frac * (100.0 - self.min_percent)


class SpeedLimiter:
    """Applies a SpeedPolicy over time (the hold)."""

    def __init__(self, policy: SpeedPolicy | None = None) -> None:
        self.policy = policy or SpeedPolicy()
        self._held = 100.0
        self._held_at: float | None = None

    def update(self, stamp_s: float, score: float) -> float:
        now = self.policy.percent(score)
        if self._held_at is not None and now > self._held and 0 <= stamp_s - self._held_at < self.policy.hold_s:
            return self._held
        self._held, self._held_at = now, stamp_s if now < 100.0 else None
        return now
