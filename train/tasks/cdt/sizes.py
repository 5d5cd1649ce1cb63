"""The CDT model's sizes, declared once: the `CDTConfig` dataclass, its named presets, and the task's [model]
section derived from it (every size that does not come from a cache may be overridden). No torch import, so
the CLI lists presets cheaply.

The input sizes (`INPUT_SIZES`: genes, DNA positions, the three embedding widths) have no defaults: the trainer
fills them from the cache manifests. Shape letters used across `train/tasks/cdt/`: B batch, L DNA positions,
G genes (= proteins, aligned), D model width, H heads.

| preset | what for | D | heads | G | L x D_dna | D_rna | D_prot | parameters |
|---|---|---|---|---|---|---|---|---|
| paper | the paper's model (docs/papers.md#cdt-architecture) | 768 | 8 | 2360 | 896 x 3072 | 512 | 768 | 60,093,752 |
| small | CPU benchmarks: a reference step takes seconds | 128 | 8 | 400 | 224 x 768 | 128 | 192 | 1,728,400 |
| tiny | tests and the demo: a training step takes milliseconds | 32 | 4 | 35 | 8 x 48 | 32 | 32 | 103,427 |
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from dogmacache.errors import InputError


@dataclass(frozen=True)
class CDTConfig:
    """Sizes of one Central Dogma Transformer. `to_dict()` goes into every checkpoint; `from_dict` rebuilds it."""

    # --- inputs, from the cache manifests (no defaults: a wrong guess would silently mis-size the model)
    n_genes: int  # G: rows of the RNA and protein tables, and outputs of the task head
    dna_positions: int  # L: positions per DNA window (item_shape[0] of the DNA cache)
    dna_width: int  # D_dna: width of one DNA position embedding (item_shape[-1] of the DNA cache)
    rna_width: int  # D_rna: width of one gene's RNA embedding
    protein_width: int  # D_prot: width of one gene's protein embedding
    # --- the model
    d_model: int  # D: shared width every modality is projected to (the paper's is in PAPER below)
    n_heads: int = 8  # heads of every self- and cross-attention (head width D / n_heads)
    dna_self_layers: int = 2  # self-attention blocks over the L DNA positions
    rna_self_layers: int = 1  # self-attention blocks over the G RNA genes
    protein_self_layers: int = 1  # self-attention blocks over the G proteins
    ffn_multiplier: int = 4  # feed-forward hidden width = ffn_multiplier * D in every attention block
    vce_heads: int = 4  # heads of each Virtual Cell Embedder pooling attention
    vce_hidden_multiplier: int = 2  # VCE fusion MLP: 3D -> vce_hidden_multiplier * D -> D
    dropout: float = 0.3  # projections, attention probabilities, residual branches, FFNs, VCE and head

    def __post_init__(self) -> None:
        for name in (
            "n_genes",
            "dna_positions",
            "dna_width",
            "rna_width",
            "protein_width",
            "d_model",
            "n_heads",
            "ffn_multiplier",
            "vce_heads",
            "vce_hidden_multiplier",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"CDTConfig.{name}={value!r} must be a positive integer; fix the config or manifest")
        for name in ("dna_self_layers", "rna_self_layers", "protein_self_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InputError(f"CDTConfig.{name}={value!r} must be an integer >= 0")
        for heads in ("n_heads", "vce_heads"):
            if self.d_model % getattr(self, heads):
                raise InputError(
                    f"CDTConfig.d_model={self.d_model} is not divisible by {heads}={getattr(self, heads)}; "
                    f"choose a d_model that is a multiple of {heads} (each head gets d_model / {heads} channels)"
                )
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"CDTConfig.dropout={self.dropout!r} must be in [0, 1); the paper uses 0.3")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "config") -> CDTConfig:
        """Rebuild from `to_dict()` output; unknown keys are rejected, not dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(
                f"{where} has unknown CDT config keys {unknown}; the known keys are {sorted(known)} "
                "(a checkpoint from another code version? rename or remove them)"
            )
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        missing = sorted(required - set(values))
        if missing:
            raise InputError(f"{where} lacks the CDT config keys {missing}; they come from the cache manifests")
        return cls(**values)


PAPER = CDTConfig(
    n_genes=2360,  # genes in Gasperini CRISPRi, STING-seq, scGPT's vocabulary and ProteomeLM (paper 7.3)
    dna_positions=896,  # Enformer output bins (128 bp each, 114,688 bp)
    dna_width=3072,  # Enformer trunk embedding width
    rna_width=512,  # scGPT embsize
    protein_width=768,  # ProteomeLM embedding width
    d_model=768,
    n_heads=8,
    dropout=0.3,
)

SMALL = CDTConfig(
    n_genes=400,
    dna_positions=224,
    dna_width=768,
    rna_width=128,
    protein_width=192,
    d_model=128,
    n_heads=8,
    dropout=0.3,
)

TINY = CDTConfig(
    n_genes=35,
    dna_positions=8,
    dna_width=48,
    rna_width=32,
    protein_width=32,
    d_model=32,
    n_heads=4,
    dropout=0.3,
)

PRESETS: dict[str, CDTConfig] = {"paper": PAPER, "small": SMALL, "tiny": TINY}


def preset(name: str) -> CDTConfig:
    """The named configuration (frozen, so it can be shared)."""
    if name not in PRESETS:
        raise InputError(f"CDT preset {name!r} does not exist; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


INPUT_SIZES = ("n_genes", "dna_positions", "dna_width", "rna_width", "protein_width")  # from the caches


def _model_section() -> type:
    """The task's [model] dataclass: `preset`, an override (None = the preset's value) for every CDTConfig
    field that is not an input size, and the DNA-only MLP baseline's width."""
    hints = typing.get_type_hints(CDTConfig)
    names = [f.name for f in dataclasses.fields(CDTConfig) if f.name not in INPUT_SIZES]
    limits = {n: ("[0,1)" if hints[n] is float else ">=0" if n.endswith("_layers") else ">=1") for n in names}
    fields = [
        ("preset", str, dataclasses.field(default="paper")),
        *[(n, hints[n] | None, dataclasses.field(default=None)) for n in names],
        ("mlp_hidden", int, dataclasses.field(default=256)),  # the DNA-only MLP baseline's hidden width
    ]
    namespace = {
        "__doc__": "[model] of the cdt task: a preset's sizes with any of them overridden; inputs come from caches.",
        "LIMITS": {**limits, "mlp_hidden": ">=1"},
        "CHOICES": {"preset": tuple(PRESETS)},
        "__annotations__": {},
    }
    return dataclasses.make_dataclass("CdtModelConfig", fields, frozen=True, namespace=namespace)


CdtModelConfig = _model_section()
CdtModelConfig.__module__ = __name__


def model_sizes(model: Any, inputs: dict[str, int]) -> CDTConfig:
    """The preset named by a [model] section, its overrides applied, every input size from `inputs`."""
    overrides = {
        f.name: getattr(model, f.name)
        for f in dataclasses.fields(CDTConfig)
        if f.name not in INPUT_SIZES and getattr(model, f.name) is not None
    }
    return dataclasses.replace(preset(model.preset), **inputs, **overrides)
