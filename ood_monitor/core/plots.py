"""PNG plots for the reports (matplotlib, headless): ROC and PR curves, score timelines with OOD
episodes and alarms, image grids."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402


def curves(path: Path, scores: np.ndarray, is_ood: np.ndarray, groups: dict[str, np.ndarray], title: str) -> Path:
    """ROC (left) and PR with OOD positive (right), one line per group against all nominal frames."""
    nominal = ~is_ood.astype(bool)
    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, sel in groups.items():
        keep = sel | nominal
        if not sel.any() or not nominal.any():
            continue
        fpr, tpr, _ = roc_curve(is_ood[keep], scores[keep])
        prec, rec, _ = precision_recall_curve(is_ood[keep], scores[keep])
        roc_ax.plot(fpr, tpr, label=name, lw=1.2)
        pr_ax.plot(rec, prec, label=name, lw=1.2)
    roc_ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{title}: ROC")
    pr_ax.set(xlabel="recall (OOD)", ylabel="precision (OOD)", title=f"{title}: PR (OOD positive)")
    roc_ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def timeline(path: Path, scores: np.ndarray, is_ood: np.ndarray, kinds: np.ndarray,
             traces: dict[str, dict[str, np.ndarray]], threshold: float, title: str) -> Path:
    """Score over the sequence with OOD episodes shaded and labelled, and each alarm test's alarms."""
    x = np.arange(scores.size)
    fig, axes = plt.subplots(1 + len(traces), 1, figsize=(13, 2.6 + 1.4 * len(traces)), sharex=True,
                             gridspec_kw={"height_ratios": [3] + [1] * len(traces)})
    axes = np.atleast_1d(axes)
    ax = axes[0]
    ax.plot(x, scores, lw=0.8, color="tab:blue", label="KL score")
    if np.isfinite(threshold):
        ax.axhline(threshold, color="tab:red", lw=0.8, ls="--", label="p-value threshold")
    starts = np.flatnonzero(np.diff(np.r_[0, is_ood.astype(int)]) == 1)
    ends = np.flatnonzero(np.diff(np.r_[is_ood.astype(int), 0]) == -1)
    for a, b in zip(starts, ends, strict=True):
        for axis in axes:
            axis.axvspan(a, b, color="tab:orange", alpha=0.15)
        ax.text(a, np.nanmax(scores), str(kinds[a]), fontsize=7, rotation=90, va="top")
    ax.set(ylabel="score", title=title)
    ax.legend(fontsize=7, loc="upper left")
    for axis, (name, trace) in zip(axes[1:], traces.items(), strict=True):
        axis.fill_between(x, 0, trace["is_ood"].astype(float), step="mid", color="tab:red", alpha=0.7)
        axis.set(ylabel=name, yticks=[])
    axes[-1].set(xlabel="frame")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def over_time(path: Path, t_s: np.ndarray, panels: dict[str, dict[str, np.ndarray]], title: str) -> Path:
    """One panel per quantity ({"memory MB": {"process": values}, ...}), each line against time."""
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.8 * len(panels)), sharex=True)
    for ax, (ylabel, lines) in zip(np.atleast_1d(axes), panels.items(), strict=True):
        for name, values in lines.items():
            ax.plot(t_s, values, marker=".", lw=1.0, label=name)
        ax.set(ylabel=ylabel)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7, loc="lower right")
    np.atleast_1d(axes)[0].set_title(title)
    np.atleast_1d(axes)[-1].set(xlabel="time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def image_grid(path: Path, rows: list[list[np.ndarray]], titles: list[str] | None = None) -> Path:
    """Rows of equally sized HxWx3 uint8 images, optional row titles."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.2 * n_cols, 2.0 * n_rows), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            axes[i, j].axis("off")
            if j < len(row):
                axes[i, j].imshow(row[j])
        if titles:
            axes[i, 0].set_title(titles[i], fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
