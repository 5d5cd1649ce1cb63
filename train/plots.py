"""Figures people would rather look at than read: learning curves and predicted vs observed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
    left.set(xlabel="epoch", ylabel="training loss (each task's own)", title="training loss")
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


CONTROL_GREYS = ("dimgrey", "darkgrey", "silver", "gainsboro")  # controls: greys, each with its own hatch
CONTROL_HATCHES = ("//", "..", "xx", "\\\\", "++", "--")


def model_styles(names: list[str]) -> dict[str, dict[str, Any]]:
    """A bar style per model that no other model of `names` shares: models and baselines the colours of `tab20`
    but its greys (the strong ones first), controls (`control_*`) grey and hatched, so that a control is never read
    as the model or a baseline. Styles follow the order of `names`: give every figure of a run the run's whole
    list, so that a model keeps its colour from figure to figure."""
    palette = plt.get_cmap("tab20").colors
    order = [k for k in (*range(0, 20, 2), *range(1, 20, 2)) if k not in (14, 15)]  # 14, 15: tab20's greys
    styles, k, c = {}, 0, 0
    for name in names:
        if name.startswith("control_"):
            grey = CONTROL_GREYS[c % len(CONTROL_GREYS)]
            hatch = CONTROL_HATCHES[c % len(CONTROL_HATCHES)]
            styles[name] = {"color": grey, "hatch": hatch, "edgecolor": "black", "linewidth": 0.3}
            c += 1
        else:
            styles[name] = {"color": palette[order[k % len(order)]]}
            k += 1
    return styles


def per_group_bars(
    values: dict[str, dict[str, float]], metric: str, path: Path, title: str, every_model: list[str] | None = None
) -> Path:
    """One bar per group (e.g. tissue) and model: values[model][group], each model in its own style
    (`model_styles` of `every_model`, the run's models, so that the run's figures agree; default: those drawn)."""
    models = list(values)
    groups = list(next(iter(values.values())))
    styles = model_styles([*(every_model or []), *(m for m in models if m not in (every_model or []))])
    fig, ax = plt.subplots(figsize=(max(8, 0.35 * len(groups) * len(models)), 4.5))
    width = 0.8 / len(models)
    for k, name in enumerate(models):
        ax.bar(np.arange(len(groups)) + k * width, [values[name][g] for g in groups], width, label=name, **styles[name])
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, groups, rotation=70, ha="right", fontsize=8)
    ax.set(ylabel=metric, title=title)
    ax.axhline(0, color="grey", lw=0.8)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: no bar hidden
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


PROBE_ROLES = ("model", "kmer control", "random-init control")  # a cache's own rows; other roles: its controls
CONTROL_STYLES = (("darkgrey", ""), ("lightgrey", ".."))  # bar colour and hatch of each control, in table order


def probe_scores(
    table: pd.DataFrame, metric: str, path: Path, title: str, chosen_by: str | None = "validation"
) -> Path:
    """Linear-probe scores (`train/probe.py`) per cache: the test `metric` as bars (a k-mer control orange and
    hatched, also as a dashed line across; each cache's controls as the grey bars beside it; validation as dots; the
    chosen cache starred, with what it was chosen by). Where several caches of one model (and revision) differ only
    by layer, a second panel draws the score against layer."""
    chance = 0.5 if metric == "auroc" else 0.0
    real = table[table["role"].isin(PROBE_ROLES)].reset_index(drop=True)
    roles = [role for role in dict.fromkeys(table["role"]) if role not in PROBE_ROLES]
    styles = dict(zip(roles, CONTROL_STYLES, strict=True))
    controls = {role: table[table["role"] == role].set_index("url").loc[real["url"]] for role in roles}
    kmer = (real["role"] == "kmer control").to_numpy()
    random_init = (real["role"] == "random-init control").to_numpy()
    keys = [k for k in ("model", "model_revision", "modality", "pooling") if k in real.columns]
    series = [  # one line per model: caches of one layer twice (two runs of one model) are no series
        part
        for _, part in real[~random_init].groupby(keys, sort=False, dropna=False)  # controls are no model's line
        if part["layer"].nunique() > 1 and not part["layer"].duplicated().any()
    ]
    fig, axes = plt.subplots(1, 1 + bool(series), figsize=(max(6.0, 1.4 * len(real) + 2.5) + 5 * bool(series), 4.6))
    ax = np.atleast_1d(axes)[0]
    x, width = np.arange(len(real)), 0.8 / (1 + len(roles))
    plain = ~kmer & ~random_init
    ax.bar(x[plain] - width, real[f"test_{metric}"][plain], width, color="C0", label="model")
    if kmer.any():
        ax.bar(x[kmer] - width, real[f"test_{metric}"][kmer], width, color="C1", hatch="//", label="k-mer control")
    if random_init.any():
        scores = real[f"test_{metric}"][random_init]
        ax.bar(x[random_init] - width, scores, width, color="C2", hatch="xx", label="random-init control")
    for k, (role, (colour, hatch)) in enumerate(styles.items()):
        scores = controls[role][f"test_{metric}"].to_numpy()
        ax.bar(x + k * width, scores, width, color=colour, edgecolor="grey", hatch=hatch, label=role)
        ax.scatter(x + k * width, controls[role][f"validation_{metric}"], color="black", s=10, zorder=3)
    for bars in ax.containers:
        ax.bar_label(bars, fmt="%.2f", fontsize=6)
    ax.scatter(x - width, real[f"validation_{metric}"], color="black", s=14, zorder=3, label="validation")
    chosen = real["chosen"].to_numpy(bool)
    top = np.nanmax(np.abs(table[[f"test_{metric}", f"validation_{metric}"]].to_numpy(float)))
    if chosen.any():
        ax.scatter(x[chosen] - width, [top * 1.08] * int(chosen.sum()), marker="*", s=120, color="C3", zorder=4)
        ax.scatter([], [], marker="*", s=60, color="C3", label=f"chosen by {chosen_by}")
    for score in real[f"test_{metric}"][kmer]:
        ax.axhline(score, color="C1", ls="--", lw=1)
    ax.axhline(chance, color="grey", lw=0.8)
    labels = [f"{c}\nlayer {layer}" for c, layer in zip(real["cache"], real["layer"], strict=True)]
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.set(ylabel=f"test {metric}", title=f"linear probe per cache: {title}")
    ax.set_ylim(top=max(ax.get_ylim()[1], top * 1.45))  # room for the legend above the bars
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, loc="upper center", ncols=4)
    if series:
        right = axes[1]
        for k, part in enumerate(series):
            order = _layer_order(part["layer"])
            layers = [str(v) for v in part["layer"].iloc[order]]
            right.plot(
                layers, part[f"test_{metric}"].iloc[order], marker="o", color=f"C{k}", label=part["model"].iloc[0]
            )
            for role, (colour, _) in styles.items():
                scores = controls[role][f"test_{metric}"].to_numpy()[part.index[order]]
                right.plot(layers, scores, ls="--", color=colour, label=role)
        for score in real[f"test_{metric}"][kmer]:
            right.axhline(score, color="C1", ls="--", lw=1, label="k-mer control")
        right.axhline(chance, color="grey", lw=0.8)
        right.set(xlabel="layer", ylabel=f"test {metric}", title="by layer")
        right.grid(alpha=0.3)
        handles, names = right.get_legend_handles_labels()
        keep = [names.index(n) for n in dict.fromkeys(names)]
        right.legend([handles[i] for i in keep], [names[i] for i in keep], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _layer_order(layers: pd.Series) -> np.ndarray:
    """Positions of `layers` sorted by number where every layer is one, else in the given order."""
    try:
        return np.argsort([int(v) for v in layers], kind="stable")
    except (TypeError, ValueError):
        return np.arange(len(layers))
