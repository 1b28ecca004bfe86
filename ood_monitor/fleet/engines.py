"""Scoring many recordings: in this process (`local`, the default) or on Ray (`ray`).

`score_sources` is the one entry point (evaluate uses it; calibrate can): each recording is scored
by the same core code (`scoring.score_source`), frames in order within the recording, and the per-frame
tables come back per model and per recording in input order, whichever engine ran them. A recording
that cannot be read is reported with its path and skipped; the others finish.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ood_monitor.fleet.scoring import DEFAULT_BATCH, ModelScorer, ScoreTable, score_source

ENGINES = ("local", "ray")


@dataclass
class ScoringJob:
    """What to score and how to read it (picklable: Ray ships it to every actor)."""

    models: list[str]
    image_topic: str = "/camera/image_raw"
    mask_topic: str | None = None
    labels: Any = None  # data.labels.LabelSpec
    batch: int = DEFAULT_BATCH


@dataclass
class FleetScores:
    """Per model (job.models order): one table per recording that was read, in input order."""

    models: list[str]
    sources: list[str]
    per_source: dict[str, list[ScoreTable]] = field(default_factory=dict)  # source -> one table per model
    failed: dict[str, str] = field(default_factory=dict)  # source -> why it was skipped
    seconds: float = 0.0  # wall time of the whole scoring, start-up included
    work_s: float = 0.0  # time spent reading and scoring, summed over workers
    engine: str = "local"
    workers: int = 1

    def table(self, model: int) -> ScoreTable:
        """Model `model`'s frames of every recording read, recordings in input order."""
        return ScoreTable.concat(self.per_source[s][model] for s in self.sources if s in self.per_source)

    @property
    def frames(self) -> int:
        return sum(len(t[0]) for t in self.per_source.values() if t)


def score_sources(sources: list[Path], job: ScoringJob, engine: str = "local", workers: int = 2,
                  address: str | None = None, progress: Callable[[str], None] | None = print) -> FleetScores:
    """Score every recording with every model of `job` on `engine` (local | ray)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "ray":
        from ood_monitor.fleet.ray_engine import score_on_ray

        return score_on_ray(sources, job, workers, address, progress)
    return score_local(sources, job, progress)


def score_local(sources: list[Path], job: ScoringJob, progress: Callable[[str], None] | None = print,
                scorers: list[Any] | None = None) -> FleetScores:
    """One recording after the other in this process (the models are loaded once)."""
    t0 = time.perf_counter()
    scorers = scorers or [ModelScorer(m) for m in job.models]
    result = FleetScores(job.models, [str(s) for s in sources])
    for src in sources:
        if progress is not None:
            progress(f"  scoring {src}")
        try:
            result.per_source[str(src)] = score_source(src, scorers, job.image_topic, job.mask_topic, job.labels,
                                                       job.batch, progress)
        except Exception as exc:  # noqa: BLE001 -- one damaged recording must not stop a fleet re-score
            result.failed[str(src)] = f"{type(exc).__name__}: {exc}"
            if progress is not None:
                progress(f"  skipped {src}: {exc}")
    result.seconds = result.work_s = time.perf_counter() - t0
    return result
