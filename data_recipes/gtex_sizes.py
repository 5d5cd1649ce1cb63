"""Expected bytes of IsoFormer's three per-position caches, from the GTEx recipe's own tables.

Per modality: DNA = one Enformer trunk output (P bins, D_dna) per distinct TSS window; RNA = Nucleotide Transformer
tokens of each transcript's cDNA; protein = ESM-2 tokens of each distinct peptide. Tokens are counted as the
tokenisers count them, after the caps, special tokens included:

  NT:    <cls> + one token per 6-mer + one per leftover base (n % 6), at most `rna_max_tokens`
         (2,048 for the v2 models: 12 kb left-cropped, as IsoFormer does, keeps 2,047 6-mers + <cls>)
  ESM-2: <cls> + one per residue + <eos>, at most `protein_max_tokens` (1,024: 1,022 residues + 2)

Four numbers per modality, in bytes of `bytes_per_value` (float16 = 2):
  full                 items x cap x width: the per-token cache as embed writes it (padded to the cap, with a mask)
  full_real            real positions x width: what a ragged or compressed store would hold at least
  max_positions_K      items x min(cap, K) x width: each item adaptively pooled to at most K positions, padded
  max_positions_K_real sum of min(positions, K) x width
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from dogmacache.errors import InputError

NT_KMER = 6  # Nucleotide Transformer tokens are non-overlapping 6-mers, leftover bases one token each


@dataclass(frozen=True)
class CacheSizeConfig:
    """The encoders whose cache sizes the recipe states (defaults: the models IsoFormer's best row uses)."""

    dna_width: int = 3072  # Enformer trunk output width ((896, 3072) per window, docs/papers.md#enformer)
    rna_width: int = 1024  # Nucleotide Transformer 500M models (v1 and v2)
    rna_max_tokens: int = 2048  # NT v2: 2,048 tokens incl. <cls> (12 kb of 6-mers); NT v1 models: 1,000
    protein_width: int = 1280  # ESM-2 650M (esm2_t33_650M_UR50D)
    protein_max_tokens: int = 1024  # ESM-2: 1,022 residues + <cls> + <eos>
    bytes_per_value: int = 2  # float16, embed's default storage dtype
    max_positions: int = 128  # K of `embed --max-positions K`: positions kept per item after adaptive pooling

    def __post_init__(self):
        for name, value in vars(self).items():
            if not isinstance(value, int) or value <= 0:
                raise InputError(f"cache size setting {name} is {value!r}; expected a positive whole number")


def nt_tokens(lengths: Iterable[int], max_tokens: int) -> np.ndarray:
    """(N,) NT tokens per cDNA of `lengths` bases: <cls> + 6-mers + leftover bases, capped (left crop)."""
    n = np.asarray(list(lengths), dtype=np.int64)
    return np.minimum(1 + n // NT_KMER + n % NT_KMER, max_tokens)


def esm_tokens(lengths: Iterable[int], max_tokens: int) -> np.ndarray:
    """(N,) ESM-2 tokens per peptide of `lengths` residues: <cls> + residues + <eos>, capped."""
    return np.minimum(np.asarray(list(lengths), dtype=np.int64) + 2, max_tokens)


def _modality(positions: np.ndarray, cap: int, width: int, config: CacheSizeConfig, model: str) -> dict:
    k, per = config.max_positions, width * config.bytes_per_value
    return {
        "model": model,
        "items": int(len(positions)),
        "width": width,
        "positions_cap": cap,
        "positions_real": int(positions.sum()),
        "full": int(len(positions) * cap * per),
        "full_real": int(positions.sum() * per),
        f"max_positions_{k}": int(len(positions) * min(cap, k) * per),
        f"max_positions_{k}_real": int(np.minimum(positions, k).sum() * per),
    }


def expected_cache_bytes(
    n_windows: int,
    window_bins: int,
    cdna_lengths: Iterable[int],
    peptide_lengths: Iterable[int],
    config: CacheSizeConfig,
) -> dict[str, dict]:
    """{dna, rna, protein, total}: items, positions and bytes of each per-position cache (see the module doc).
    `n_windows` distinct DNA windows of `window_bins` Enformer bins; one cDNA per transcript; one length per
    distinct peptide."""
    dna = np.full(n_windows, window_bins, dtype=np.int64)
    rna = nt_tokens(cdna_lengths, config.rna_max_tokens)
    protein = esm_tokens(peptide_lengths, config.protein_max_tokens)
    sizes = {
        "dna": _modality(dna, window_bins, config.dna_width, config, "Enformer trunk, one window per TSS"),
        "rna": _modality(rna, config.rna_max_tokens, config.rna_width, config, "Nucleotide Transformer, 6-mers"),
        "protein": _modality(protein, config.protein_max_tokens, config.protein_width, config, "ESM-2, residues"),
    }
    byte_keys = [key for key in sizes["dna"] if key.startswith(("full", "max_positions"))]
    sizes["total"] = {key: sum(sizes[m][key] for m in ("dna", "rna", "protein")) for key in byte_keys}
    return sizes


def describe(sizes: dict[str, dict], config: CacheSizeConfig) -> str:
    """One line: each modality's full (padded) bytes and its bytes at K positions per item."""
    k = config.max_positions
    parts = [
        f"{m} {sizes[m]['items']:,} items {_human(sizes[m]['full'])} (K={k}: {_human(sizes[m][f'max_positions_{k}'])})"
        for m in ("dna", "rna", "protein")
    ]
    total = sizes["total"]
    return (
        f"expected cache bytes ({config.bytes_per_value}-byte values, padded to each cap): "
        + "; ".join(parts)
        + f"; total {_human(total['full'])} (K={k}: {_human(total[f'max_positions_{k}'])})"
    )


def _human(n: int) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
