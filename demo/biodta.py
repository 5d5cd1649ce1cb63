"""The demo's Bio-DTA run: gene_tss windows of the demo genes (the bundled GTF, the tiny scGPT's vocabulary) ->
their tiny-Enformer DNA cache and scGPT gene-token cache -> the adapter trained with its mean-token baseline ->
one in-silico TSS deletion through `dogmacache mutate` on the demo's Heart profile (the paper's GATA4 example,
on a demo gene). Every step calls the function a user's command calls, with its config dataclass; it runs after
`embed_demo` (needs `recipe/genome.fa` and `models/`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from dogmacache.train.config import OutputConfig, RunConfig, to_toml
from dogmacache.train.registry import default_config

BIODTA_EPOCHS = 60
MUTATE_GENE = "DEMO05"  # a demo gene expressed in the Heart profile
MUTATE_PROFILE = "Heart"
TSS_DELETION_BP = 200  # bases deleted around the TSS (the paper deletes GATA4's TSS)


def build_biodta_recipe(out: Path, seed: int = 0) -> Path:
    """recipe/biodta: one TSS window per demo gene of the tiny scGPT's vocabulary."""
    from dogmacache.data_recipes.gene_tss import build_gene_tss
    from dogmacache.data_recipes.make_demo_data import HERE as DEMO_DATA

    recipe = out / "recipe" / "biodta"
    build_gene_tss(
        DEMO_DATA / "Homo_sapiens.GRCh38.88.gtf.gz", out / "models" / "scgpt" / "vocab.json", recipe, seed=seed
    )
    return recipe


def embed_biodta(out: Path, recipe: Path, models: dict[str, Path], progress: bool = True) -> dict[str, Path]:
    """The TSS windows through the tiny Enformer and the same genes' scGPT tokens: {"dna": path, "gene": path}."""
    from dogmacache.embed.runner import EmbedConfig, run_embed

    caches = {"dna": out / "cache" / "biodta-dna-enformer.zarr", "gene": out / "cache" / "biodta-gene-scgpt.zarr"}
    run_embed(
        EmbedConfig(
            input=str(recipe / "dna_windows.parquet"),
            modality="dna",
            model="enformer",
            model_path=str(models["enformer"]),
            genome=str(out / "recipe" / "genome.fa"),
            out=str(caches["dna"]),
            progress=progress,
        )
    )
    run_embed(
        EmbedConfig(
            input=str(recipe / "genes.parquet"),
            modality="gene",
            model="scgpt",
            model_path=str(models["scgpt"]),
            out=str(caches["gene"]),
            progress=progress,
        )
    )
    return caches


def biodta_config(
    out: Path, recipe: Path, caches: dict[str, Path], seed: int = 0, epochs: int | None = None
) -> RunConfig:
    """Bio-DTA on the demo caches: small hidden width, attention pooling, cosine + MSE, larger learning rate
    (36 genes, random tiny encoders)."""
    base = default_config("biodta")
    return dataclasses.replace(
        base,
        data=dataclasses.replace(
            base.data,
            labels=str(recipe / "genes.parquet"),
            dna_cache=str(caches["dna"]),
            token_cache=str(caches["gene"]),
        ),
        model=dataclasses.replace(base.model, hidden=64, loss="both"),
        train=dataclasses.replace(
            base.train,
            epochs=epochs or BIODTA_EPOCHS,
            batch_size=8,
            lr=3e-3,
            plateau_patience=5,
            early_stop_patience=15,
            seed=seed,
            num_workers=0,
        ),
        output=OutputConfig(dir=str(out / "train_biodta"), resume=False, overwrite=True),
    )


def train_biodta_demo(
    out: Path, recipe: Path, caches: dict[str, Path], seed: int = 0, epochs: int | None = None
) -> dict:
    from dogmacache.train.registry import load_config
    from dogmacache.train.run import run_training

    path = out / "train_biodta.toml"
    path.write_text(to_toml(biodta_config(out, recipe, caches, seed, epochs), "Bio-DTA on the demo's TSS windows"))
    return run_training(load_config(path))


def mutate_demo(out: Path, recipe: Path, models: dict[str, Path], gene: str = MUTATE_GENE) -> dict:
    """Delete TSS_DELETION_BP bases centred on `gene`'s TSS; token shift and the top moved genes in Heart."""
    import pandas as pd
    from dogmacache.mutate import MutateConfig, run_mutate

    row = pd.read_parquet(recipe / "genes.parquet").set_index("id").loc[gene]
    start = int(row["center"]) - TSS_DELETION_BP // 2
    config = MutateConfig(
        checkpoint=str(out / "train_biodta" / "biodta_best.pt"),
        genome=str(out / "recipe" / "genome.fa"),
        dna_model=str(models["enformer"]),
        gene=gene,
        out=str(out / "mutate"),
        edits=(f"{row['chrom']}:{start}-{start + TSS_DELETION_BP - 1}",),
        scgpt_model=str(models["scgpt"]),
        profiles=str(out / "recipe" / "isoform" / "tissue_profiles.parquet"),
        profile=MUTATE_PROFILE,
    )
    return run_mutate(config)


def run_biodta_demo(out: Path, seed: int = 0, epochs: int | None = None, progress: bool = True) -> dict:
    """Recipe, caches, training and the mutate example on a demo folder that `embed_demo` filled."""
    models = {name: out / "models" / name for name in ("enformer", "scgpt")}
    recipe = build_biodta_recipe(out, seed)
    caches = embed_biodta(out, recipe, models, progress)
    return {"train": train_biodta_demo(out, recipe, caches, seed, epochs), "mutate": mutate_demo(out, recipe, models)}
