"""What CDBridge reports beside its expression metrics: the coding-mask metrics of stage 1, the fractions of
coding and non-coding bins the merging keeps (Figure 5's measure), the seen vs held-out table per model and the
task's figures."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from dogmacache.train import merging, plots
from dogmacache.train.metrics import flat, float_kind
from dogmacache.train.tasks.cdbridge.data import CdbridgeData, ExampleChunks
from dogmacache.train.tasks.cdbridge.model import CdbridgeModel
from scipy import stats


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


KEPT_SPLITS = 8  # random A/B splits averaged per evaluation of the kept fractions


@torch.no_grad()
def kept_fractions(
    model: CdbridgeModel, data: CdbridgeData, split: str, device: torch.device, batch_size: int
) -> dict[str, float]:
    """Figure 5's measure without its floor: of the bins that could be merged away (set A of a bipartite split,
    half of each window), the fractions of coding and non-coding bins kept as their own token at the evaluation
    rate (`merge_rate_mean`), averaged over KEPT_SPLITS seeded random A/B splits. (Counting every bin, as with
    the fixed even/odd split, the B half is always kept: a floor of 0.5 that says nothing.) `kept_all_bins` is
    the plain share of all bins kept under the same splits, for comparison."""
    model.eval()
    part = data.transcripts[split]
    kept_a, in_a = [], []
    for chunk in ExampleChunks(data, part, batch_size):
        fused = model.fuse(chunk.rows["dna"].to(device))[chunk.examples["dna_index"].to(device)]
        for r in range(KEPT_SPLITS):
            plan = merging.merge_plan(fused, model.rate_mean, generator=torch.Generator(device=device).manual_seed(r))
            kept_a.append(plan.kept.cpu().numpy())
            in_a.append(plan.in_a.cpu().numpy())
    coding = np.stack(part["target"].to_list()) > 0.5
    n_chunks = len(kept_a) // KEPT_SPLITS
    kept = np.concatenate([np.stack(kept_a[c * KEPT_SPLITS : (c + 1) * KEPT_SPLITS]) for c in range(n_chunks)], axis=1)
    a_set = np.concatenate([np.stack(in_a[c * KEPT_SPLITS : (c + 1) * KEPT_SPLITS]) for c in range(n_chunks)], axis=1)
    coding = np.broadcast_to(coding, kept.shape)  # (splits, T, L)
    shares = {
        name: float(kept[m & a_set].mean()) if (m & a_set).any() else float("nan")
        for name, m in (("kept_coding", coding), ("kept_noncoding", ~coding))
    }
    return {**shares, "kept_all_bins": float(kept.mean())}


def position_prior(data: CdbridgeData, split: str) -> np.ndarray:
    """The coding-mask baseline that reads no sequence: each bin's coding frequency over the training
    transcripts of the same strand (the window's strand, `chrom:center:strand`; all transcripts where it is not
    known), for the transcripts of `split`: (T, L)."""
    train = data.transcripts["train"]
    masks = np.stack(train["target"].to_list()).astype(np.float64)
    overall = masks.mean(0)
    by_strand = {s: masks[(train["strand"] == s).to_numpy()].mean(0) for s in set(train["strand"])}
    return np.stack([by_strand.get(s, overall) for s in data.transcripts[split]["strand"]])


def stage1_metrics(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per trained model: its stage 1's mask metrics (AUROC, AUPRC, coding fraction) and kept fractions on
    validation and test, the test kept fractions before training (`untrained`) and the stage-1 checkpoint. A model
    trained without stage 1 gets the kept fractions of the merging its stage 2 trained; a stage-1 run ([model]
    stage = 1) its own mask metrics."""
    table = {}
    for name, r in results.items():
        if "inspect" not in r:
            continue  # a fixed baseline: no model
        stage1 = (r.get("prerequisites") or {}).get("stage1")
        own = stage1 is None and any(k in r.get("test", {}) for k in MASK_KEYS)  # a stage-1 run: its own masks
        # the model's own merging where it measured one (no stage 1, or stage 1 trained on), else its stage 1's
        inspected = r["inspect"] if r["inspect"].get("trained") or stage1 is None else stage1.get("inspect", {})
        entry: dict[str, Any] = {}
        for split in ("validation", "test"):
            scored = stage1 if stage1 is not None else r if own else {}
            masks = {k: scored[split][k] for k in MASK_KEYS if k in scored.get(split, {})}
            entry[split] = {**masks, **inspected.get("trained", {}).get(split, {})}
        if "untrained" in inspected:
            entry["test"]["untrained"] = inspected["untrained"]["test"]
        if stage1 is not None:
            entry["checkpoint"] = stage1["checkpoint"]
        table[name] = entry
    return table


MASK_KEYS = ("auroc", "auprc", "coding_fraction", "prior_auroc", "prior_auprc")


def tissue_specific_spearman(
    predictions: np.ndarray,
    observed: np.ndarray,
    transcripts: np.ndarray,
    tissue_of: np.ndarray,
    seen: list[str],
    held: list[str],
) -> dict[str, float]:
    """Per tissue, the Spearman correlation over transcripts of its own part of the label: the label minus the
    mean of the seen tissues' labels for the same transcript (for a seen tissue, the other seen tissues'), against
    the prediction minus the model's mean over those same tissues. A model blind to the tissue predicts the same
    for every tissue, so its part is constant and scores 0: what the tissues share (most of each label, in the
    demo's and in GTEx's expression) cannot carry it, where it carries the plain per-tissue Spearman."""
    rows, row_of = np.unique(np.asarray(transcripts), return_inverse=True)
    names = [*seen, *held]
    col_of = {t: k for k, t in enumerate(names)}
    cols = np.array([col_of.get(t, -1) for t in np.asarray(tissue_of)])
    keep = cols >= 0
    grids = {}
    for key, values in (("y", observed), ("p", predictions)):  # (transcripts, tissues): the mean of each cell
        total = np.zeros((len(rows), len(names)))
        count = np.zeros((len(rows), len(names)))
        np.add.at(total, (row_of[keep], cols[keep]), np.asarray(values, dtype=np.float64)[keep])
        np.add.at(count, (row_of[keep], cols[keep]), 1.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            grids[key] = total / count  # NaN where a transcript lacks the tissue
    # the same prediction for every tissue, up to rounding between batches: a part of rounding is none (`flat`, on
    # the scale of the predictions the parts are differences of)
    kind, scale = float_kind(predictions), float(np.abs(predictions).max()) if len(predictions) else 0.0
    n_seen = len(seen)
    out: dict[str, float] = {}
    for k, tissue in enumerate(names):
        others = [j for j in range(n_seen) if j != k]
        if not others or np.isnan(grids["y"][:, k]).all():
            continue
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a transcript with none of the other tissues: NaN
            parts = {c: grids[c][:, k] - np.nanmean(grids[c][:, others], axis=1) for c in "yp"}
        found = np.isfinite(parts["y"]) & np.isfinite(parts["p"])
        if found.sum() >= 2:
            predicted, own = parts["p"][found], parts["y"][found]
            if flat(predicted, kind, scale) or flat(own, float_kind(observed)):
                out[tissue] = 0.0  # as a correlation with a constant is reported (`regression_metrics`)
            else:
                out[tissue] = float(stats.spearmanr(predicted, own)[0])
    return out


SEEN_VS_HELD_OUT = {  # column: (where, key); means over tissues of the test transcripts, stage-1 numbers on test
    "r2_seen": ("test", "r2_mean_seen"),
    "r2_held_out": ("test", "r2_mean_held_out"),
    "spearman_seen": ("test", "spearman_mean_seen"),
    "spearman_held_out": ("test", "spearman_mean_held_out"),
    "specific_seen": ("test", "spearman_specific_seen"),  # each tissue's own part (`tissue_specific_spearman`)
    "specific_held_out": ("test", "spearman_specific_held_out"),
    "mask_auroc": ("stage1", "auroc"),
    "mask_auprc": ("stage1", "auprc"),
    "prior_auroc": ("stage1", "prior_auroc"),  # the position prior (no sequence) on the same bins
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
        "specific_seen",
        "specific_held_out",
        "mask_auroc",
        "prior_auroc",
        "kept_coding",
        "kept_noncoding",
    )
    heads = (
        "R2 seen",
        "R2 held",
        "Sp seen",
        "Sp held",
        "own seen",
        "own held",
        "AUROC",
        "prior",
        "kept cod",
        "kept non",
    )
    print("Spearman needs no per-tissue calibration (the zero-shot headline); own = Spearman of each tissue's own part")
    print("(label minus the seen tissues' mean for the transcript: a tissue-blind model scores 0); prior = the")
    print("position prior's AUROC;")
    print("kept = share of mergeable (set A) bins kept as their own token, over random A/B splits")
    print(f"{'model':<26}" + "".join(f"{h:>9}" for h in heads))
    for name, row in table.items():
        print(f"{name:<26}" + "".join(f"{row[c]:>9.3f}" for c in columns))


def figures(results: dict[str, Any], data: CdbridgeData, out_dir: Any, trained_on_held_out: bool = False) -> list[Any]:
    """Per-tissue R² bars, seen vs held-out bars and kept-token bars per model; prints the seen vs held-out
    table. `trained_on_held_out`: the run's own [data] train_held_out, under which no model's held-out number is
    zero-shot."""
    out = Path(out_dir)
    table = seen_vs_held_out(results, stage1_metrics(results))
    if trained_on_held_out:
        print("[data] train_held_out = true: every model trained on the held-out tissues too; none of their numbers")
        print("below is zero-shot (they are only left out of choosing the checkpoint)")
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
            every_model=list(results),
        )
    ]
    split = {
        name: {
            "Spearman seen": row["spearman_seen"],
            "Spearman held out": row["spearman_held_out"],
            "R² seen": row["r2_seen"],
            "R² held out": row["r2_held_out"],
            "own part, held out": row["specific_held_out"],
        }
        for name, row in table.items()
    }
    figures.append(
        plots.per_group_bars(
            split,
            "mean over tissues (test)",
            out / "seen_vs_held_out.png",
            f"CDBridge: seen tissues vs held out ({held}; "
            + (
                "trained on by every model: not zero-shot)"
                if trained_on_held_out
                else "zero-shot except in held_out_seen)"
            ),
            every_model=list(results),
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
                every_model=list(results),
            )
        )
    return figures
