"""Scoring many recordings: in this process (`local`, the default) or on Ray (`ray`).

`score_sources` is the one entry point (evaluate and calibrate use it): each recording is scored
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
    score: str | None = None  # calibrate --score: score every model with this nonconformity, not its card's
    limit: int | None = None  # frames scored per recording at most (calibrate --max-frames)
    chunk_frames: int | None = None  # ray: one read task per this many frames of a recording (None: per recording)


@dataclass
class FleetScores:
    """Per model (job.models order): one table per recording that was read, in input order."""

    models: list[str]
    sources: list[str]
    per_source: dict[str, list[ScoreTable]] = field(default_factory=dict)  # source -> one table per model
    failed: dict[str, str] = field(default_factory=dict)  # source -> why it was skipped
    seconds: float = 0.0  # wall time of the whole scoring, start-up included
    work_s: float = 0.0  # time spent reading and scoring, summed over workers
    startup_s: float = 0.0  # from the start to the first task's first read (Ray: workers started, models loaded)
    engine: str = "local"
    workers: int = 1
    tasks: int = 0  # read tasks: one per recording, or per chunk of one (ray --chunk-frames)

    def table(self, model: int) -> ScoreTable:
        """Model `model`'s frames of every recording read, recordings in input order."""
        return ScoreTable.concat(self.per_source[s][model] for s in self.sources if s in self.per_source)

    @property
    def frames(self) -> int:
        return sum(len(t[0]) for t in self.per_source.values() if t)

    def require_some(self) -> None:
        """ValueError naming every input and why when none could be read (nothing to evaluate or calibrate)."""
        if not self.per_source:
            raise ValueError(f"none of the {len(self.sources)} input(s) could be read: "
                             + "; ".join(f"{p}: {why}" for p, why in self.failed.items()))

    def failure_note(self, command: str) -> str:
        """The stderr line of a command whose inputs partly failed ("" when none did)."""
        if not self.failed:
            return ""
        return (f"ood-monitor {command}: {len(self.failed)} of {len(self.sources)} input(s) failed and were "
                "skipped: " + "; ".join(f"{p} ({why})" for p, why in self.failed.items()))


def score_sources(sources: list[Path], job: ScoringJob, engine: str = "local", workers: int = 2,
                  address: str | None = None, progress: Callable[[str], None] | None = print,
                  threads: int = 1, scorers: list[Any] | None = None) -> FleetScores:
    """Score every recording with every model of `job` on `engine` (local | ray); `threads`: torch
    threads of this process (local) or of each actor (ray); `scorers`: the job's models already loaded
    in this process (the local engine uses them; Ray actors load their own). `job.chunk_frames` only
    splits Ray's tasks: locally the recordings are read whole, one after the other."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "ray":
        from ood_monitor.fleet.ray_engine import score_on_ray

        return score_on_ray(sources, job, workers, address, progress, threads=threads)
    import torch

    torch.set_num_threads(max(1, threads))
    return score_local(sources, job, progress, scorers)


def score_local(sources: list[Path], job: ScoringJob, progress: Callable[[str], None] | None = print,
                scorers: list[Any] | None = None) -> FleetScores:
    """One recording after the other in this process (the models are loaded once)."""
    t0 = time.perf_counter()
    scorers = scorers or [ModelScorer(m, job.score, calibrated=False) for m in job.models]
    result = FleetScores(job.models, [str(s) for s in sources], tasks=len(sources))
    result.startup_s = time.perf_counter() - t0
    for src in sources:
        if progress is not None:
            progress(f"  scoring {src}")
        try:
            result.per_source[str(src)] = score_source(src, scorers, job.image_topic, job.mask_topic, job.labels,
                                                       job.batch, progress, limit=job.limit)
        except Exception as exc:  # noqa: BLE001 -- one damaged recording must not stop a fleet re-score
            result.failed[str(src)] = f"{type(exc).__name__}: {exc}"
            if progress is not None:
                progress(f"  skipped {src}: {exc}")
    result.seconds = result.work_s = time.perf_counter() - t0
    return result
