"""Figures people would rather look at than read: learning curves and predicted vs observed."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def learning_curves(log: pd.DataFrame, path: Path, metric: str = "pearson") -> Path:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, part in log.groupby("model"):
        left.plot(part["epoch"], part["train_loss"], marker=".", label=name)
        right.plot(part["epoch"], part[f"val_{metric}"], marker=".", label=name)
    left.set(xlabel="epoch", ylabel="training loss (SmoothL1)", title="training loss")
    right.set(xlabel="epoch", ylabel=metric, title=f"validation {metric}")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def predicted_vs_observed(
    observed: np.ndarray, predicted: dict[str, np.ndarray], metrics: dict[str, dict], path: Path, split: str = "test"
) -> Path:
    observed = np.ravel(observed)  # (transcript, tissue) cells count one point each
    predicted = {name: np.ravel(values) for name, values in predicted.items()}
    fig, axes = plt.subplots(1, len(predicted), figsize=(4.2 * len(predicted), 4), squeeze=False)
    lo, hi = float(np.min(observed)), float(np.max(observed))
    for ax, (name, values) in zip(axes[0], predicted.items(), strict=True):
        ax.scatter(observed, values, s=8, alpha=0.6)
        ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
        m = metrics[name]
        ax.set(
            xlabel="observed",
            ylabel="predicted",
            title=f"{name} ({split}): r={m['pearson']:.3f}, rho={m['spearman']:.3f}, n={m['n']}",
        )
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def per_group_bars(values: dict[str, dict[str, float]], metric: str, path: Path, title: str) -> Path:
    """One bar per group (e.g. tissue) and model: values[model][group]."""
    models = list(values)
    groups = list(next(iter(values.values())))
    fig, ax = plt.subplots(figsize=(max(8, 0.35 * len(groups) * len(models)), 4.5))
    width = 0.8 / len(models)
    for k, name in enumerate(models):
        ax.bar(np.arange(len(groups)) + k * width, [values[name][g] for g in groups], width, label=name)
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, groups, rotation=70, ha="right", fontsize=8)
    ax.set(ylabel=metric, title=title)
    ax.axhline(0, color="grey", lw=0.8)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
