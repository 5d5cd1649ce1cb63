"""Named CDT sizes. The only place the paper's numbers are written down; the trainer replaces the input
sizes with those in the cache manifests (`dataclasses.replace(preset("paper"), dna_width=...)`).

| preset | what for | D | heads | G | L x D_dna | D_rna | D_prot | parameters |
|---|---|---|---|---|---|---|---|---|
| paper | the paper's model (docs/papers.md#cdt-architecture) | 768 | 8 | 2360 | 896 x 3072 | 512 | 768 | 60,093,752 |
| small | CPU benchmarks: a reference step takes seconds | 128 | 8 | 400 | 224 x 768 | 128 | 192 | 1,728,400 |
| tiny | tests and the demo: a training step takes milliseconds | 32 | 4 | 35 | 8 x 48 | 32 | 32 | 103,427 |
"""

from __future__ import annotations

from dogmacache.errors import InputError
from dogmacache.train.cdt_config import CDTConfig

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
