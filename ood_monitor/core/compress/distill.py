"""Pruning-aware (arXiv 2409.00880, docs/methods.md#compression) knowledge distillation and the distillation
loop pruning fine-tunes with.

The detector reads nothing but the encoder's posterior (mu, logvar), so a student is trained to match
the teacher's posterior, KL(q_teacher(z|x) || q_student(z|x)) summed over latent dims, on in-distribution
training frames: no decoder and no reconstruction target, and the latent dims the parent's score
selected keep their meaning, so its dims and statistics stay valid for the variant.

Pruning-aware step (arXiv 2409.00880): after pruning, the layer with the highest sparsity (share of its
weights removed) is taken as the one contributing least and removed: the student has one stride-2 conv fewer,
so the layers after it run at twice the resolution and the dense layer sees a 4x larger feature map.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ood_monitor.core.vae.beta_vae import Encoder, VaeConfig, gaussian_kl

Batches = Callable[[np.ndarray], np.ndarray]  # row indices -> (n, C, H, W) float32 model input


@dataclass(frozen=True)
class DistillConfig:
    """Short, bounded training: stops at `steps` or `time_limit_s`, whichever comes first."""

    steps: int = 3000  # ~3 minutes on one core: the perturbed batches need more steps than nominal ones
    batch: int = 32
    lr: float = 1e-3
    time_limit_s: float = 180.0
    seed: int = 0
    clip: float = 5.0  # grad-norm clip: KL with small teacher variances has steep early gradients
    augment: float = 0.5  # share of each batch perturbed off-distribution (see `perturb`); 0: nominal only
    clip_input: bool = True  # perturbed inputs stay in [0, 1] (images); False for flow


@dataclass
class DistillResult:
    steps: int
    seconds: float
    curve: list[tuple[int, float]] = field(default_factory=list)


def posterior_kl(teacher: tuple[torch.Tensor, torch.Tensor], student: tuple[torch.Tensor, torch.Tensor]
                 ) -> torch.Tensor:
    """Mean over the batch of KL(teacher || student) summed over latent dims."""
    return gaussian_kl(teacher[0], teacher[1], student[0], student[1]).sum(1).mean()


def perturb(x: torch.Tensor, share: float, gen: torch.Generator, clip: bool = True) -> torch.Tensor:
    """`share` of the rows get one random off-distribution change: gain and offset, Gaussian noise, or a
    1-D box blur. The detector scores OOD frames, which a student distilled on nominal frames alone
    never saw; matching the teacher there too is what keeps the scores' ranking (arXiv 2602.01459:
    augmentation keeps OOD detection robust under compression). On the demo image model, pruned + distilled
    for 3 minutes: ΔAUROC -0.074 without, -0.033 with."""
    out = x.clone()
    rows = torch.nonzero(torch.rand(len(x), generator=gen) < share).flatten().tolist()
    for i in rows:
        kind = int(torch.randint(3, (1,), generator=gen))
        u = torch.rand(2, generator=gen)
        if kind == 0:
            out[i] = out[i] * (0.3 + 1.5 * u[0]) + (u[1] - 0.5) * 0.4
        elif kind == 1:
            out[i] = out[i] + torch.randn(out[i].shape, generator=gen) * (0.02 + 0.13 * u[0]) * out[i].std().clamp_min(0.1)
        else:
            k = 3 + int(u[0] * 9)
            kernel = (1, k) if u[1] < 0.5 else (k, 1)
            pad = (kernel[1] // 2, kernel[1] - 1 - kernel[1] // 2, kernel[0] // 2, kernel[0] - 1 - kernel[0] // 2)
            out[i] = F.avg_pool2d(F.pad(out[i][None], pad, mode="replicate"), kernel, stride=1)[0]
    return out.clamp(0.0, 1.0) if clip else out


def distill(student: nn.Module, teacher: nn.Module, batches: Batches, n: int, cfg: DistillConfig
            ) -> DistillResult:
    """Train `student` (in place) to match `teacher`'s posteriors on n frames given by `batches`."""
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    teacher.eval()
    student.train()
    opt = torch.optim.Adam(student.parameters(), lr=cfg.lr)
    result, start = DistillResult(0, 0.0), time.perf_counter()
    for step in range(1, cfg.steps + 1):
        x = torch.from_numpy(batches(np.sort(rng.choice(n, min(cfg.batch, n), replace=False))))
        if cfg.augment > 0:
            x = perturb(x, cfg.augment, gen, cfg.clip_input)
        with torch.no_grad():
            target = teacher(x)
        loss = posterior_kl(target, student(x))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(student.parameters(), cfg.clip)
        opt.step()
        result.curve.append((step, loss.item()))
        result.steps = step
        if time.perf_counter() - start > cfg.time_limit_s:
            break
    result.seconds = time.perf_counter() - start
    student.eval()
    return result


@torch.no_grad()
def mean_posterior_kl(student: nn.Module, teacher: nn.Module, batches: Batches, n: int, batch: int = 64) -> float:
    """KL(teacher || student) averaged over n frames (student and teacher in eval mode)."""
    student.eval()
    teacher.eval()
    total = 0.0
    for start in range(0, n, batch):
        x = torch.from_numpy(batches(np.arange(start, min(n, start + batch))))
        total += float(posterior_kl(teacher(x), student(x))) * len(x)
    return total / n


def conv_layers(encoder: nn.Module) -> list[nn.Conv2d]:
    return [m for m in encoder.trunk.modules() if isinstance(m, nn.Conv2d)]


def layer_sparsity(pruned: nn.Module, original: nn.Module) -> list[float]:
    """Per conv layer, the share of its weights pruning removed (zero or cut away)."""
    out = []
    for before, after in zip(conv_layers(original), conv_layers(pruned), strict=True):
        kept = int(torch.count_nonzero(after.weight))
        out.append(1.0 - kept / before.weight.numel())
    return out


def without_layer(cfg: VaeConfig, index: int) -> VaeConfig:
    """The architecture with conv `index` removed (one stride-2 layer fewer)."""
    if len(cfg.widths) < 2:
        raise ValueError("cannot remove the only conv layer")
    return replace(cfg, widths=tuple(w for i, w in enumerate(cfg.widths) if i != index))


def student_from(pruned: Encoder, remove: int) -> Encoder:
    """A student with `pruned`'s widths minus conv `remove`, warm-started from `pruned` where the
    layers line up (before the removed layer as they are, after it by position, the tail always)."""
    cfg = without_layer(pruned.cfg, remove)
    student = type(pruned)(cfg)
    src_convs, dst_convs = conv_layers(pruned), conv_layers(student)
    mapping = [i for i in range(len(src_convs)) if i != remove]
    with torch.no_grad():
        for dst, i in zip(dst_convs, mapping, strict=True):
            if dst.weight.shape == src_convs[i].weight.shape:
                dst.weight.copy_(src_convs[i].weight)
                dst.bias.copy_(src_convs[i].bias)
    student.tail.load_state_dict(pruned.tail.state_dict())
    return student.eval()
