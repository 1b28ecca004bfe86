"""Compression of VAE detectors (docs/methods.md#compression) with the quantization guard
(docs/methods.md#quantization-guard): int8 (CPU), fp16 (GPU), structured pruning, pruning-aware distillation.
`build_variants` makes every variant of one parent in memory; `ood-monitor compress` scores, guards and saves
them, `ood-monitor bench compress` times them side by side. Every float variant is exported to ONNX and run
through the same backend as int8, so timing differences come from the model, not from the runtime."""
from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ood_monitor.core.alarm_calibration import AlarmTarget, calibrate_alarms, calibrate_fused
from ood_monitor.core.nonconformity import FUSED
from ood_monitor.core.runtime import onnx_callables
from ood_monitor.core.runtime.onnx_export import DropoutSpec, MaskedTail, draw_masks, export_encoder
from ood_monitor.core.vae.dataset import FrameSet
from ood_monitor.core.vae.io import ModelCard, save_model, sha256_bytes, write_card

from .detector_quantization import quantize_onnx_int8
from .distill import DistillConfig, distill, layer_sparsity, mean_posterior_kl, student_from
from .guard import GuardVerdict, update_config, write_verdict
from .prune import conv_param_count, param_count, prune_channels

METHODS = ("int8", "fp16", "prune", "kd")
# Pruned layers keep channel counts that are multiples of 4: odd counts (9, 45, 27 channels after global
# ranking) waste ONNX Runtime's blocked convolutions; measured on the demo image model, ORT fp32, 1 thread:
# the kd student 1.25x -> 1.52x the parent, globally pruned 0.5 1.63x -> 2.14x. (8 was faster still for the
# pruned model, but moved the highest-sparsity layer (arXiv 2409.00880) to the second conv, whose removal
# makes every later layer run at twice the resolution: 1.15x.)
ROUND_TO = 4
# The kd student starts from a parent pruned at 0.7: the pruning-aware rule then removes the sparsest conv
# (on the demo image model the second one either way) and the narrower layers pay for the higher
# resolution after it.
# Measured by `bench compress --ratios 0.5` (ORT, 1 thread, rows interleaved): kd from 0.5 1.18x the
# parent with ΔAUROC -0.008; from 0.7 1.73x with -0.002.
KD_RATIO = 0.7
Encode = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
Log = Callable[[str], None]


@dataclass(frozen=True)
class CompressConfig:
    """`kd_ratio` is the pruning ratio the distilled student starts from (see KD_RATIO)."""

    methods: tuple[str, ...] = METHODS
    ratios: tuple[float, ...] = (0.3, 0.5)
    kd_ratio: float = KD_RATIO
    tolerance: float = 2.0
    distill: DistillConfig = field(default_factory=DistillConfig)
    calib_frames: int = 128
    threads: int = 2

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown:
            raise ValueError(f"unknown compression methods {unknown}: choose from {', '.join(METHODS)}")


@dataclass
class Variant:
    """One compressed model. Float variants keep their torch `encoder`; all carry trunk/tail ONNX graphs
    (int8: quantized trunk, fp16: half graphs for GPUs)."""

    name: str
    method: str
    precision: str
    encoder: nn.Module | None
    trunk_onnx: bytes
    tail_onnx: bytes
    dropout: list[DropoutSpec]
    info: dict = field(default_factory=dict)

    @property
    def size_mb(self) -> float:
        return (len(self.trunk_onnx) + len(self.tail_onnx)) / 1e6

    def cpu_callables(self, threads: int) -> tuple[Callable, Callable]:
        """(trunk, tail) on this CPU: ONNX Runtime, except fp16 which runs as torch half (it is a GPU
        precision; on CPU only its effect on scores is measured, never its speed)."""
        if self.precision == "fp16":
            return half_callables(self.encoder, self.dropout)
        return onnx_callables("onnxruntime", self.trunk_onnx, self.tail_onnx, self.dropout, "cpu",
                              self.precision, threads)

    def encoder_fn(self, threads: int) -> Encode:
        trunk, tail = self.cpu_callables(threads)
        return lambda x: tail(trunk(x))


def half_callables(encoder: nn.Module, specs: list[DropoutSpec]) -> tuple[Callable, Callable]:
    """fp16 trunk/tail on the CPU (torch half kernels): numpy in, float32 numpy out."""
    trunk, tail = encoder.trunk, MaskedTail(encoder.tail)

    @torch.inference_mode()
    def run_trunk(x: np.ndarray) -> np.ndarray:
        return trunk(torch.as_tensor(np.asarray(x, np.float32)).half()).float().numpy()

    @torch.inference_mode()
    def run_tail(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        masks = (torch.from_numpy(m).half() for m in draw_masks(specs, len(f)))
        mu, logvar = tail(torch.as_tensor(np.asarray(f, np.float32)).half(), *masks)
        return mu.float().numpy(), logvar.float().numpy()

    return run_trunk, run_tail


def input_shape(encoder: nn.Module) -> tuple[int, int, int]:
    cfg = encoder.cfg
    return cfg.channels, cfg.height, cfg.width


def float_variant(name: str, method: str, encoder: nn.Module, info: dict | None = None) -> Variant:
    export = export_encoder(encoder, input_shape(encoder), check=False)
    info = {"params": param_count(encoder), "conv_params": conv_param_count(encoder),
            "widths": list(encoder.cfg.widths), **(info or {})}
    return Variant(name, method, "fp32", encoder.eval(), export.trunk, export.tail, export.dropout, info)


def calibration_frames(train: FrameSet, flow_scale: float, n: int) -> np.ndarray:
    """n training frames spread evenly over the split: the activation ranges int8 calibrates on."""
    return train.inputs(np.linspace(0, len(train) - 1, min(n, len(train))).astype(int), flow_scale)


def int8_variant(parent: Variant, calibration: np.ndarray, keep_first: bool = True, name: str = "int8") -> Variant:
    """Static int8 trunk; `keep_first` leaves the first conv block fp32 (selected layers, the default)."""
    trunk = quantize_onnx_int8(parent.trunk_onnx, calibration, keep_first=keep_first)
    layers = "trunk without its first conv block" if keep_first else "whole trunk"
    return Variant(name, "int8", "int8", None, trunk, parent.tail_onnx, parent.dropout,
                   {"quantized": f"{layers} (static QDQ, per-tensor, onnxruntime)",
                    "calibration_frames": len(calibration)})


def fp16_variant(encoder: nn.Module) -> Variant:
    half = copy.deepcopy(encoder).half().eval()
    export = export_encoder(encoder, input_shape(encoder), check=False, half=True)
    return Variant("fp16", "fp16", "fp16", half, export.trunk, export.tail, export.dropout,
                   {"params": param_count(encoder)})


def distilled(student: nn.Module, teacher: nn.Module, train: FrameSet, flow_scale: float, cfg: DistillConfig
              ) -> dict:
    """Distill in place; returns the bounded run's record (steps, seconds, KL before and after)."""
    n = min(len(train), 256)
    before = mean_posterior_kl(student, teacher, lambda r: train.inputs(r, flow_scale), n)
    cfg = replace(cfg, clip_input=train.kind == "image")
    run = distill(student, teacher, lambda r: train.inputs(r, flow_scale), len(train), cfg)
    after = mean_posterior_kl(student, teacher, lambda r: train.inputs(r, flow_scale), n)
    return {"distill_steps": run.steps, "distill_seconds": round(run.seconds, 1), "kl_to_teacher_before": before,
            "kl_to_teacher_after": after}


def pruned_variant(parent: nn.Module, ratio: float, train: FrameSet, flow_scale: float, cfg: DistillConfig
                   ) -> Variant:
    pruned = prune_channels(parent, ratio, global_ranking=False, round_to=ROUND_TO)
    sparsity = layer_sparsity(pruned, parent)
    info = {"ratio": ratio, "layer_sparsity": [round(s, 3) for s in sparsity],
            **distilled(pruned, parent, train, flow_scale, cfg)}
    return float_variant(f"prune-{ratio:g}", "prune", pruned, info)


def kd_variant(parent: nn.Module, ratio: float, train: FrameSet, flow_scale: float, cfg: DistillConfig) -> Variant:
    """arXiv 2409.00880: prune (globally ranked, so layers lose different shares), remove the conv layer with
    the highest sparsity, then distill the student from the parent."""
    pruned = prune_channels(parent, ratio, global_ranking=True, round_to=ROUND_TO)
    sparsity = layer_sparsity(pruned, parent)
    remove = max(range(len(sparsity)), key=lambda i: (round(sparsity[i], 6), i))  # ties: the later, cheaper layer
    student = student_from(pruned, remove)
    info = {"from_ratio": ratio, "removed_layer": remove, "layer_sparsity": [round(s, 3) for s in sparsity],
            **distilled(student, parent, train, flow_scale, cfg)}
    return float_variant("kd", "kd", student, info)


def build_variants(parent: nn.Module, train: FrameSet, flow_scale: float, cfg: CompressConfig, log: Log = print
                   ) -> list[Variant]:
    """fp32 (the parent, as the reference row) followed by every requested variant."""
    torch.set_num_threads(cfg.threads)
    parent = copy.deepcopy(parent).eval()
    base = float_variant("fp32", "fp32", parent)
    variants = [base]
    if "int8" in cfg.methods:
        variants.append(int8_variant(base, calibration_frames(train, flow_scale, cfg.calib_frames)))
        log("int8: trunk quantized (static QDQ)")
    if "fp16" in cfg.methods:
        variants.append(fp16_variant(parent))
        log("fp16: half weights and graphs")
    if "prune" in cfg.methods:
        for ratio in cfg.ratios:
            variant = pruned_variant(parent, ratio, train, flow_scale, cfg.distill)
            variants.append(variant)
            log(f"{variant.name}: widths {variant.info['widths']}, params {variant.info['params']}, "
                f"KL to parent {variant.info['kl_to_teacher_after']:.3f}")
    if "kd" in cfg.methods:
        kd = kd_variant(parent, cfg.kd_ratio, train, flow_scale, cfg.distill)
        variants.append(kd)
        log(f"kd: removed conv {kd.info['removed_layer']}, widths {kd.info['widths']}, "
            f"KL to parent {kd.info['kl_to_teacher_after']:.3f}")
    return variants


def frame_scores(encode: Encode, frames: FrameSet, card: ModelCard, batch: int = 64) -> np.ndarray:
    """The card's nonconformity score of every frame, posteriors from `encode`."""
    mus, logvars = [], []
    for start in range(0, len(frames), batch):
        mu, logvar = encode(frames.inputs(slice(start, start + batch), card.flow_scale))
        mus.append(mu)
        logvars.append(logvar)
    score = card.nonconformity
    return score(np.concatenate(mus), np.concatenate(logvars), score.frame_features(frames.raw))


def scoring_card(parent: ModelCard, variant: Variant, train: FrameSet, threads: int) -> ModelCard:
    """The parent's card with the variant's architecture and its own latent statistics and texture head
    on the training frames (when the score uses them): how the variant's folder scores frames, so the
    guard and the benchmark measure what the node will run (a pruned encoder's KL per dim has its own
    spread, and its posteriors predict texture with other weights)."""
    from ood_monitor.core.nonconformity import latent_stats
    from ood_monitor.core.texture import TextureConfig, TextureHead

    card = replace(parent, config=variant.encoder.cfg if variant.encoder is not None else parent.config,
                   calibration=None, weights_sha256="")
    if parent.latent_stats or parent.texture:
        encode = variant.encoder_fn(threads)
        mu, logvar = zip(*(encode(train.inputs(slice(s, s + 64), parent.flow_scale))
                           for s in range(0, len(train), 64)), strict=True)
        mu, logvar = np.concatenate(mu), np.concatenate(logvar)
        if parent.latent_stats:
            card.latent_stats = latent_stats(mu, logvar)
        if parent.texture:
            cfg = TextureConfig.from_dict(parent.texture)
            card.texture = TextureHead.fit_frames(mu, logvar, train.raw, cfg).to_dict()
    return card


def variant_card(parent: ModelCard, variant: Variant, cal: FrameSet, train: FrameSet, threads: int,
                 command: str) -> ModelCard:
    """`scoring_card` plus calibration scores re-computed by the variant on the calibration split."""
    encode = variant.encoder_fn(threads)
    card = scoring_card(parent, variant, train, threads)
    ids = cal.subset(~cal.is_ood) if cal.is_ood.any() else cal
    # the variant's own p-values: its thresholds are chosen again, for the parent's target
    target = AlarmTarget.from_settings(parent.alarm) if parent.alarm else None
    parts = FUSED.get(card.score)
    if parts:  # a fused score: the variant's parts get their own scales, as `calibrate` measures them
        measured = bool(parent.photometric.get("parts", {}).get("measured", True))
        base = target or AlarmTarget()
        target = replace(base, score_tolerance=0.0 if measured else base.score_tolerance)
        columns = np.column_stack([frame_scores(encode, ids, replace(card, score=part)) for part in parts])
        fusion, stream, target, alarms = calibrate_fused(columns, None, target)
        card.photometric = {**card.photometric, "parts": fusion.to_dict(measured)}
        card.alarm = alarms.to_dict(target)
    else:
        stream = frame_scores(encode, ids, card)
        if target is not None:
            card.alarm = calibrate_alarms(stream, None, target).to_dict(target)
    scores = np.sort(stream)
    card.calibration = {"scores": [float(s) for s in scores], "source": ids.source, "hash": ids.data_hash,
                        "frames": len(scores), "selected_dims": card.selected_dims, "score": card.score,
                        "command": command, "scored_by": variant.name}
    return card


class EncoderHolder(nn.Module):
    """Gives an encoder the `encoder.` prefix load_encoder expects in model.safetensors."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder


def save_variant(out_dir: str | Path, variant: Variant, card: ModelCard, parent_dir: str | Path,
                 parent_card: ModelCard, verdict: GuardVerdict, metrics: dict) -> Path:
    """A model folder for the variant: weights (float variants) or ONNX graphs (int8), config.json with
    its card, compression record, measured metrics and guard verdict."""
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if variant.encoder is not None:
        save_model(out, EncoderHolder(variant.encoder), card)
    else:
        write_card(out, card)
    runtime = {}
    if variant.precision != "fp16":
        (out / "trunk.onnx").write_bytes(variant.trunk_onnx)
        (out / "tail.onnx").write_bytes(variant.tail_onnx)
        runtime = {"files": {"trunk": "trunk.onnx", "tail": "tail.onnx"},
                   "sha256": {"trunk": sha256_bytes(variant.trunk_onnx), "tail": sha256_bytes(variant.tail_onnx)},
                   "dropout": [{"p": d.p, "width": d.width} for d in variant.dropout]}
    update_config(out, compression={"method": variant.method, "precision": variant.precision,
                                    "parent": str(parent_dir), "parent_weights_sha256": parent_card.weights_sha256,
                                    "size_mb": variant.size_mb, "metrics": metrics, **variant.info},
                  runtime=runtime)
    write_verdict(out, verdict)
    return out


__all__ = ["KD_RATIO", "METHODS", "CompressConfig", "DistillConfig", "Variant", "build_variants", "frame_scores",
           "save_variant", "variant_card"]
