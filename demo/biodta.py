"""The demo's Bio-DTA run: a Bio-DTA scGPT checkpoint (the tiny scGPT with its vocabulary extended to every gene of
the demo's truth/gene_tokens.tsv and those planted rows as its gene embeddings: each a fixed projection of the
gene's promoter motif counts plus noise, truth/truth.json) -> gene_tss windows of its genes (the demo GTF) -> their
tiny-Enformer DNA cache and scGPT gene-token cache -> the adapter trained with its mean-token baseline -> one
in-silico TSS deletion through `dogmacache mutate` on the demo's Heart profile (the paper's GATA4 example, on a
demo gene), scored against the planted target set (truth/targets.txt). Every step calls the function a user's
command calls, with its config dataclass; it runs after `embed_demo` (needs `recipe/genome.fa` and `models/`).
The CDT and CDBridge caches keep the tiny scGPT as make_tiny wrote it (`models/scgpt`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from dogmacache.data_recipes.demo_truth import PERTURBED_GENE
from dogmacache.data_recipes.make_demo_data import HERE as DEMO_DATA
from dogmacache.demo.training import CONTROLS, KMER_DEMO, lean
from dogmacache.errors import InputError
from dogmacache.train.config import OutputConfig, RunConfig, to_toml
from dogmacache.train.registry import default_config

BIODTA_EPOCHS = 60
BIODTA_SCGPT = "scgpt-biodta"  # folder under models/: the tiny scGPT with the planted gene rows
MUTATE_GENE = PERTURBED_GENE  # a demo gene expressed in the Heart profile, with TATA boxes the deletion removes
MUTATE_PROFILE = "Heart"
TSS_DELETION_BP = 200  # bases deleted around the TSS (the paper deletes GATA4's TSS)


def write_biodta_scgpt(out: Path, data: Path = DEMO_DATA) -> Path:
    """models/scgpt-biodta: models/scgpt's files with the vocabulary = the planted genes (then its special tokens)
    and their embedding rows = truth/gene_tokens.tsv; every other weight as make_tiny wrote it."""
    import json
    import shutil

    import pandas as pd
    import torch

    source, target = out / "models" / "scgpt", out / "models" / BIODTA_SCGPT
    planted = pd.read_csv(data / "truth" / "gene_tokens.tsv", sep="\t", index_col="symbol")
    state = torch.load(source / "best_model.pt", map_location="cpu")
    vocab = json.loads((source / "vocab.json").read_text())
    table = state["encoder.embedding.weight"]
    if planted.shape[1] != table.shape[1]:
        raise InputError(
            f"{data / 'truth' / 'gene_tokens.tsv'} has {planted.shape[1]}-wide rows but {source} embeds genes in "
            f"{table.shape[1]}; regenerate the demo data for this scGPT (demo_truth.TOKEN_WIDTH)"
        )
    special = [token for token in vocab if token.startswith("<")]
    rows = torch.tensor(planted.to_numpy(), dtype=table.dtype)
    state["encoder.embedding.weight"] = torch.cat([rows, table[[vocab[t] for t in special]]])
    target.mkdir(parents=True, exist_ok=True)
    torch.save(state, target / "best_model.pt")
    names = [*planted.index, *special]
    (target / "vocab.json").write_text(json.dumps({g: i for i, g in enumerate(names)}, indent=1))
    shutil.copyfile(source / "args.json", target / "args.json")
    return target


def build_biodta_recipe(out: Path, seed: int = 0, data: Path = DEMO_DATA) -> Path:
    """recipe/biodta: one TSS window per gene of the Bio-DTA scGPT's vocabulary."""
    from dogmacache.data_recipes.gene_tss import build_gene_tss

    recipe = out / "recipe" / "biodta"
    vocab = out / "models" / BIODTA_SCGPT / "vocab.json"
    build_gene_tss(data / "Homo_sapiens.GRCh38.88.gtf.gz", vocab, recipe, seed=seed)
    return recipe


def embed_biodta(out: Path, recipe: Path, models: dict[str, Path], progress: bool = True) -> dict[str, Path]:
    """The TSS windows through the tiny Enformer and the same genes' scGPT tokens: {"dna": path, "gene": path}."""
    from dogmacache.demo.own_caches import embed_own
    from dogmacache.embed.runner import EmbedConfig, run_embed

    caches = {"dna": out / "cache" / "biodta-dna-enformer.zarr", "gene": out / "cache" / "biodta-gene-scgpt.zarr"}
    embed_own(
        run_embed,
        EmbedConfig(
            input=str(recipe / "dna_windows.parquet"),
            modality="dna",
            model="enformer",
            model_path=str(models["enformer"]),
            genome=str(out / "recipe" / "genome.fa"),
            out=str(caches["dna"]),
            progress=progress,
        ),
    )
    embed_own(
        run_embed,
        EmbedConfig(
            input=str(recipe / "genes.parquet"),
            modality="gene",
            model="scgpt",
            model_path=str(models["scgpt"]),
            out=str(caches["gene"]),
            progress=progress,
        ),
    )
    from dogmacache.embed.adapters import get_adapter

    caches["dna_kmer"] = out / "cache" / "biodta-dna-kmer.zarr"  # the control: k-mer features, same windows
    embed_own(
        run_embed,
        EmbedConfig(
            input=str(recipe / "dna_windows.parquet"),
            modality="dna",
            model="kmer",
            genome=str(out / "recipe" / "genome.fa"),
            out=str(caches["dna_kmer"]),
            options=get_adapter("kmer", "dna").options_class.from_dict(KMER_DEMO),
            progress=progress,
        ),
    )
    return caches


def biodta_config(
    out: Path, recipe: Path, caches: dict[str, Path], seed: int = 0, epochs: int | None = None
) -> RunConfig:
    """Bio-DTA on the demo caches: small hidden width, attention pooling, cosine + MSE, larger learning rate
    (436 genes, random tiny encoders)."""
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
            batch_size=32,
            lr=3e-3,
            plateau_patience=5,
            early_stop_patience=15,
            seed=seed,
            num_workers=0,
            controls=CONTROLS,
            control_caches=(f"dna_cache={caches['dna_kmer']}",) if "dna_kmer" in caches else (),
        ),
        output=OutputConfig(dir=str(out / "train_biodta"), resume=False, overwrite=True),
    )


def train_biodta_demo(
    out: Path, recipe: Path, caches: dict[str, Path], seed: int = 0, epochs: int | None = None, null: bool = False
) -> dict:
    from dogmacache.train.registry import load_config
    from dogmacache.train.run import run_training

    path = out / "train_biodta.toml"
    config = biodta_config(out, recipe, caches, seed, epochs)
    path.write_text(to_toml(lean(config) if null else config, "Bio-DTA on the demo's TSS windows"))
    return run_training(load_config(path))


def mutate_demo(
    out: Path, recipe: Path, models: dict[str, Path], gene: str = MUTATE_GENE, data: Path = DEMO_DATA
) -> dict:
    """Delete TSS_DELETION_BP bases centred on `gene`'s TSS; token shift and the top moved genes in Heart, scored
    against the planted target set."""
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
        top_n=10,
        gene_set=str(data / "truth" / "targets.txt"),
    )
    return run_mutate(config)


def run_biodta_demo(
    out: Path,
    seed: int = 0,
    epochs: int | None = None,
    progress: bool = True,
    data: Path = DEMO_DATA,
    null: bool = False,
) -> dict:
    """The Bio-DTA scGPT, recipe, caches, training and the mutate example on a demo folder that `embed_demo` filled
    from the sources in `data` (the bundled ones, or a `write_demo_data` folder such as the null twin)."""
    models = {"enformer": out / "models" / "enformer", "scgpt": write_biodta_scgpt(out, data)}
    recipe = build_biodta_recipe(out, seed, data)
    caches = embed_biodta(out, recipe, models, progress)
    train = train_biodta_demo(out, recipe, caches, seed, epochs, null)
    if null:  # nothing to mutate: the null twin asks only whether the adapter scores
        return {"train": train}
    return {"train": train, "mutate": mutate_demo(out, recipe, models, data=data)}
