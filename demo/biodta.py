"""The demo's Bio-DTA run: a Bio-DTA scGPT checkpoint (the tiny scGPT with its vocabulary extended to every gene of
the demo's truth/gene_tokens.tsv and those planted rows as its gene embeddings: each a fixed projection of the
gene's promoter motif counts plus noise, truth/truth.json) -> gene_tss windows of its genes (the demo GTF) -> their
tiny-Enformer DNA cache and scGPT gene-token cache -> the adapter trained with its mean-token baseline -> one
in-silico edit through `dogmacache mutate` on the demo's Heart profile (after the paper's GATA4 TSS deletion, on a
demo gene): the TATA boxes the generator planted in the gene's promoter replaced by other bases, so the planted rule
says exactly how its token moves (`planted_shift`); scored against matched random edits of the same window, against
the planted move's direction, and against the planted target set (truth/targets.txt). Every step calls the function
a user's command calls, with its config dataclass; it runs after `embed_demo` (needs `recipe/genome.fa` and `models/`).
The CDT and CDBridge caches keep the tiny scGPT as make_tiny wrote it (`models/scgpt`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from dogmacache.data_recipes.demo_truth import PERTURBED_GENE
from dogmacache.data_recipes.make_demo_data import HERE as DEMO_DATA
from dogmacache.demo.training import CONTROLS, KMER_DEMO, lean
from dogmacache.errors import InputError
from dogmacache.train.config import OutputConfig, RunConfig, to_toml
from dogmacache.train.registry import default_config

BIODTA_EPOCHS = 60
BIODTA_SCGPT = "scgpt-biodta"  # folder under models/: the tiny scGPT with the planted gene rows
MUTATE_GENE = PERTURBED_GENE  # a demo gene expressed in the Heart profile, with two planted TATA boxes
MUTATE_PROFILE = "Heart"
PROMOTER_BP = 400  # the TATA boxes the edit replaces lie this far upstream of the TSS at most (-180/-120/-60)
KMER_CACHE = "biodta-dna-kmer"  # the k-mer control's cache (its checkpoint: control_dna_<this>_best.pt)
REPLACEMENT = "GAGCTC"  # put in place of each TATA box: no TATA, no ATG; keeps TATAAA's second base (A), changes five


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

    caches["dna_kmer"] = out / "cache" / f"{KMER_CACHE}.zarr"  # the control: k-mer features, same windows
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


def tata_edits(recipe: Path, genome: Path, truth_bed: Path, gene: str) -> list[str]:
    """`chr:pos REF>ALT` edits replacing each TATA box truth.bed plants within PROMOTER_BP upstream of `gene`'s TSS
    by REPLACEMENT: substitutions keep every other base where it was, so only the TATA count changes."""
    import pandas as pd
    from dogmacache.embed.genome import Genome, chrom_alias

    row = pd.read_parquet(recipe / "genes.parquet").set_index("id").loc[gene]
    tss0, plus = int(row["center"]) - 1, row["strand"] == "+"
    bed = pd.read_csv(truth_bed, sep="\t", header=None, comment="#").rename(columns={0: "chrom", 1: "start", 2: "end"})
    chrom = str(row["chrom"])
    on_chrom = bed[(bed[3] == "tata") & bed["chrom"].astype(str).isin({chrom, chrom_alias(chrom)})]
    upstream = (
        (on_chrom["end"] <= tss0) & (on_chrom["start"] >= tss0 - PROMOTER_BP)
        if plus
        else (on_chrom["start"] > tss0) & (on_chrom["end"] <= tss0 + 1 + PROMOTER_BP)
    )
    boxes = on_chrom[upstream]
    if boxes.empty:
        raise InputError(f"{truth_bed} plants no TATA box within {PROMOTER_BP} bp upstream of {gene}'s TSS")
    fasta = Genome(genome)
    name = fasta.resolve(chrom)
    edits = []
    for start, end in zip(boxes["start"], boxes["end"], strict=True):
        ref = fasta.fasta[name][int(start) : int(end)]
        edits.append(f"{chrom}:{int(start) + 1} {ref}>{REPLACEMENT[: len(ref)]}")
    return edits


def planted_move(out: Path, gene: str, n_boxes: int, data: Path = DEMO_DATA) -> np.ndarray:
    """(D,) how the gene's token moves when its promoter loses `n_boxes` TATA boxes, by the generator's rule (row = P
    @ (gc - 1.5, tata - 1.5) + noise: the row moves by P @ (0, -n_boxes)), in the token cache's space (the tiny
    scGPT's enc_norm, then unit length)."""
    import json

    import pandas as pd
    import torch
    from dogmacache.embed.adapters.scgpt_model import load_checkpoint

    truth = json.loads((data / "truth" / "truth.json").read_text())
    projection = np.asarray(truth["biodta"]["projection"], dtype=np.float64)  # (D, 2)
    row = pd.read_csv(data / "truth" / "gene_tokens.tsv", sep="\t", index_col="symbol").loc[gene].to_numpy()
    edited = row + projection @ np.array([0.0, -float(n_boxes)])
    encoder = load_checkpoint(str(out / "models" / BIODTA_SCGPT), torch.device("cpu")).model.encoder
    with torch.no_grad():
        rows = torch.tensor(np.stack([row, edited]), dtype=torch.float32)
        cached = torch.nn.functional.normalize(encoder.enc_norm(rows), dim=1)
    return (cached[1] - cached[0]).numpy().astype(np.float64)


def planted_shift(mutated: Path, gene: str, true_move: np.ndarray) -> dict:
    """The predicted move of `gene`'s token (`mutated`/tokens.npz, a mutate run's) beside the planted one
    (`planted_move`): the cosine between the two (1 for a model that learned the rule), placed among the same
    cosine for the matched random edits mutate drew (`null_moves_0`: an adapter moves its output along a few axes
    whatever the edit, so a cosine means something only beside theirs; `mutate.null.place`), and the lengths."""
    from dogmacache.mutate.null import place

    tokens = np.load(mutated / "tokens.npz")
    at = int(np.flatnonzero(tokens["id"] == gene)[0])
    predicted = (tokens["edited"][at] - tokens["reference"][at]).astype(np.float64)

    def cosines(moves: np.ndarray) -> np.ndarray:
        norms = np.linalg.norm(moves, axis=-1) * np.linalg.norm(true_move)
        return np.where(norms > 0, moves @ true_move / np.where(norms > 0, norms, 1.0), 0.0)

    observed = float(cosines(predicted))
    null = cosines(tokens["null_moves_0"].astype(np.float64)) if "null_moves_0" in tokens else np.zeros(0)
    placed = place(observed, null) if len(null) else {"null_median": float("nan"), "null_p_at_least": float("nan")}
    return {
        "planted_move_l2": float(np.linalg.norm(true_move)),
        "predicted_move_l2": float(np.linalg.norm(predicted)),
        "direction_cosine": observed,
        "null_direction_cosine_median": placed["null_median"],
        "direction_p_at_least": placed["null_p_at_least"],
        "null_draws": len(null),
    }


def mutate_demo(
    out: Path, recipe: Path, models: dict[str, Path], gene: str = MUTATE_GENE, data: Path = DEMO_DATA
) -> dict:
    """Replace the planted TATA boxes of `gene`'s promoter: the adapter's token move beside matched random edits and
    beside the planted move, and the top moved genes in Heart scored against the planted target set; the same edit
    through the adapter trained on k-mer frequencies of the same windows (the k-mer control, whose inputs count the
    motif: the check's positive control), into mutate_kmer/."""
    from dogmacache.mutate import MutateConfig, run_mutate

    genome = out / "recipe" / "genome.fa"
    edits = tata_edits(recipe, genome, data / "truth" / "truth.bed", gene)
    config = MutateConfig(
        checkpoint=str(out / "train_biodta" / "biodta_best.pt"),
        genome=str(genome),
        dna_model=str(models["enformer"]),
        gene=gene,
        out=str(out / "mutate"),
        edits=tuple(edits),
        scgpt_model=str(models["scgpt"]),
        profiles=str(out / "recipe" / "isoform" / "tissue_profiles.parquet"),
        profile=MUTATE_PROFILE,
        top_n=10,
        gene_set=str(data / "truth" / "targets.txt"),
    )
    summary = run_mutate(config)
    true_move = planted_move(out, gene, len(edits), data)
    summary["planted_shift"] = {"boxes_replaced": len(edits), **planted_shift(out / "mutate", gene, true_move)}
    kmer = dataclasses.replace(
        config,
        checkpoint=str(out / "train_biodta" / f"control_dna_{KMER_CACHE}_best.pt"),
        dna_model=None,
        out=str(out / "mutate_kmer"),
        scgpt_model=None,
        profiles=None,
        profile=None,
        gene_set=None,
    )
    summary["kmer_control"] = {
        "token_shift": run_mutate(kmer)["token_shift"],
        "planted_shift": planted_shift(out / "mutate_kmer", gene, true_move),
    }
    return summary


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
