"""Shared benchmark plumbing: machine description, timing loops, the table and the JSON report
(`{"machine": {...}, "rows": [{"variant": ..., "ms_per_frame": ...}, ...]}`) every bench writes."""
from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(**extra) -> dict:
    import cv2

    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    info.update(extra)
    return info


def time_ms(fn: Callable[[int], object], n: int, warmup: int = 3) -> np.ndarray:
    """Wall time of fn(i) for i in range(n), after `warmup` untimed calls, in milliseconds."""
    for i in range(warmup):
        fn(i)
    out = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        out[i] = (time.perf_counter() - t0) * 1e3
    return out


def summarize_ms(samples: np.ndarray) -> dict[str, float]:
    return {
        "ms_per_frame": float(np.mean(samples)),
        "ms_p50": float(np.percentile(samples, 50)),
        "ms_p95": float(np.percentile(samples, 95)),
        "frames": int(samples.size),
    }


def format_table(rows: list[dict], columns: list[str]) -> str:
    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
        return str(v)

    table = [columns] + [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_report(rows: list[dict], machine: dict, json_path: str | None, **meta) -> dict:
    report = {"machine": machine, **meta, "rows": rows}
    if json_path:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))
    return report


def peak_tensor_mb(fn: Callable[[], object], device: str, resident_mb: float) -> float:
    """Peak memory held by tensors while fn() runs, in MB: on CUDA torch.cuda.max_memory_allocated (the
    weights already on the device included); on CPU `resident_mb` (the weights, loaded before) plus the
    peak growth of live CPU tensor bytes, read off the torch profiler's allocation events. The same
    quantity on both devices, unlike the process RSS, which also holds the torch runtime and allocator
    caches."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 1e6
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = np.cumsum([b for _, b in events]) if events else np.zeros(1)
    return resident_mb + max(0.0, float(live.max())) / 1e6
