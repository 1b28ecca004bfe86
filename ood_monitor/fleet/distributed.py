"""Data-parallel training hooks over torch.distributed (the process group Ray Train's TorchTrainer sets
up: gloo on CPU, NCCL on GPU). The training loops stay the single-process ones; a hook shards the rows,
averages gradients after each backward pass (what DistributedDataParallel does, without its bucketing)
and makes every worker take the same stop decision."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


@dataclass
class TorchDistributed:
    """`core.vae.train.Parallel` for an initialised torch.distributed process group."""

    rank: int
    world: int
    device: str = "cpu"  # where the collectives' tensors live: cuda for NCCL

    @classmethod
    def current(cls) -> TorchDistributed:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised (run inside Ray Train's TorchTrainer)")
        device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
        return cls(dist.get_rank(), dist.get_world_size(), device)

    def shard(self, rows: np.ndarray) -> np.ndarray:
        """This worker's rows: every world-th one, all shards cut to the same length (every worker must
        take the same number of steps, or the collectives would wait forever)."""
        per_worker = len(rows) // self.world
        if per_worker < 1:
            raise ValueError(f"{len(rows)} training frames cannot be shared by {self.world} workers")
        return np.asarray(rows)[self.rank::self.world][:per_worker]

    def sync_gradients(self, model: nn.Module) -> None:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def average(self, values: np.ndarray) -> np.ndarray:
        t = torch.as_tensor(np.asarray(values, dtype=np.float64), device=self.device)
        dist.all_reduce(t)
        return (t / self.world).cpu().numpy()

    def any(self, flag: bool) -> bool:
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)
