"""PNG figures: per item, the attention and gradient profiles over the window with the centre marked and the
per-head attention panels; across items, the top-k overlap and the peak-distance histograms.

Attention is drawn as the model computed it. `temperature` re-sharpens it for display (softmax(log w / T)),
labelled on the figure; it is an option, never the default, and no reported number uses it.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from dogmacache.explain.attribution import temperature_scaled  # noqa: E402


def _display(weights: np.ndarray, temperature: float | None) -> tuple[np.ndarray, str]:
    if temperature is None:
        return weights, "attention"
    scaled = temperature_scaled(torch.from_numpy(np.asarray(weights, dtype=np.float32)), temperature).numpy()
    return scaled, f"attention (display only: temperature-scaled, T={temperature:g})"


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def item_profile(
    path: Path,
    offsets_bp: np.ndarray,
    attention: np.ndarray,
    gradient: np.ndarray,
    title: str,
    top_attention: np.ndarray,
    top_gradient: np.ndarray,
    temperature: float | None = None,
) -> Path:
    """Head-averaged attention (L,) above gradient norms (L,) against the offset from the centre (kb)."""
    kb = np.asarray(offsets_bp) / 1000.0
    shown, label = _display(attention, temperature)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5), sharex=True)
    for ax, values, best, colour, ylabel in (
        (top, shown, top_attention, "tab:blue", label),
        (bottom, gradient, top_gradient, "tab:red", "gradient ||dŷ/dx||₂"),
    ):
        ax.plot(kb, values, color=colour, lw=1)
        ax.scatter(kb[best], np.asarray(values)[best], color=colour, s=14, zorder=3, label=f"top {len(best)}")
        ax.axvline(0, color="k", ls="--", lw=0.8, label="window centre")
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    top.set_title(title, fontsize=9)
    bottom.set_xlabel("offset from the window centre (kb, along the strand)")
    return _save(fig, path)


def head_panels(
    path: Path, offsets_bp: np.ndarray, heads: np.ndarray, title: str, temperature: float | None = None
) -> Path:
    """One panel per head of the target gene's DNA->RNA attention row, heads (H, L)."""
    kb = np.asarray(offsets_bp) / 1000.0
    shown, label = _display(heads, temperature)
    n = len(shown)
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.2 * rows), sharex=True, squeeze=False)
    for h, ax in enumerate(axes.flat):
        if h >= n:
            ax.axis("off")
            continue
        ax.plot(kb, shown[h], lw=0.8)
        ax.axvline(0, color="k", ls="--", lw=0.6)
        ax.set_title(f"head {h}", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"{title}\n{label} per head; x: kb from centre", fontsize=8)
    return _save(fig, path)


def overlap_histogram(
    path: Path, overlaps: list[int], k: int, expected_random: float, mismatched: float = float("nan")
) -> Path:
    values = np.asarray(overlaps)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(values, bins=np.arange(-0.5, k + 1.5, 1.0), color="tab:purple", edgecolor="white")
    ax.axvline(values.mean(), color="k", lw=1, label=f"mean {values.mean():.2f}")
    ax.axvline(expected_random, color="grey", ls=":", lw=1, label=f"random k²/L = {expected_random:.2f}")
    if np.isfinite(mismatched):
        ax.axvline(mismatched, color="tab:orange", ls="--", lw=1, label=f"items of other windows {mismatched:.2f}")
    ax.set(
        xlabel=f"positions shared by the top {k} of attention and of gradient",
        ylabel="items",
        title=f"attention vs gradient, top-{k} overlap ({len(values)} items)",
    )
    ax.legend(fontsize=8)
    return _save(fig, path)


def peak_distance_histogram(
    path: Path, attention_bp: list[float], gradient_bp: list[float], within_bp: float = 50_000
) -> Path:
    a, g = np.asarray(attention_bp) / 1000.0, np.asarray(gradient_bp) / 1000.0
    edges = np.linspace(min(a.min(), g.min()) - 1e-9, max(a.max(), g.max()) + 1e-9, 31)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(
        [a, g],
        bins=edges,
        color=["tab:blue", "tab:red"],
        label=[
            f"attention peak (mean |d| {np.abs(a).mean():.1f} kb)",
            f"gradient peak (mean |d| {np.abs(g).mean():.1f} kb)",
        ],
    )
    ax.axvline(0, color="r", ls="--", lw=0.8)
    w = within_bp / 1000.0
    if edges[0] < w and edges[-1] > -w:
        ax.axvspan(max(-w, edges[0]), min(w, edges[-1]), color="green", alpha=0.08, label=f"±{w:g} kb")
    ax.set(xlabel="peak offset from the window centre (kb)", ylabel="items", title="where the peaks lie")
    ax.legend(fontsize=8)
    return _save(fig, path)
