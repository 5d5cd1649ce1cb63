"""The demo's CDBridge run: the isoform recipe's TSS windows (the tiny-Enformer cache IsoFormer reads), its peptides
through ESM-2 mean-pooled (the protein dictionary's source) and its tissue profiles through scGPT `context` (the
tissue dictionary) -> both stages with the paper's ablations beside the per-tissue mean, with the recipe's held-out
tissue (`HOLDOUT_TISSUES`) scored zero-shot. Every step calls the function a user's command calls, with its config
dataclass; it runs after `embed_demo` (needs `recipe/isoform`, `models/` and the isoform DNA cache)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from dogmacache.data_recipes.demo import HOLDOUT_TISSUES
from dogmacache.train.config import OutputConfig, RunConfig, to_toml
from dogmacache.train.registry import default_config

CDBRIDGE_EPOCHS = 25
# (modality, model, recipe table under recipe/isoform, cache name, adapter options)
CDBRIDGE_CACHES = (
    ("protein", "esm2", "protein_sequences.parquet", "cdbridge-protein-esm2-mean.zarr", {"pooling": "mean"}),
    ("context", "scgpt", "tissue_profiles.parquet", "cdbridge-tissue-scgpt.zarr", {}),
)


def embed_cdbridge(out: Path, progress: bool = True) -> dict[str, Path]:
    """The pooled protein and tissue caches: {"protein": path, "tissue": path}."""
    from dogmacache.embed.adapters import get_adapter
    from dogmacache.embed.runner import EmbedConfig, run_embed

    caches = {}
    for modality, model, table, name, options in CDBRIDGE_CACHES:
        path = caches["tissue" if modality == "context" else modality] = out / "cache" / name
        run_embed(
            EmbedConfig(
                input=str(out / "recipe" / "isoform" / table),
                modality=modality,
                model=model,
                model_path=str(out / "models" / model),
                out=str(path),
                options=get_adapter(model, modality).options_class.from_dict(options),
                progress=progress,
            )
        )
    return caches


def cdbridge_config(out: Path, caches: dict[str, Path], seed: int = 0, epochs: int | None = None) -> RunConfig:
    """CDBridge on the demo caches: tiny widths, a 16-token protein dictionary (the demo has ~90 training
    proteins), larger learning rate (365 transcripts, random tiny encoders), every ablation of the paper."""
    recipe = out / "recipe" / "isoform"
    base = default_config("cdbridge")
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
        ),  # 287 training transcripts; stage 2 has 29 cells each
        train=dataclasses.replace(
            base.train,
            epochs=epochs or CDBRIDGE_EPOCHS,
            batch_size=512,
            lr=3e-3,
            weight_decay=0.0,
            plateau_patience=2,
            early_stop_patience=5,
            seed=seed,
            num_workers=0,
        ),
        output=OutputConfig(dir=str(out / "train_cdbridge"), resume=False, overwrite=True),
    )


def run_cdbridge_demo(
    out: Path, dna_cache: Path, seed: int = 0, epochs: int | None = None, progress: bool = True
) -> dict:
    """Caches, then both stages and the ablations, on a demo folder that `embed_demo` filled."""
    from dogmacache.train.registry import load_config
    from dogmacache.train.run import run_training

    caches = {"dna": dna_cache, **embed_cdbridge(out, progress)}
    path = out / "train_cdbridge.toml"
    path.write_text(
        to_toml(
            cdbridge_config(out, caches, seed, epochs),
            f"CDBridge on the demo's isoform caches, {', '.join(HOLDOUT_TISSUES)} held out by the recipe",
        )
    )
    return run_training(load_config(path), progress=progress)
