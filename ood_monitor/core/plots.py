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
    if roc_ax.get_legend_handles_labels()[0]:
        roc_ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def episode_bands(is_ood: np.ndarray, episode: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of every run of OOD frames with one episode id: back-to-back episodes are two bands."""
    ood = np.asarray(is_ood, bool)
    ep = np.where(ood, np.asarray(episode, np.int64), -1)
    change = np.flatnonzero(np.diff(ep) != 0) + 1
    bounds = np.r_[0, change, ep.size]
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if a < b and ood[a]]


def _value_axis(ax, values: np.ndarray) -> None:
    """Log axis for positive values; symmetric log when some are <= 0 (scores spanning 10^0..10^12 stay readable)."""
    finite = values[np.isfinite(values)]
    if finite.size and finite.min() > 0:
        ax.set_yscale("log")
    elif finite.size:
        positive = np.abs(finite[finite != 0])
        ax.set_yscale("symlog", linthresh=float(np.percentile(positive, 5)) if positive.size else 1.0)


STATISTICS = {"martingale": ("log_martingale", "martingale_threshold", "log martingale"),
              "cusum": ("cusum", "cusum_threshold", "CUSUM"),
              "pvalue": ("p_value", "pvalue_threshold", "p-value")}


def timeline(path: Path, scores: np.ndarray, labels, traces: dict[str, dict[str, np.ndarray]],
             configs: dict, threshold: float, score_name: str, title: str) -> Path:
    """The sequence as the node sees it: the score (log axis) with the p-value threshold's score, the
    conformal p-value (log axis) with its threshold, and each alarm test's statistic with its threshold
    and alarms. Every OOD episode is one labelled band, back-to-back episodes included; dotted lines mark
    where the alarm state restarts (stamp gaps, stamps jumping back, a new recording)."""
    x = np.arange(scores.size)
    n = 2 + len(traces)
    fig, axes = plt.subplots(n, 1, figsize=(13, 2.2 + 1.5 * n), sharex=True,
                             gridspec_kw={"height_ratios": [3, 1.5] + [1.5] * len(traces)})
    axes = np.atleast_1d(axes)
    ax = axes[0]
    ax.plot(x, scores, lw=0.8, color="tab:blue", label=f"{score_name} score")
    _value_axis(ax, scores)
    if np.isfinite(threshold):
        first = next(iter(configs.values()))
        ax.axhline(threshold, color="tab:red", lw=0.8, ls="--", label=f"score at p = {first.pvalue_threshold:g}")
    ax.set(ylabel=f"{score_name} score", title=title)
    ax.legend(fontsize=7, loc="upper left")
    trace = next(iter(traces.values()), None)
    if trace is not None:
        pax = axes[1]
        pax.plot(x, trace["p_value"], lw=0.7, color="tab:green")
        pax.set_yscale("log")
        first = next(iter(configs.values()))
        pax.axhline(first.pvalue_threshold, color="tab:red", lw=0.8, ls="--")
        pax.set(ylabel="p-value")
    for axis, (name, tr) in zip(axes[2:], traces.items(), strict=True):
        key, limit, label = STATISTICS[name]
        cfg = configs[name]
        axis.plot(x, tr[key], lw=0.8, color="tab:purple")
        axis.axhline(getattr(cfg, limit), color="tab:red", lw=0.8, ls="--")
        if key == "p_value":
            axis.set_yscale("log")
        top = axis.get_ylim()[1]
        axis.fill_between(x, axis.get_ylim()[0], top, where=tr["is_ood"].astype(bool), step="mid",
                          color="tab:red", alpha=0.25, lw=0)
        axis.set(ylabel=f"{name}\n{label}")
    colours = ("tab:orange", "tab:olive")
    for k, (a, b) in enumerate(episode_bands(labels.is_ood, labels.episode)):
        for axis in axes:
            axis.axvspan(a - 0.5, b - 0.5, color=colours[k % 2], alpha=0.18, lw=0)
        ax.text(a, 0.98, f"{labels.kind[a]} #{int(labels.episode[a])}", fontsize=7, rotation=90, va="top",
                transform=ax.get_xaxis_transform())
    if labels.sequence is not None:
        for restart in np.flatnonzero(np.diff(np.asarray(labels.sequence)) != 0) + 1:
            for axis in axes:
                axis.axvline(restart - 0.5, color="k", lw=0.6, ls=":")
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
