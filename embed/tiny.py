"""`dogmacache models make-tiny DIR`: small random models of every supported architecture, in their real
on-disk layouts, so tests and the offline demo load them through the same code path as real weights.

Each adapter module holds its model's tiny writer (`write_tiny_<model>`, every weight drawn at random by
`random_weights.randomize_`); `make_tiny` lists them all."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dogmacache.embed.adapters.borzoi import write_tiny_borzoi, write_tiny_flashzoi
from dogmacache.embed.adapters.enformer import write_tiny_enformer
from dogmacache.embed.adapters.esmc_model import write_tiny_esmc
from dogmacache.embed.adapters.hf_esm import write_tiny_esm2, write_tiny_nucleotide_transformer
from dogmacache.embed.adapters.scgpt_model import write_tiny_scgpt
from dogmacache.errors import InputError

# The demo recipe's 36 gene symbols (data_recipes/make_demo_data.py, N_GENES): `models make-tiny`'s default
# scGPT vocabulary, so the demo's tables embed without a missing symbol. A test keeps the two in step.
DEMO_GENES = tuple(f"DEMO{i + 1:02d}" for i in range(36))


def make_tiny(
    root: str | Path, genes: Sequence[str] = DEMO_GENES, seed: int = 0, names: Sequence[str] | None = None
) -> dict[str, Path]:
    """Every tiny model under `root` (or only those in `names`), by registry name; `genes` make up the tiny
    scGPT's vocabulary (plus its special tokens). The tiny Borzoi and Flashzoi are ~145 MB each (borzoi-pytorch
    fixes their convolution widths): callers that do not embed with them leave them out."""
    root = Path(root)
    writers = {
        "enformer": lambda: write_tiny_enformer(root / "enformer", seed),
        "borzoi": lambda: write_tiny_borzoi(root / "borzoi", seed),
        "flashzoi": lambda: write_tiny_flashzoi(root / "flashzoi", seed),
        "esm2": lambda: write_tiny_esm2(root / "esm2", seed),
        "esmc": lambda: write_tiny_esmc(root / "esmc", seed),
        "nucleotide-transformer": lambda: write_tiny_nucleotide_transformer(root / "nucleotide-transformer", seed),
        "scgpt": lambda: write_tiny_scgpt(root / "scgpt", list(genes), seed),
    }
    unknown = sorted(set(names or ()) - set(writers))
    if unknown:
        raise InputError(f"no tiny model named {unknown[0]!r}; known: {', '.join(writers)}")
    return {name: write() for name, write in writers.items() if names is None or name in names}


__all__ = [
    "DEMO_GENES",
    "make_tiny",
    "write_tiny_borzoi",
    "write_tiny_enformer",
    "write_tiny_esm2",
    "write_tiny_esmc",
    "write_tiny_flashzoi",
    "write_tiny_nucleotide_transformer",
    "write_tiny_scgpt",
]
