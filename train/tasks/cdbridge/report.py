"""What CDBridge reports beside its expression metrics: the coding-mask metrics of stage 1, the fractions of
coding and non-coding bins the merging keeps (Figure 5's measure), the seen vs held-out table per model and the
task's figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from dogmacache.train import plots
from dogmacache.train.tasks.cdbridge.data import CdbridgeData, ExampleChunks
from dogmacache.train.tasks.cdbridge.model import CdbridgeModel


def binary_metrics(logits: np.ndarray, flags: np.ndarray) -> dict[str, float]:
    """AUROC and AUPRC (average precision) of coding logits against flags; NaN when one class is absent."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    scores, labels = np.ravel(logits), np.ravel(flags) > 0.5
    if labels.all() or not labels.any():
        return {"auroc": float("nan"), "auprc": float("nan"), "coding_fraction": float(labels.mean())}
    return {
        "auroc": float(roc_auc_score(labels, scores)),
        "auprc": float(average_precision_score(labels, scores)),
        "coding_fraction": float(labels.mean()),
    }


@torch.no_grad()
def kept_fractions(
    model: CdbridgeModel, data: CdbridgeData, split: str, device: torch.device, batch_size: int
) -> dict[str, float]:
    """Fractions of coding and non-coding bins kept as their own token by the evaluation merge plan (Figure 5)."""
    model.eval()
    part = data.transcripts[split]
    kept = [
        model.plan(model.fuse(c.rows["dna"].to(device)), None).kept[c.examples["dna_index"].to(device)].cpu()
        for c in ExampleChunks(data, part, batch_size)
    ]
    kept = torch.cat(kept).numpy()
    coding = np.stack(part["target"].to_list()) > 0.5
    shares = {
        name: float(kept[m].mean()) if m.any() else float("nan")
        for name, m in (("kept_coding", coding), ("kept_noncoding", ~coding))
    }
    return {**shares, "kept_all": float(kept.mean())}


def stage1_metrics(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per trained model: its stage 1's mask metrics (AUROC, AUPRC, coding fraction) and kept fractions on
    validation and test, the test kept fractions before training (`untrained`) and the stage-1 checkpoint. A model
    trained without stage 1 gets the kept fractions of the merging its stage 2 trained."""
    table = {}
    for name, r in results.items():
        if "inspect" not in r:
            continue  # a fixed baseline: no model
        stage1 = (r.get("prerequisites") or {}).get("stage1")
        source = stage1 if stage1 is not None else r
        inspected = source.get("inspect", {})
        entry: dict[str, Any] = {}
        for split in ("validation", "test"):
            masks = {k: stage1[split][k] for k in MASK_KEYS if k in stage1[split]} if stage1 is not None else {}
            entry[split] = {**masks, **inspected.get("trained", {}).get(split, {})}
        if "untrained" in inspected:
            entry["test"]["untrained"] = inspected["untrained"]["test"]
        if stage1 is not None:
            entry["checkpoint"] = stage1["checkpoint"]
        table[name] = entry
    return table


MASK_KEYS = ("auroc", "auprc", "coding_fraction")


SEEN_VS_HELD_OUT = {  # column: (where, key); means over tissues of the test transcripts, stage-1 numbers on test
    "r2_seen": ("test", "r2_mean_seen"),
    "r2_held_out": ("test", "r2_mean_held_out"),
    "spearman_seen": ("test", "spearman_mean_seen"),
    "spearman_held_out": ("test", "spearman_mean_held_out"),
    "mask_auroc": ("stage1", "auroc"),
    "mask_auprc": ("stage1", "auprc"),
    "kept_coding": ("stage1", "kept_coding"),
    "kept_noncoding": ("stage1", "kept_noncoding"),
    "kept_coding_untrained": ("untrained", "kept_coding"),
    "kept_noncoding_untrained": ("untrained", "kept_noncoding"),
}


def seen_vs_held_out(results: dict[str, Any], stage1: dict[str, Any]) -> dict[str, dict[str, float]]:
    """One row per model: the columns of SEEN_VS_HELD_OUT (NaN where a model has no such number)."""
    table = {}
    for name, r in results.items():
        s = stage1.get(name, {}).get("test", {})
        where = {"test": r.get("test", {}), "stage1": s, "untrained": s.get("untrained", {})}
        table[name] = {column: float(where[w].get(key, float("nan"))) for column, (w, key) in SEEN_VS_HELD_OUT.items()}
    return table


def print_seen_vs_held_out(table: dict[str, dict[str, float]]) -> None:
    columns = (
        "r2_seen",
        "r2_held_out",
        "spearman_seen",
        "spearman_held_out",
        "mask_auroc",
        "kept_coding",
        "kept_noncoding",
    )
    heads = ("R2 seen", "R2 held", "Sp seen", "Sp held", "AUROC", "kept cod", "kept non")
    print(f"{'model':<20}" + "".join(f"{h:>9}" for h in heads))
    for name, row in table.items():
        print(f"{name:<20}" + "".join(f"{row[c]:>9.3f}" for c in columns))


def figures(results: dict[str, Any], data: CdbridgeData, out_dir: Any) -> list[Any]:
    """Per-tissue R² bars, seen vs held-out bars and kept-token bars per model; prints the seen vs held-out
    table."""
    out = Path(out_dir)
    table = seen_vs_held_out(results, stage1_metrics(results))
    print_seen_vs_held_out(table)
    values = {
        name: {t: r["test"]["per_tissue"][t]["r2"] for t in r["test"]["per_tissue"]}
        for name, r in results.items()
        if "per_tissue" in r.get("test", {})
    }
    if not values:
        return []
    held = ", ".join(data.held_out) or "none"
    figures = [
        plots.per_group_bars(
            values,
            "R² (test)",
            out / "per_tissue_r2.png",
            f"CDBridge: R² per tissue, test transcripts (held out: {held})",
        )
    ]
    split = {
        name: {
            "Spearman seen": row["spearman_seen"],
            "Spearman held out": row["spearman_held_out"],
            "R² seen": row["r2_seen"],
            "R² held out": row["r2_held_out"],
        }
        for name, row in table.items()
    }
    figures.append(
        plots.per_group_bars(
            split,
            "mean over tissues (test)",
            out / "seen_vs_held_out.png",
            f"CDBridge: seen tissues vs held out ({held}; zero-shot except in held_out_seen)",
        )
    )
    kept = {
        name: {
            "coding": row["kept_coding"],
            "non-coding": row["kept_noncoding"],
            "coding, untrained": row["kept_coding_untrained"],
            "non-coding, untrained": row["kept_noncoding_untrained"],
        }
        for name, row in table.items()
        if np.isfinite(row["kept_coding"])
    }
    if kept:
        figures.append(
            plots.per_group_bars(
                kept,
                "fraction of bins kept as their own token",
                out / "kept_tokens.png",
                "CDBridge merging at evaluation: coding vs non-coding bins kept (test)",
            )
        )
    return figures
