"""The `ray` engine: a Ray Data pipeline over the recordings.

One read task per recording (`from_items`, one block each), or with `chunk_frames` one per chunk of
that many frames of it, `map_batches` onto a pool of `workers` actors (`SourceScorer`), each of which
loads every model once and scores its recordings with the same core code as the local engine, frames
in order (flow and alarms are sequential; a chunk also reads the frame before it, so the flow into its
first frame is the one an unchunked read computes). Rows come back per frame (model, recording, chunk,
position, ground truth, score); the driver puts them back in input order, so the results equal the
local engine's and a chunked run equals an unchunked one. Ray restarts a dead actor and retries its task, so a worker killed
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
    defaults = {"model": 0, "order": 0, "start": 0, "source": "", "frame": 0, "stamp_ns": 0, "is_ood": False,
                "category": "", "kind": "", "episode": 0, "score": 0.0, "position": 0, "error": "", "work_s": 0.0,
                "began": 0.0, "data_hash": ""}
    out = {}
    for name, default in defaults.items():
        value = columns.get(name, default)
        out[name] = np.asarray(value) if np.ndim(value) else np.full(n, value)
    return out


def _table_batch(table: ScoreTable, model: int, where: dict[str, Any], work_s: float) -> dict[str, np.ndarray]:
    """One model's rows of one task; the data hash rides on the first row only (it is per recording).
    `where` has the task's place (order, start) and when it began (wall clock)."""
    n = len(table)
    data_hash = np.full(n, "", dtype=object)
    data_hash[0] = table.data_hash
    return _batch(n, model=model, **where, source=table.source.astype(str), frame=table.frame,
                  stamp_ns=table.stamp_ns, is_ood=table.is_ood, category=table.category.astype(str),
                  kind=table.kind.astype(str), episode=table.episode, score=table.score, position=np.arange(n),
                  work_s=np.full(n, work_s / n), data_hash=data_hash)


class SourceScorer:
    """A Ray Data actor: the job's models loaded once; each call scores one recording or chunk. `JOB` and
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
        self.scorers = [ModelScorer(m, self.job.score, calibrated=False) for m in self.job.models]

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        from ood_monitor.fleet.scoring import score_source

        for order, source, start, stop in zip(batch["order"], batch["source"], batch["start"], batch["stop"],
                                              strict=True):
            self._fault_injection(str(source))
            where = {"order": int(order), "start": int(start), "began": time.time()}
            t0 = time.perf_counter()
            try:
                tables = score_source(source, self.scorers, self.job.image_topic, self.job.mask_topic, self.job.labels,
                                      self.job.batch, limit=self.job.limit, start=int(start),
                                      stop=None if stop < 0 else int(stop))
            except Exception as exc:  # noqa: BLE001 -- one damaged recording must not stop a fleet re-score
                yield _batch(1, **where, source=str(source), model=FAILED, error=f"{type(exc).__name__}: {exc}")
                continue
            work = time.perf_counter() - t0
            if not any(len(t) for t in tables):  # read, but no frame for any model (e.g. one frame, flow only)
                yield _batch(1, **where, source=str(source), model=EMPTY, work_s=work)
                continue
            first = next(m for m, t in enumerate(tables) if len(t))  # the task's work time goes on its rows once
            for m, table in enumerate(tables):
                if len(table):
                    yield _table_batch(table, m, where, work if m == first else 0.0)

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


def plan_tasks(sources: list[Path], job: ScoringJob) -> list[dict[str, Any]]:
    """The read tasks: one per recording, or with `job.chunk_frames` one per that many frames of every
    recording whose frame count is known without reading it (`labeled_frames.frame_count`); `stop` -1:
    to the end."""
    from ood_monitor.data.labeled_frames import frame_count

    chunk = job.chunk_frames
    if chunk is not None and chunk < 1:
        raise ValueError(f"--chunk-frames must be at least 1, got {chunk}")
    if chunk is not None and job.limit is not None:
        raise ValueError("a frame limit per recording and chunks cannot be combined")
    tasks = []
    for order, source in enumerate(sources):
        count = frame_count(source, job.image_topic) if chunk else None
        if not count or count <= chunk:
            tasks.append({"order": order, "source": str(source), "start": 0, "stop": -1})
            continue
        starts = range(0, count, chunk)
        tasks += [{"order": order, "source": str(source), "start": a, "stop": -1 if a + chunk >= count else a + chunk}
                  for a in starts]  # the last chunk reads to the end: a count off by a frame loses nothing
    return tasks


def score_on_ray(sources: list[Path], job: ScoringJob, workers: int = 2, address: str | None = None,
                 progress: Callable[[str], None] | None = print, threads: int = 1,
                 runtime_env: dict | None = None) -> FleetScores:
    """Score every recording on a pool of `workers` Ray actors (`threads` torch threads each);
    `runtime_env` goes to the actors (e.g. env_vars, or a working_dir on a remote cluster)."""
    import ray

    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    t0, began = time.perf_counter(), time.time()
    tasks = plan_tasks(sources, job)
    ensure_ray(address, num_cpus=max(workers, os.cpu_count() or 1))
    ds = ray.data.from_items(tasks, override_num_blocks=len(tasks))
    # Ray Data's actor pools restart dead actors and retry their tasks by default (max_restarts=-1)
    scored = ds.map_batches(actor_class(job, threads), batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers),
                            num_cpus=threads, batch_format="numpy",
                            **({"runtime_env": runtime_env} if runtime_env else {}))
    columns: dict[str, list] = {}
    for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
        for name, values in batch.items():
            columns.setdefault(name, []).append(np.asarray(values))
    result = FleetScores(job.models, [str(s) for s in sources], engine="ray", workers=workers, tasks=len(tasks))
    if columns:
        data = {name: np.concatenate(parts) for name, parts in columns.items()}
        _collect(result, data, len(job.models), tasks)
        started = data["began"][data["began"] > 0]
        result.startup_s = float(started.min() - began) if started.size else 0.0
    missing = [s for s in result.sources if s not in result.per_source and s not in result.failed]
    for s in missing:  # Ray gave up on a task (it retried): say so rather than report partial results
        result.failed[s] = "no result came back from Ray"
    result.seconds = time.perf_counter() - t0
    if progress is not None:
        for s, why in result.failed.items():
            progress(f"  skipped {s}: {why}")
    return result


def _collect(result: FleetScores, data: dict[str, np.ndarray], n_models: int, tasks: list[dict[str, Any]]) -> None:
    """Rows -> one table per model per recording, rows ordered as the recording was read (chunk by
    chunk). A recording with a chunk that failed or never came back is failed as a whole, as an
    unchunked read of it would be."""
    for i in np.flatnonzero(data["model"] == FAILED):
        result.failed.setdefault(result.sources[int(data["order"][i])], str(data["error"][i]))
    done = {tuple(pair) for pair in np.unique(np.stack([data["order"], data["start"]], axis=1), axis=0).tolist()}
    for task in tasks:
        source = result.sources[task["order"]]
        if (task["order"], task["start"]) not in done and source not in result.failed:
            result.failed[source] = f"no result came back from Ray for frames from {task['start']} on"
    result.work_s = float(data["work_s"].sum())
    failed = np.isin(data["order"], [k for k, s in enumerate(result.sources) if s in result.failed])
    for i in np.flatnonzero((data["model"] == EMPTY) & ~failed):
        result.per_source[result.sources[int(data["order"][i])]] = [ScoreTable.empty() for _ in range(n_models)]
    keep = (data["model"] >= 0) & ~failed
    rows = {name: values[keep] for name, values in data.items()}
    order = np.lexsort((rows["position"], rows["start"], rows["model"], rows["order"]))
    rows = {name: values[order] for name, values in rows.items()}
    columns = [c for c in ScoreTable.columns() if c != "source"]
    for source_order in dict.fromkeys(rows["order"].tolist()):
        in_source = rows["order"] == source_order
        source = result.sources[int(source_order)]
        tables = []
        for m in range(n_models):
            sel = np.flatnonzero(in_source & (rows["model"] == m))
            table = ScoreTable.from_dict({**{c: rows[c][sel] for c in columns},
                                          "source": np.array([source] * sel.size, dtype=object)})
            table.data_hash = str(rows["data_hash"][sel[0]]) if sel.size else ""  # "" from a chunked read
            tables.append(table)
        result.per_source[source] = tables


class FrameMapper:
    """A Ray Data actor that builds its state once (`LOAD()`, e.g. a synthesizer) and maps each frame
    through `APPLY(state, frame)`; set on a subclass made per run (`map_frames_on_ray`), as SourceScorer."""

    LOAD: Callable[[], Any]
    APPLY: Callable[[Any, np.ndarray], np.ndarray]
    THREADS = 1

    def __init__(self) -> None:
        import cv2
        import torch

        torch.set_num_threads(max(1, self.THREADS))
        cv2.setNumThreads(max(1, self.THREADS))
        self.state = self.LOAD()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"index": batch["index"], "out": np.stack([self.APPLY(self.state, f) for f in batch["frame"]])}


def map_frames_on_ray(frames: list[np.ndarray], load: Callable[[], Any], apply: Callable[[Any, np.ndarray], Any],
                      workers: int = 2, address: str | None = None, threads: int = 1) -> list[np.ndarray]:
    """[apply(state, frame) for frame in frames] on a pool of `workers` actors, each with its own
    `state = load()`; results in the frames' order (`load` and `apply` must pickle: module functions or
    partials of them)."""
    import ray

    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    ensure_ray(address, num_cpus=max(workers, os.cpu_count() or 1))
    mapper = type("FrameMapper", (FrameMapper,), {"LOAD": staticmethod(load), "APPLY": staticmethod(apply),
                                                  "THREADS": threads})
    ds = ray.data.from_items([{"index": i, "frame": f} for i, f in enumerate(frames)],
                             override_num_blocks=max(1, min(len(frames), 4 * workers)))
    mapped = ds.map_batches(mapper, batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=threads,
                            batch_format="numpy")
    out: list[Any] = [None] * len(frames)
    for batch in mapped.iter_batches(batch_size=None, batch_format="numpy"):
        for i, value in zip(batch["index"], batch["out"], strict=True):
            out[int(i)] = value
    return out
