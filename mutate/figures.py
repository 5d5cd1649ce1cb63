"""The moved-genes figure of one variant: the top genes by L2 shift of their scGPT output embedding."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def moved_genes_figure(moved: pd.DataFrame, config, path: Path, show: int = 30) -> Path:
    top = moved.head(show).iloc[::-1]  # largest at the top
    fig, ax = plt.subplots(figsize=(6, max(3, 0.22 * len(top) + 1)))
    colors = ["tab:red" if r else "tab:blue" for r in top["token_replaced"]]
    ax.barh(top["gene"], top["l2_shift"], color=colors)
    edits = ", ".join([*config.edits, *([Path(config.vcf).name] if config.vcf else [])])
    shown = edits if len(edits) <= 60 else edits[:57] + "..."
    ax.set(
        xlabel="L2 shift of the output embedding (edited - reference)",
        title=f"{config.gene} edited ({shown}), profile {config.profile}\nred = token replaced by the adapted token",
    )
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
