"""The CDT model's configuration: one frozen dataclass, no torch import (so the CLI can list presets cheaply).

The input sizes (genes, DNA positions, the three embedding widths) have no defaults: the trainer fills them
from the cache manifests, and named settings live in `presets.py`. Shape letters used across `train/cdt*.py`:
B batch, L DNA positions, G genes (= proteins, aligned), D model width, H heads.
"""

from __future__ import annotations

import dataclasses
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
    d_model: int  # D: shared width every modality is projected to (the paper's is in presets.PAPER)
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
