"""The `dogmacache train` configuration: one frozen dataclass per section, every default visible, unknown
keys rejected. Files are TOML or YAML with sections [data], [model], [train], [output]; the defaults of
[train] are the CDT paper's recipe (REFERENCE section 1). `dogmacache train --config F --print-config`
prints the resolved configuration, which is also written into every checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from dogmacache.devices import CPU_ALLOCATORS
from dogmacache.errors import InputError


@dataclass(frozen=True)
class DataConfig:
    labels: str = ""  # labelled pairs from the recipe (cdt/labels.parquet)
    dna_cache: str = ""  # per-position DNA cache (N_enh, L, D_dna)
    rna_cache: str = ""  # gene-token cache (G, D_rna), ids = gene symbols in canonical order
    protein_cache: str = ""  # protein cache (G, D_prot), same order
    dna_table: str = ""  # optional: the recipe's dna_windows table, to check the DNA cache's inputs
    target: str = "beta"  # label column


@dataclass(frozen=True)
class ModelConfig:
    name: str = "cdt"
    preset: str = (
        "paper"  # paper | small | tiny: d_model, heads, dropout, layers; input sizes come from caches
    )
    d_model: int | None = None  # overrides of the preset (None = keep)
    n_heads: int | None = None
    dropout: float | None = None


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 50  # at most
    batch_size: int = 8  # pairs per optimiser step (summed over processes under torchrun)
    lr: float = 1e-4  # AdamW
    weight_decay: float = 1e-5  # AdamW
    clip_norm: float = 1.0  # gradient norm clip
    smooth_l1_beta: float = 1.0  # Huber/SmoothL1 transition point
    plateau_factor: float = 0.5  # ReduceLROnPlateau on validation Pearson (mode max)
    plateau_patience: int = 5  # epochs
    early_stop_patience: int = 10  # epochs without a validation Pearson gain of early_stop_min_delta
    early_stop_min_delta: float = 0.001
    seed: int = 0
    block_enhancers: int = 64  # enhancers read together (each once per epoch); bounds memory
    num_workers: int = 2  # DataLoader processes prefetching DNA blocks
    preload_bytes: int = 2 << 30  # keep all DNA rows in RAM when they fit this budget (bytes, float32)
    device: str = "auto"  # auto = cuda when available
    precision: str = "fp32"  # fp32 | bf16 (autocast, CUDA)
    cpu_allocator: str = "keep"  # keep | system: on CPU, keep freed memory (devices.keep_freed_memory)
    standardize_dna: bool = False  # z-score DNA features with training-split statistics (paper: off)
    baselines: bool = True  # per-gene mean and a DNA-only MLP on pooled DNA, reported beside the model
    baseline_hidden: int = 256  # DNA-only MLP hidden width


@dataclass(frozen=True)
class OutputConfig:
    dir: str = "runs/cdt"  # checkpoints, metrics.json, log.csv, figures
    resume: bool = True  # continue from dir/checkpoint_last.pt when it exists


_CHOICES = {("train", "precision"): ("fp32", "bf16"), ("train", "cpu_allocator"): CPU_ALLOCATORS}


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "config") -> RunConfig:
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - set(sections))
        if unknown:
            raise InputError(f"{where}: unknown section(s) {unknown}; sections are {sorted(sections)}")
        built = {}
        for f in dataclasses.fields(cls):
            section_cls = {
                "data": DataConfig,
                "model": ModelConfig,
                "train": TrainConfig,
                "output": OutputConfig,
            }[f.name]
            values = raw.get(f.name, {}) or {}
            known = {x.name: x for x in dataclasses.fields(section_cls)}
            bad = sorted(set(values) - set(known))
            if bad:
                raise InputError(f"{where}: unknown key(s) {bad} in [{f.name}]; known keys: {sorted(known)}")
            built[f.name] = section_cls(**values)
        config = cls(**built)
        for (section, key), allowed in _CHOICES.items():
            value = getattr(getattr(config, section), key)
            if value not in allowed:
                raise InputError(f"{where}: [{section}] {key} = {value!r} is not one of {list(allowed)}")
        missing = [
            k for k in ("labels", "dna_cache", "rna_cache", "protein_cache") if not getattr(config.data, k)
        ]
        if missing:
            raise InputError(f"{where}: [data] needs {missing}; see `dogmacache train --example-config`")
        return config


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file {str(path)!r} does not exist")
    text = path.read_text()
    try:
        raw = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as err:
        raise InputError(
            f"{path} is not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: {err}"
        ) from err
    raw = raw or {}
    for dotted, value in (overrides or {}).items():
        section, key = dotted.split(".", 1)
        raw.setdefault(section, {})[key] = value
    return RunConfig.from_dict(raw, where=str(path))


def example_config() -> str:
    """Every section and key with its default, as TOML."""
    lines = ["# dogmacache train configuration: every key with its default"]
    for name, section in dataclasses.asdict(RunConfig()).items():
        lines.append(f"\n[{name}]")
        for key, value in section.items():
            shown = json.dumps(value) if value is not None else '""  # unset: the preset\'s value'
            lines.append(f"{key} = {shown}")
    return "\n".join(lines) + "\n"
