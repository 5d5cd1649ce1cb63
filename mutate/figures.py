"""The moved-genes figure: per variant, the top genes by L2 shift of their scGPT output embedding."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

MAX_PANELS = 12  # variants drawn (a scan of many edits: the first ones; moved_genes.tsv holds every variant)


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def moved_genes_figure(moved: pd.DataFrame, labels: list[str], config, path: Path, show: int = 30) -> Path:
    """One panel per variant (`moved`'s `variant` column; `labels`: each variant's edits), titled with that
    variant's edits: with --each a panel names one edit, never the whole list above one edit's genes."""
    variants = sorted(moved["variant"].unique())[:MAX_PANELS]
    shown = [moved[moved["variant"] == v].head(show).iloc[::-1] for v in variants]  # largest at the top
    heights = [max(3, 0.22 * len(t) + 1) for t in shown]
    fig, axes = plt.subplots(len(variants), 1, figsize=(6, sum(heights)), squeeze=False, height_ratios=heights)
    for ax, v, top in zip(axes[:, 0], variants, shown, strict=True):
        colors = ["tab:red" if r else "tab:blue" for r in top["token_replaced"]]
        ax.barh(top["gene"], top["l2_shift"], color=colors)
        name = f"variant {v}: " if len(labels) > 1 else ""
        ax.set(
            xlabel="L2 shift of the output embedding (edited - reference)",
            title=f"{config.gene} edited ({name}{_short(labels[v])}), profile {config.profile}\n"
            "red = token replaced by the adapted token",
        )
        ax.grid(axis="x", alpha=0.3)
    if len(labels) > len(variants):
        fig.suptitle(f"the first {len(variants)} of {len(labels)} variants; moved_genes.tsv holds them all", y=1.0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
