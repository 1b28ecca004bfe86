"""The `ray` engine: a Ray Data pipeline over the recordings.

One read task per recording (`from_items`, one block each), `map_batches` onto a pool of `workers`
actors (`SourceScorer`), each of which loads every model once and scores its recordings with the same
core code as the local engine, frames in order (flow and alarms are sequential). Rows come back per
frame (model, recording, position, ground truth, score); the driver puts them back in input order, so
the results equal the local engine's. Ray restarts a dead actor and retries its task, so a worker killed
mid-run still yields complete results. A recording that cannot be read comes back as one error row and
is reported, not retried.

On one machine `ray.init()` starts Ray in this process; `address` ("auto", "ray://host:10001") attaches
to a running cluster (`ray start --head`), whose nodes must have this package and the model folders.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ood_monitor.fleet.engines import FleetScores, ScoringJob
from ood_monitor.fleet.scoring import ScoreTable

LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024  # rows are scalars: a small store leaves memory to the models
EMPTY, FAILED = -2, -1  # `model` of a recording's marker row: read without frames / could not be read
COLUMNS = ("model", "order", "source", "frame", "stamp_ns", "is_ood", "category", "kind", "episode", "score")


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Start Ray in this process (or attach to `address`) unless it is already running."""
    import ray

    if ray.is_initialized():
        return
    common = {"include_dashboard": False, "logging_level": "WARNING", "configure_logging": True}
    if address:
        ray.init(address=address, **common)
    else:
        # "local": always a new in-process instance, never a cluster a `ray start` left recorded in /tmp/ray
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1,
                 object_store_memory=LOCAL_OBJECT_STORE_BYTES, **common)
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def _batch(n: int, **columns: Any) -> dict[str, np.ndarray]:
    """An output batch with every column (Ray Data needs one schema): defaults for those not given."""
    defaults = {"model": 0, "order": 0, "source": "", "frame": 0, "stamp_ns": 0, "is_ood": False, "category": "",
                "kind": "", "episode": 0, "score": 0.0, "position": 0, "error": "", "work_s": 0.0}
    out = {}
    for name, default in defaults.items():
        value = columns.get(name, default)
        out[name] = np.asarray(value) if np.ndim(value) else np.full(n, value)
    return out


class SourceScorer:
    """A Ray Data actor: the job's models loaded once; each call scores one recording. `JOB` and
    `THREADS` are set on a subclass made per run (`actor_class`), so nothing rides in the object store
    that a restarted actor would need."""

    JOB: ScoringJob
    THREADS = 1

    def __init__(self) -> None:
        import cv2
        import torch

        from ood_monitor.fleet.scoring import ModelScorer

        torch.set_num_threads(max(1, self.THREADS))
        cv2.setNumThreads(max(1, self.THREADS))  # resize and DIS flow: actors share the cores, not each all of them
        self.job = self.JOB
        self.scorers = [ModelScorer(m) for m in self.job.models]

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        from ood_monitor.fleet.scoring import score_source

        for order, source in zip(batch["order"], batch["source"], strict=True):
            self._fault_injection(str(source))
            t0 = time.perf_counter()
            try:
                tables = score_source(source, self.scorers, self.job.image_topic, self.job.mask_topic, self.job.labels,
                                      self.job.batch)
            except Exception as exc:  # noqa: BLE001 -- one damaged recording must not stop a fleet re-score
                yield _batch(1, order=int(order), source=str(source), model=FAILED, error=f"{type(exc).__name__}: {exc}")
                continue
            work = time.perf_counter() - t0
            if not any(len(t) for t in tables):  # read, but no frame for any model (e.g. one frame, flow only)
                yield _batch(1, order=int(order), source=str(source), model=EMPTY, work_s=work)
                continue
            for m, table in enumerate(tables):
                n = len(table)
                if n:
                    yield _batch(n, model=m, order=int(order), source=table.source.astype(str), frame=table.frame,
                                 stamp_ns=table.stamp_ns, is_ood=table.is_ood, category=table.category.astype(str),
                                 kind=table.kind.astype(str), episode=table.episode, score=table.score,
                                 position=np.arange(n), work_s=np.full(n, work / n if m == 0 else 0.0))

    def _fault_injection(self, source: str) -> None:
        """Tests: with OOD_MONITOR_FLEET_KILL_ONCE=<path>, the first call (on any actor) that finds no file
        there creates it and kills its own process mid-run, as a lost worker would."""
        marker = os.environ.get("OOD_MONITOR_FLEET_KILL_ONCE")
        if marker and not Path(marker).exists():
            Path(marker).write_text(f"killed while scoring {source} in pid {os.getpid()}\n")
            os.kill(os.getpid(), 9)


def actor_class(job: ScoringJob, threads: int) -> type:
    """SourceScorer bound to this job (a class made here is pickled by value with its attributes)."""
    return type("SourceScorer", (SourceScorer,), {"JOB": job, "THREADS": threads})


def score_on_ray(sources: list[Path], job: ScoringJob, workers: int = 2, address: str | None = None,
                 progress: Callable[[str], None] | None = print, threads: int = 1,
                 runtime_env: dict | None = None) -> FleetScores:
    """Score every recording on a pool of `workers` Ray actors (`threads` torch threads each);
    `runtime_env` goes to the actors (e.g. env_vars, or a working_dir on a remote cluster)."""
    import ray

    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    t0 = time.perf_counter()
    ensure_ray(address, num_cpus=max(workers, os.cpu_count() or 1))
    items = [{"order": i, "source": str(s)} for i, s in enumerate(sources)]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    # Ray Data's actor pools restart dead actors and retry their tasks by default (max_restarts=-1)
    scored = ds.map_batches(actor_class(job, threads), batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers),
                            num_cpus=threads, batch_format="numpy",
                            **({"runtime_env": runtime_env} if runtime_env else {}))
    columns: dict[str, list] = {}
    for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
        for name, values in batch.items():
            columns.setdefault(name, []).append(np.asarray(values))
    result = FleetScores(job.models, [str(s) for s in sources], engine="ray", workers=workers)
    if columns:
        data = {name: np.concatenate(parts) for name, parts in columns.items()}
        _collect(result, data, len(job.models))
    missing = [s for s in result.sources if s not in result.per_source and s not in result.failed]
    for s in missing:  # Ray gave up on a task (it retried): say so rather than report partial results
        result.failed[s] = "no result came back from Ray"
    result.seconds = time.perf_counter() - t0
    if progress is not None:
        for s, why in result.failed.items():
            progress(f"  skipped {s}: {why}")
    return result


def _collect(result: FleetScores, data: dict[str, np.ndarray], n_models: int) -> None:
    """Rows -> one table per model per recording, rows ordered as the recording was read."""
    for i in np.flatnonzero(data["model"] == FAILED):
        result.failed[result.sources[int(data["order"][i])]] = str(data["error"][i])
    for i in np.flatnonzero(data["model"] == EMPTY):
        result.per_source[result.sources[int(data["order"][i])]] = [ScoreTable.empty() for _ in range(n_models)]
    result.work_s = float(data["work_s"].sum())
    keep = data["model"] >= 0
    rows = {name: values[keep] for name, values in data.items()}
    order = np.lexsort((rows["position"], rows["model"], rows["order"]))
    rows = {name: values[order] for name, values in rows.items()}
    for source_order in dict.fromkeys(rows["order"].tolist()):
        in_source = rows["order"] == source_order
        source = result.sources[int(source_order)]
        tables = []
        for m in range(n_models):
            sel = in_source & (rows["model"] == m)
            tables.append(ScoreTable.from_dict({**{c: rows[c][sel] for c in COLUMNS if c not in ("model", "order")},
                                                "source": np.array([source] * int(sel.sum()), dtype=object)}))
        result.per_source[source] = tables
