"""The demo's training configuration: CDT (tiny preset) on the demo caches, with both baselines, built from the
config dataclasses and written as TOML (`make train` reads it back)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from dogmacache.train.config import CONTROL_KINDS, OutputConfig, RunConfig, to_toml
from dogmacache.train.controls import without_ablations
from dogmacache.train.registry import default_config

DEMO_EPOCHS = 30
# every demo model stands beside controls that could refute it (train/controls.py): the permutation null, its
# inputs shuffled across items, and the same model on k-mer features instead of the foundation model's
CONTROLS = CONTROL_KINDS
# the tiny Enformer's output on the demo windows (the demo recipe's 8 bins of 128 bp); its k-mer stand-in matches it
KMER_DEMO = {"n_bins": 8, "bin_bp": 128}


def demo_config(out: Path, caches: dict[str, Path], seed: int = 0, epochs: int | None = None) -> RunConfig:
    recipe = out / "recipe" / "cdt"
    base = default_config("cdt")
    return dataclasses.replace(
        base,
        data=dataclasses.replace(
            base.data,
            labels=str(recipe / "labels.parquet"),
            dna_table=str(recipe / "dna_windows.parquet"),
            dna_cache=str(caches["dna"]),
            rna_cache=str(caches["gene"]),
            protein_cache=str(caches["protein"]),
            standardize_dna=True,
        ),  # random tiny-model features share a large common component
        model=dataclasses.replace(base.model, preset="tiny", dropout=0.1),
        train=dataclasses.replace(
            base.train,
            epochs=epochs or DEMO_EPOCHS,
            batch_size=64,
            lr=3e-3,
            plateau_patience=3,
            early_stop_patience=8,
            seed=seed,
            num_workers=0,
            controls=CONTROLS,
            control_caches=(f"dna_cache={caches['dna_kmer']}",),
        ),
        output=OutputConfig(dir=str(out / "train"), resume=False, overwrite=True),
    )


def lean(config: RunConfig) -> RunConfig:
    """The model beside its baselines, without ablations or controls: what the null twin asks is whether the model
    scores beyond a prediction made without inputs."""
    config = without_ablations(config)
    return dataclasses.replace(
        config, train=dataclasses.replace(config.train, controls=(), control_caches=(), null_draws=1)
    )


def write_demo_config(
    out: Path, caches: dict[str, Path], seed: int = 0, epochs: int | None = None, null: bool = False
) -> Path:
    path = out / "train_cdt.toml"
    header = "CDT on the demo caches (tiny preset, larger batches and learning rate); other keys: the paper's"
    config = demo_config(out, caches, seed, epochs)
    path.write_text(to_toml(lean(config) if null else config, header))
    return path


def train_demo(
    out: Path, caches: dict[str, Path], seed: int = 0, epochs: int | None = None, null: bool = False
) -> dict:
    from dogmacache.train.registry import load_config
    from dogmacache.train.run import run_training

    return run_training(load_config(write_demo_config(out, caches, seed, epochs, null)))


ISOFORMER_EPOCHS = 40


def isoformer_config(out: Path, caches: dict[str, Path], seed: int = 0, epochs: int | None = None) -> RunConfig:
    """IsoFormer on the demo's isoform caches: tiny width, larger learning rate than the paper's 3e-5 (tiny random
    encoders, 371 transcripts), MSE, Adam (AdamW without weight decay), every ablation of the paper's Table 8 (its
    pairs and single modalities)."""
    base = default_config("isoformer")
    return dataclasses.replace(
        base,
        data=dataclasses.replace(
            base.data,
            labels=str(out / "recipe" / "isoform" / "labels.parquet"),
            dna_cache=str(caches["dna"]),
            rna_cache=str(caches["rna"]),
            protein_cache=str(caches["protein"]),
            standardize=True,
        ),  # tiny random encoders: small features with a large common part
        model=dataclasses.replace(base.model, d_model=32, n_heads=4),
        train=dataclasses.replace(
            base.train,
            epochs=epochs or ISOFORMER_EPOCHS,
            batch_size=16,
            lr=1e-3,
            weight_decay=0.0,
            plateau_patience=3,
            early_stop_patience=8,
            seed=seed,
            num_workers=0,
            controls=CONTROLS,
            control_caches=(f"dna_cache={caches['dna_kmer']}",),
        ),
        output=OutputConfig(dir=str(out / "train_isoformer"), resume=False, overwrite=True),
    )


def train_isoformer_demo(
    out: Path, caches: dict[str, Path], seed: int = 0, epochs: int | None = None, null: bool = False
) -> dict:
    from dogmacache.train.registry import load_config
    from dogmacache.train.run import run_training

    path = out / "train_isoformer.toml"
    config = isoformer_config(out, caches, seed, epochs)
    path.write_text(to_toml(lean(config) if null else config, "IsoFormer on the demo's isoform caches"))
    return run_training(load_config(path))
