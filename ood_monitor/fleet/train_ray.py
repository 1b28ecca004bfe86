"""`train ... --engine ray --workers N`: the training loops run as Ray Train TorchTrainer workers
(data parallel over gloo on CPU: the loops have no GPU path yet), each the single-process loop with a
`TorchDistributed` hook.

The frames go to the object store once; every worker builds the model from the same seed, trains on
its share of the rows with gradients averaged, and rank 0 reports the final weights as a Ray Train
checkpoint, which the driver loads back into its model, so the command writes the same model folder
(and config.json) as the local engine.
"""
from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _fit(trainer):
    """trainer.fit(), with a failed run as a RuntimeError carrying the workers' error (not Ray's traceback)."""
    import ray.train

    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise RuntimeError(f"Ray Train failed: {str(exc).strip().splitlines()[-1]}") from exc
    if result.error is not None:
        raise RuntimeError(f"Ray Train failed: {result.error}")
    return result


def _trainer(loop: Callable, config: dict, workers: int, address: str | None, name: str, storage: str):
    """TorchTrainer with gloo on CPU workers: the training loops (core.vae.train, core.diffusion.train)
    run on the CPU today, so NCCL/GPU workers would have nothing to run on the GPU."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from ood_monitor.fleet.ray_engine import ensure_ray

    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    ensure_ray(address, num_cpus=None)
    return TorchTrainer(loop, train_loop_config=config,
                        scaling_config=ScalingConfig(num_workers=workers, use_gpu=False,
                                                     resources_per_worker={"CPU": config.get("threads", 1)}),
                        torch_config=TorchConfig(backend="gloo"),
                        run_config=RunConfig(name=name, storage_path=storage))


def _vae_worker(config: dict) -> None:
    """One Ray Train worker: `train_vae` with the distributed hook; rank 0 reports the weights."""
    import ray
    import ray.train
    import torch
    from safetensors.torch import save_file

    from ood_monitor.core.vae import build_model
    from ood_monitor.core.vae.train import train_vae
    from ood_monitor.fleet.distributed import TorchDistributed

    torch.set_num_threads(max(1, int(config["threads"])))
    parallel = TorchDistributed.current()
    frames = ray.get(config["frames"])
    torch.manual_seed(config["seed"])
    model = build_model(config["arch"], config["model_cfg"])

    def log(msg: str) -> None:
        if parallel.rank == 0:
            print(msg, flush=True)

    result = train_vae(model, frames, config["flow_scale"], config["train_cfg"], log, parallel)
    metrics = {"best_val": float(result.best_val), "steps": int(result.steps)}
    if parallel.rank == 0:
        with tempfile.TemporaryDirectory() as tmp:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(Path(tmp) / "model.safetensors"))
            (Path(tmp) / "result.json").write_text(json.dumps(result.to_dict()))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    else:
        ray.train.report(metrics)


def train_vae_on_ray(model: Any, arch: str, model_cfg: Any, frames: Any, flow_scale: float, train_cfg: Any,
                     workers: int, address: str | None = None, threads: int = 1, seed: int = 0,
                     storage: str | None = None):
    """Train `model` (built from `arch`, `model_cfg` with `seed`) on `workers` Ray Train workers; loads
    the result into `model` and returns the rank-0 TrainResult."""
    import ray
    from safetensors.torch import load_file

    from ood_monitor.core.vae.train import TrainResult
    from ood_monitor.fleet.ray_engine import ensure_ray

    ensure_ray(address)
    storage = storage or tempfile.mkdtemp(prefix="ood_monitor_ray_train_")
    config = {"frames": ray.put(frames), "arch": arch, "model_cfg": model_cfg, "flow_scale": flow_scale,
              "train_cfg": train_cfg, "threads": threads, "seed": seed}
    result = _fit(_trainer(_vae_worker, config, workers, address, "train_vae", str(Path(storage).resolve())))
    if result.checkpoint is None:
        raise RuntimeError("Ray Train finished without a checkpoint from rank 0")
    with result.checkpoint.as_directory() as folder:
        model.load_state_dict(load_file(str(Path(folder) / "model.safetensors")))
        record = json.loads((Path(folder) / "result.json").read_text())
    model.eval()
    return TrainResult(**record)


def _diffusion_worker(config: dict) -> None:
    """One Ray Train worker of `train dcae|dit|ddpm`: the model's train function with the distributed
    hook; rank 0 writes the checkpoints and the model folder (`out` must be on storage every worker sees:
    any path on one machine, a shared file system on a cluster)."""
    import ray
    import ray.train
    import torch

    from ood_monitor.fleet.distributed import TorchDistributed

    torch.set_num_threads(max(1, int(config["threads"])))
    parallel = TorchDistributed.current()
    images = ray.get(config["images"])
    log = print if parallel.rank == 0 else (lambda _m: None)
    out = config["train"](images, *config["args"], log=log, parallel=parallel, **config["kwargs"])
    ray.train.report({"out": str(out), "rank": parallel.rank})


def train_diffusion_on_ray(train: Callable, images: Any, args: tuple, kwargs: dict, workers: int,
                           address: str | None = None, threads: int = 1, storage: str | None = None) -> None:
    """Run `train(images, *args, log=..., parallel=..., **kwargs)` (core.diffusion.train's train_dcae,
    train_dit, train_ddpm) on `workers` Ray Train workers."""
    import ray

    from ood_monitor.fleet.ray_engine import ensure_ray

    ensure_ray(address)
    storage = storage or tempfile.mkdtemp(prefix="ood_monitor_ray_train_")
    config = {"images": ray.put(images), "train": train, "args": args, "kwargs": kwargs, "threads": threads}
    _fit(_trainer(_diffusion_worker, config, workers, address, train.__name__, str(Path(storage).resolve())))
