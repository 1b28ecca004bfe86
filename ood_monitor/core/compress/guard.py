"""Quantization-OOD guard (arXiv 2602.01459, docs/methods.md#quantization-guard): compression can keep a
model's loss and still ruin its OOD separation, so every compressed variant is scored against its fp32 parent
on the same labelled frames (AUROC and AUPR-out) and flagged when it loses more than `tolerance` AUPR-out
points (default 2). The verdict is written into the variant's config.json, where the loader reads it and
refuses a flagged variant unless forced."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ood_monitor.core.detector_metrics import aupr_out, auroc

DEFAULT_TOLERANCE = 2.0  # AUPR-out points (percent)
GUARD_KEY = "guard"


@dataclass(frozen=True)
class GuardVerdict:
    """Parent vs variant on one labelled set. Deltas are variant - parent in points (x100);
    `flagged` when the AUPR-out loss exceeds `tolerance` points."""

    parent_auroc: float
    parent_aupr_out: float
    auroc: float
    aupr_out: float
    tolerance: float
    frames: int
    data: str = ""

    @property
    def delta_auroc(self) -> float:
        return 100.0 * (self.auroc - self.parent_auroc)

    @property
    def delta_aupr_out(self) -> float:
        return 100.0 * (self.aupr_out - self.parent_aupr_out)

    @property
    def flagged(self) -> bool:
        return -self.delta_aupr_out > self.tolerance

    def summary(self) -> str:
        verdict = "FLAGGED" if self.flagged else "ok"
        return (f"{verdict}: AUPR-out {self.aupr_out:.3f} vs parent {self.parent_aupr_out:.3f} "
                f"({self.delta_aupr_out:+.1f} pts, tolerance {self.tolerance:.1f}), AUROC {self.auroc:.3f} "
                f"vs {self.parent_auroc:.3f}")

    def to_dict(self) -> dict:
        return {**asdict(self), "delta_auroc_pts": self.delta_auroc, "delta_aupr_out_pts": self.delta_aupr_out,
                "flagged": self.flagged}

    @classmethod
    def from_dict(cls, d: dict) -> GuardVerdict:
        return cls(**{k: d[k] for k in ("parent_auroc", "parent_aupr_out", "auroc", "aupr_out", "tolerance",
                                       "frames")}, data=str(d.get("data", "")))


def evaluate_variant(parent_scores: np.ndarray, variant_scores: np.ndarray, is_ood: np.ndarray,
                     tolerance: float = DEFAULT_TOLERANCE, data: str = "") -> GuardVerdict:
    """Compare both score arrays on the same frames. Non-finite variant scores (a broken model) count
    as the least OOD possible, so they cost separation instead of crashing the guard."""
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 AUPR-out points, got {tolerance}")
    parent = np.asarray(parent_scores, np.float64)
    variant = np.asarray(variant_scores, np.float64)
    if parent.shape != variant.shape:
        raise ValueError(f"{parent.size} parent scores but {variant.size} variant scores")
    finite = np.isfinite(variant)
    variant = np.where(finite, variant, np.min(variant[finite], initial=0.0) - 1.0)
    return GuardVerdict(auroc(parent, is_ood), aupr_out(parent, is_ood), auroc(variant, is_ood),
                        aupr_out(variant, is_ood), float(tolerance), int(parent.size), data)


def read_config(model_dir: str | Path) -> dict:
    return json.loads((Path(model_dir) / "config.json").read_text())


def update_config(model_dir: str | Path, **sections: object) -> None:
    """Merge top-level sections into config.json atomically (ModelCard keeps only its own keys)."""
    path = Path(model_dir) / "config.json"
    data = {**read_config(model_dir), **sections}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def write_verdict(model_dir: str | Path, verdict: GuardVerdict) -> None:
    update_config(model_dir, **{GUARD_KEY: verdict.to_dict()})


def read_verdict(model_dir: str | Path) -> GuardVerdict | None:
    """The stored verdict, or None for a model that was never compressed (a parent)."""
    section = read_config(model_dir).get(GUARD_KEY)
    return GuardVerdict.from_dict(section) if section else None
