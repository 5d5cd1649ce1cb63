"""The demo's CDBridge run: the two caches it adds to the isoform ones (pooled ESM-2 proteins, scGPT context
embeddings of the tissue profiles), its configuration (one held-out tissue) and both training stages with the
ablations, from the demo recipe's `isoform/` folder."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from dogmacache.train.config import OutputConfig, RunConfig, default_config, to_toml

CDBRIDGE_EPOCHS = 20
DEMO_HELD_OUT = ("Liver",)  # the demo recipe holds no tissue out; the demo holds this one out of training
# (modality, model, recipe table under recipe/isoform, cache name, adapter options)
CDBRIDGE_CACHES = (
    ("protein", "esm2", "protein_sequences.parquet", "isoform-protein-esm2-mean.zarr", {"pooling": "mean"}),
    ("context", "scgpt", "tissue_profiles.parquet", "isoform-tissue-scgpt.zarr", {}),
)


def embed_cdbridge_caches(out: Path, progress: bool = True) -> dict[str, Path]:
    """The pooled protein and tissue caches from an embedded demo (`embed_demo` ran: recipe and tiny models
    in `out`): {"protein": path, "tissue": path}."""
    from dogmacache.embed.adapters import get_adapter
    from dogmacache.embed.runner import EmbedConfig, run_embed

    recipe, models = out / "recipe" / "isoform", out / "models"
    paths = {}
    for modality, model, table, name, options in CDBRIDGE_CACHES:
        path = paths["tissue" if modality == "context" else modality] = out / "cache" / name
        run_embed(EmbedConfig(input=str(recipe / table), modality=modality, model=model,
                              model_path=str(models / model), out=str(path),
                              options=get_adapter(model, modality).options_class.from_dict(options),
                              progress=progress))  # fmt: skip
    return paths


def cdbridge_config(out: Path, caches: dict[str, Path], seed: int = 0, epochs: int | None = None) -> RunConfig:
    """CDBridge on the demo: tiny widths (tiny random encoders, a few hundred transcripts), a dictionary of 16
    (116 proteins), larger batches and learning rate than a full run; caches: dna, protein (pooled), tissue."""
    recipe = out / "recipe" / "isoform"
    base = default_config("cdbridge")
    return dataclasses.replace(
        base,
        data=dataclasses.replace(base.data, labels=str(recipe / "labels.parquet"), dna_cache=str(caches["dna"]),
                                 protein_cache=str(caches["protein"]), tissue_cache=str(caches["tissue"]),
                                 coding_masks=str(recipe / "coding_masks.parquet"),
                                 tissues_table=str(recipe / "tissues.parquet"), holdout_tissues=DEMO_HELD_OUT),
        model=dataclasses.replace(base.model, d_model=32, n_heads=4, ffn_hidden=64, dictionary_size=16,
                                  output_tokens=4, functional_layers=1, tissue_layers=1),
        train=dataclasses.replace(base.train, epochs=epochs or CDBRIDGE_EPOCHS, batch_size=256, lr=2e-3,
                                  weight_decay=0.0, plateau_patience=3, early_stop_patience=6, seed=seed,
                                  num_workers=0),
        output=OutputConfig(dir=str(out / "train_cdbridge"), resume=False),
    )  # fmt: skip


def train_cdbridge_demo(out: Path, caches: dict[str, Path], seed: int = 0, epochs: int | None = None) -> dict:
    """Embed the two extra caches, write `train_cdbridge.toml` and run both stages with the ablations;
    `caches` are the demo's isoform caches ({"dna": ...})."""
    from dogmacache.train.config import load_config
    from dogmacache.train.run import run_training

    caches = {**caches, **embed_cdbridge_caches(out)}
    path = out / "train_cdbridge.toml"
    path.write_text(to_toml(cdbridge_config(out, caches, seed, epochs), "CDBridge on the demo's isoform caches"))
    return run_training(load_config(path))
