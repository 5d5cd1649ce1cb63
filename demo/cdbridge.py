"""The demo's CDBridge run: the isoform recipe's TSS windows (the tiny-Enformer cache IsoFormer reads), its peptides
through ESM-2 mean-pooled (the protein dictionary's source) and its tissue profiles through scGPT `context` (the
tissue dictionary) -> both stages with the paper's ablations beside the per-tissue mean, with the recipe's held-out
tissue (`HOLDOUT_TISSUES`) scored zero-shot. Every step calls the function a user's command calls, with its config
dataclass; it runs after `embed_demo` (needs `recipe/isoform`, `models/` and the isoform DNA cache)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from dogmacache.data_recipes.demo import HOLDOUT_TISSUES
from dogmacache.demo.training import CONTROLS, lean
from dogmacache.train.config import OutputConfig, RunConfig, to_toml
from dogmacache.train.registry import default_config

CDBRIDGE_EPOCHS = 25
# (modality, model, recipe table under recipe/isoform, cache name, adapter options)
CDBRIDGE_CACHES = (
    ("protein", "esm2", "protein_sequences.parquet", "cdbridge-protein-esm2-mean.zarr", {"pooling": "mean"}),
    ("context", "scgpt", "tissue_profiles.parquet", "cdbridge-tissue-scgpt.zarr", {}),
)


# the k-mer control's own settings, chosen on fold 0's validation split among standardize_dna on/off x lr 5e-3 / 1e-3
# (seeds 0-2, mean validation Spearman over seen tissues: on + 5e-3 0.418, on + 1e-3 0.459, off + 5e-3 0.463, this
# one 0.509; README)
KMER_SETTINGS = "data.standardize_dna=false; train.lr=0.001"


def embed_cdbridge(out: Path, progress: bool = True) -> dict[str, Path]:
    """The pooled protein and tissue caches: {"protein": path, "tissue": path}."""
    from dogmacache.demo.own_caches import embed_own
    from dogmacache.embed.adapters import get_adapter
    from dogmacache.embed.runner import EmbedConfig, run_embed

    caches = {}
    for modality, model, table, name, options in CDBRIDGE_CACHES:
        path = caches["tissue" if modality == "context" else modality] = out / "cache" / name
        embed_own(
            run_embed,
            EmbedConfig(
                input=str(out / "recipe" / "isoform" / table),
                modality=modality,
                model=model,
                model_path=str(out / "models" / model),
                out=str(path),
                options=get_adapter(model, modality).options_class.from_dict(options),
                progress=progress,
            ),
        )
    return caches


def cdbridge_config(
    out: Path,
    caches: dict[str, Path],
    seed: int = 0,
    epochs: int | None = None,
    fold: int = 0,
    stage1: str = "",
) -> RunConfig:
    """CDBridge on the demo caches: tiny widths, a 16-token protein dictionary (the demo has ~90 training
    proteins), larger learning rate (365 transcripts, random tiny encoders). Fold 0 holds out the recipe's
    tissues and trains every ablation of the paper and every control; the other folds hold out their own tissues
    (scaled with the seen tissues' statistics by the task) and train the model beside the per-tissue mean, the
    permutation null and shuffled inputs, from fold 0's stage 1 (`stage1`: the coding masks do not depend on the
    tissues; the k-mer DNA control, which needs its own stage 1, runs on fold 0)."""
    recipe = out / "recipe" / "isoform"
    base = default_config("cdbridge")
    folds = holdout_folds()
    return dataclasses.replace(
        base,
        data=dataclasses.replace(
            base.data,
            labels=str(recipe / "labels.parquet"),
            dna_cache=str(caches["dna"]),
            protein_cache=str(caches["protein"]),
            tissue_cache=str(caches["tissue"]),
            coding_masks=str(recipe / "coding_masks.parquet"),
            tissues_table=str(recipe / "tissues.parquet"),
            recipe_holdout=fold == 0,
            holdout_tissues=() if fold == 0 else tuple(folds[fold]),
            stage1_checkpoint=stage1,
        ),
        model=dataclasses.replace(
            base.model,
            d_model=32,
            n_heads=4,
            ffn_hidden=64,
            dictionary_size=16,
            functional_layers=1,
            tissue_layers=1,
            output_tokens=4,
            contrastive_weight=0.1,
            stage1_batch_size=256,
            ablations=base.model.ablations if fold == 0 else (),
        ),  # 287 training transcripts; stage 2 has 29 cells each
        train=dataclasses.replace(
            base.train,
            epochs=epochs or CDBRIDGE_EPOCHS,
            batch_size=1024,
            lr=5e-3,
            weight_decay=0.0,
            plateau_patience=2,
            early_stop_patience=5,
            seed=seed,
            num_workers=0,
            controls=CONTROLS,  # every fold's held-out score beside its permutation null and shuffled inputs
            # the k-mer DNA control trains its own stage 1 on fold 0; folds 1-2 start from fold 0's Enformer stage 1.
            # Its settings: KMER_SETTINGS (with the Enformer features' z-scoring and lr it fitted noise)
            control_caches=(f"dna_cache={caches['dna_kmer']}; {KMER_SETTINGS}",)
            if fold == 0 and "dna_kmer" in caches
            else (),
        ),
        output=OutputConfig(dir=str(out / fold_name(fold)), resume=False, overwrite=True),
    )


def holdout_folds() -> tuple[tuple[str, ...], ...]:
    """The demo recipe's leave-tissues-out folds (fold 0 = the tissues the recipe itself holds out)."""
    from dogmacache.data_recipes import demo

    return tuple(tuple(f) for f in getattr(demo, "HOLDOUT_FOLDS", (HOLDOUT_TISSUES,)))


def fold_name(fold: int) -> str:
    return "train_cdbridge" if fold == 0 else f"train_cdbridge_fold{fold}"


def run_cdbridge_demo(
    out: Path,
    dna_caches: dict[str, Path],
    seed: int = 0,
    epochs: int | None = None,
    progress: bool = True,
    null: bool = False,
) -> dict:
    """Caches, then each fold (fold 0: both stages, the ablations and the k-mer control; every fold: the permutation
    null and shuffled inputs), on a demo folder that
    `embed_demo` filled; returns fold 0's summary with `folds`: the seen vs held-out table of every fold."""
    from dogmacache.train.registry import load_config
    from dogmacache.train.run import run_training

    caches = {**dna_caches, **embed_cdbridge(out, progress)}
    summaries, stage1 = [], ""

    for fold, tissues in enumerate(holdout_folds()[:1] if null else holdout_folds()):
        path = out / f"{fold_name(fold)}.toml"
        header = f"CDBridge on the demo's isoform caches, fold {fold}: {', '.join(tissues)} held out"
        config = cdbridge_config(out, caches, seed, epochs, fold, stage1)
        path.write_text(to_toml(lean(config) if null else config, header))
        print(f"--- fold {fold}: {', '.join(tissues)} held out")
        summaries.append(run_training(load_config(path), progress=progress))
        stage1 = str(out / fold_name(0) / "stage1" / "cdbridge_stage1_best.pt")
    return {**summaries[0], "folds": fold_table(summaries)}


def fold_table(summaries: list[dict]) -> dict[str, dict[str, float]]:
    """Per fold and the mean over folds: the seen and held-out Spearman and R² (held-out tissues scaled with the
    seen tissues' statistics) of the model, the per-tissue mean and every control each fold ran."""
    import numpy as np

    rows: dict[str, dict[str, float]] = {}
    named = ["cdbridge", "per_tissue_mean", *(m for m in summaries[0]["seen_vs_held_out"] if m.startswith("control_"))]
    models = [m for m in named if all(m in s["seen_vs_held_out"] for s in summaries)]
    for fold, summary in enumerate(summaries):
        for model in models:
            row = summary["seen_vs_held_out"][model]
            rows[f"fold{fold} {model}"] = {k: row[k] for k in FOLD_COLUMNS}
    for model in models:
        per_fold = [rows[f"fold{f} {model}"] for f in range(len(summaries))]
        rows[f"mean of folds {model}"] = {k: float(np.mean([r[k] for r in per_fold])) for k in FOLD_COLUMNS}
    return rows


FOLD_COLUMNS = ("spearman_seen", "spearman_held_out", "specific_held_out", "r2_seen", "r2_held_out")


def print_fold_table(rows: dict[str, dict[str, float]]) -> None:
    width = max(len(name) for name in rows) + 2
    print(f"{'fold / model':<{width}}" + "".join(f"{c:>19}" for c in FOLD_COLUMNS))
    for name, row in rows.items():
        print(f"{name:<{width}}" + "".join(f"{row[c]:>19.3f}" for c in FOLD_COLUMNS))
