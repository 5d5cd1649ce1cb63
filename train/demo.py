"""The demo's training step: CDT (tiny preset) on the demo caches, with both baselines, in one run."""

from __future__ import annotations

from pathlib import Path

DEMO_EPOCHS = 30


def write_demo_config(out: Path, caches: dict[str, Path], seed: int = 0, epochs: int | None = None) -> Path:
    recipe = out / "recipe" / "cdt"
    path = out / "train_cdt.toml"
    path.write_text(f"""# CDT on the demo caches (tiny preset); every other key keeps the paper's default
[data]
labels = "{recipe / 'labels.parquet'}"
dna_table = "{recipe / 'dna_windows.parquet'}"
dna_cache = "{caches['dna']}"
rna_cache = "{caches['gene']}"
protein_cache = "{caches['protein']}"

[model]
preset = "tiny"
dropout = 0.1

[train]
epochs = {epochs or DEMO_EPOCHS}
batch_size = 32
lr = 2e-3
plateau_patience = 3
early_stop_patience = 8
seed = {seed}
num_workers = 0
standardize_dna = true  # random tiny-model features share a large common component

[output]
dir = "{out / 'train'}"
resume = false
""")
    return path


def train_demo(out: Path, caches: dict[str, Path], seed: int = 0, epochs: int | None = None) -> dict:
    from dogmacache.train.config import load_config
    from dogmacache.train.run import run_training

    config = load_config(write_demo_config(out, caches, seed, epochs))
    return run_training(config)
