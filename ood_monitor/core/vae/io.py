"""Model files: `model.safetensors` (weights) + `config.json` (everything needed to rebuild and trust
them). Loading never unpickles anything; every way a model directory can be unusable raises
`ModelFileError` naming the file and the command that fixes it, so a node can refuse to start with a
message a user can act on instead of a traceback.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from ood_monitor.core.change import ChangeStats
from ood_monitor.core.motion import motion_from_dict
from ood_monitor.core.nonconformity import FUSED, Nonconformity
from ood_monitor.core.photometric import PhotometricStats
from ood_monitor.core.structure import StructureStats
from ood_monitor.core.texture import TextureHead

from . import ARCHITECTURES, build_encoder, build_model
from .beta_vae import VaeConfig

FORMAT = "ood_monitor.vae/1"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


class ModelFileError(RuntimeError):
    """A model directory is missing, corrupt, inconsistent or not calibrated."""


def train_hint(model_dir: str | Path, kind: str = "image|flow") -> str:
    return f"run `ood-monitor train vae --kind {kind} --data DIR/bags/train --out {model_dir}`"


def calibrate_hint(model_dir: str | Path) -> str:
    return f"run `ood-monitor calibrate --model {model_dir} --data DIR/bags/calibration`"


@dataclass
class ModelCard:
    """The content of config.json. `calibration` holds the sorted calibration scores once
    `ood-monitor calibrate` has run; `selected_dims` are the latent dims the score uses, `score` the
    nonconformity method (core/nonconformity.SCORES) and `latent_stats` the per-dimension training
    statistics the two-sided methods standardise with; `texture` the fitted texture head of image models
    (core/texture.py), which the `kl_texture` score adds; `alarm` the martingale/CUSUM settings `calibrate`
    chose for a false-alarm target on held-out nominal blocks, with what it measured."""

    architecture: str
    config: VaeConfig
    flow_scale: float = 1.0
    data: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    selected_dims: list[int] = field(default_factory=list)
    latent_kl: list[float] = field(default_factory=list)
    calibration: dict | None = None
    weights_sha256: str = ""
    format: str = FORMAT
    score: str = "kl"
    latent_stats: dict = field(default_factory=dict)
    texture: dict = field(default_factory=dict)
    motion: dict = field(default_factory=dict)  # motion statistics of flow models (core/motion.py)
    # photometric statistics of image models (core/photometric.py), under "structure" their local-structure
    # statistics (core/structure.py), under "change" the change part's (core/change.py), and under "parts"
    # the part scales of the fused score that `calibrate` measured
    photometric: dict = field(default_factory=dict)
    alarm: dict = field(default_factory=dict)  # alarm settings chosen by `calibrate` (core/alarm_calibration.py)
    extra: dict = field(default_factory=dict)  # other sections (compression, runtime, guard): kept as read

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def nonconformity(self) -> Nonconformity:
        """The score this model runs (ValueError if the card lacks what the method needs)."""
        head = TextureHead.from_dict(self.texture, self.config.latent) if self.texture else None
        motion = motion_from_dict(self.motion) if self.motion else None
        photometric = PhotometricStats.from_dict(self.photometric) if self.photometric else None
        structure, change = self.photometric.get("structure"), self.photometric.get("change")
        scales = (self.photometric.get("parts") or {}).get("scales", ())
        return Nonconformity.from_stats(self.score, self.selected_dims, self.latent_stats, texture=head, motion=motion,
                                        photometric=photometric, part_scales=scales,
                                        structure=StructureStats.from_dict(structure) if structure else None,
                                        change=ChangeStats.from_dict(change) if change else None)

    @property
    def score_description(self) -> str:
        """The score's name and, for a fused score, each part's calibrated tolerance and largest nominal
        score: what /diagnostics and the evaluation report show, so a user can see each part's margin."""
        names = FUSED.get(self.score)
        parts = (self.photometric.get("parts") or {}) if names else {}
        if not parts:
            return self.score
        return (f"{self.score} (" + ", ".join(f"{n} tolerance {k:.2f} x largest nominal {m:.3g}" for n, k, m in
                                              zip(names, parts["tolerances"], parts["maxima"], strict=True)) + ")")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of the frames the detector accepts."""
        return self.config.height, self.config.width, self.config.channels

    def to_dict(self) -> dict:
        return {**self.extra, "format": self.format, "architecture": self.architecture, "kind": self.kind,
                "input": {"height": self.config.height, "width": self.config.width,
                          "channels": self.config.channels},
                "model": self.config.to_dict(), "flow_scale": self.flow_scale, "data": self.data,
                "training": self.training, "selected_dims": list(self.selected_dims),
                "latent_kl": list(self.latent_kl), "score": self.score, "latent_stats": self.latent_stats,
                "texture": self.texture, "motion": self.motion, "photometric": self.photometric, "alarm": self.alarm, "calibration": self.calibration, "weights_sha256": self.weights_sha256}

    @classmethod
    def from_dict(cls, d: dict, source: str | Path = CONFIG) -> ModelCard:
        try:
            arch = d["architecture"]
            if arch not in ARCHITECTURES:
                raise ModelFileError(f"{source} names unknown architecture {arch!r} "
                                     f"(known: {sorted(ARCHITECTURES)})")
            cfg = ARCHITECTURES[arch][1].from_dict(d["model"])
            card = cls(architecture=arch, config=cfg, flow_scale=float(d.get("flow_scale", 1.0)),
                       data=d.get("data", {}), training=d.get("training", {}),
                       selected_dims=[int(i) for i in d.get("selected_dims", [])],
                       latent_kl=[float(v) for v in d.get("latent_kl", [])], calibration=d.get("calibration"),
                       weights_sha256=d.get("weights_sha256", ""), format=d.get("format", FORMAT),
                       score=str(d.get("score", "kl")), latent_stats=d.get("latent_stats") or {},
                       texture=d.get("texture") or {}, motion=d.get("motion") or {},
                       photometric=d.get("photometric") or {},
                       alarm=d.get("alarm") or {})
            card.extra = {k: v for k, v in d.items() if k not in card.to_dict()}
            if card.selected_dims:
                card.nonconformity  # noqa: B018 -- validates score method and statistics
            return card
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ModelFileError(f"{source} is not a valid model config ({type(exc).__name__}: {exc})") from exc

    def calibration_scores(self, model_dir: str | Path) -> np.ndarray:
        """Sorted calibration scores, or ModelFileError saying how to calibrate."""
        scores = (self.calibration or {}).get("scores")
        path = Path(model_dir) / CONFIG
        if not scores:
            raise ModelFileError(f"{path} has no calibration scores: {calibrate_hint(model_dir)}")
        arr = np.asarray(scores, dtype=np.float64)
        if arr.ndim != 1 or not np.all(np.isfinite(arr)):
            raise ModelFileError(f"{path} has invalid calibration scores: {calibrate_hint(model_dir)}")
        if (self.calibration or {}).get("selected_dims", self.selected_dims) != self.selected_dims:
            raise ModelFileError(f"{path} was calibrated with other latent dims: {calibrate_hint(model_dir)}")
        if (self.calibration or {}).get("score", "kl") != self.score:
            raise ModelFileError(f"{path} was calibrated with another score than {self.score!r}: "
                                 f"{calibrate_hint(model_dir)}")
        return np.sort(arr)

    def alarm_settings(self, model_dir: str | Path) -> dict:
        """The calibrated alarm settings (AlarmConfig fields without `test`), or ModelFileError saying
        how to calibrate them."""
        from ood_monitor.core.alarm_calibration import OPTIONAL_ALARM, UNCALIBRATED
        from ood_monitor.core.conformal import AlarmConfig

        fields = set(AlarmConfig.__dataclass_fields__) - {"test"} - set(OPTIONAL_ALARM) - set(UNCALIBRATED)
        if not self.alarm or not fields <= set(self.alarm):
            raise ModelFileError(f"{Path(model_dir) / CONFIG} has no calibrated alarm thresholds: "
                                 f"{calibrate_hint(model_dir)}")
        return {**OPTIONAL_ALARM, **{k: v for k, v in self.alarm.items() if k in fields | set(OPTIONAL_ALARM)}}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_card(model_dir: str | Path, card: ModelCard) -> None:
    """Atomic write, so a crash never leaves a half-written config.json behind."""
    path = Path(model_dir) / CONFIG
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(card.to_dict(), indent=1) + "\n")
    os.replace(tmp, path)


def save_model(model_dir: str | Path, model: nn.Module, card: ModelCard) -> ModelCard:
    """Write weights and config; the config records the weights' sha256 so a mixed-up pair is caught."""
    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    blob = save_safetensors(tensors, metadata={"format": FORMAT, "architecture": card.architecture})
    (out / WEIGHTS).write_bytes(blob)
    card.weights_sha256 = sha256_bytes(blob)
    write_card(out, card)
    return card


def read_card(model_dir: str | Path) -> ModelCard:
    path = Path(model_dir) / CONFIG
    if not path.is_file():
        raise ModelFileError(f"{path} not found: {train_hint(model_dir)}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path} is corrupt ({exc}): {train_hint(model_dir)}") from exc
    if not isinstance(data, dict):
        raise ModelFileError(f"{path} is not a JSON object: {train_hint(model_dir)}")
    return ModelCard.from_dict(data, source=path)


def read_weights(model_dir: str | Path, card: ModelCard) -> dict[str, torch.Tensor]:
    path = Path(model_dir) / WEIGHTS
    hint = train_hint(model_dir, card.kind)
    if not path.is_file():
        raise ModelFileError(f"{path} not found: {hint}")
    blob = path.read_bytes()
    if card.weights_sha256 and sha256_bytes(blob) != card.weights_sha256:
        raise ModelFileError(f"{path} does not match {Path(model_dir) / CONFIG} (sha256 differs: corrupt or "
                             f"from another training run): {hint}")
    try:
        return load_safetensors(blob)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{path} is corrupt ({exc}): {hint}") from exc


def load_into(module: nn.Module, tensors: dict[str, torch.Tensor], model_dir: str | Path, kind: str) -> None:
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelFileError(f"{Path(model_dir) / WEIGHTS} does not fit the architecture in "
                             f"{Path(model_dir) / CONFIG} ({first}): {train_hint(model_dir, kind)}") from exc


def load_model(model_dir: str | Path) -> tuple[nn.Module, ModelCard]:
    """Full model (encoder + decoder) in eval mode, for training tools and reconstruction scores."""
    card = read_card(model_dir)
    model = build_model(card.architecture, card.config)
    load_into(model, read_weights(model_dir, card), model_dir, card.kind)
    return model.eval(), card


def load_encoder(model_dir: str | Path) -> tuple[nn.Module, ModelCard]:
    """Encoder only, in eval mode: the decoder's tensors are never materialised as modules."""
    card = read_card(model_dir)
    tensors = read_weights(model_dir, card)
    enc = {k.removeprefix("encoder."): v for k, v in tensors.items() if k.startswith("encoder.")}
    encoder = build_encoder(card.architecture, card.config)
    load_into(encoder, enc, model_dir, card.kind)
    return encoder.eval(), card
