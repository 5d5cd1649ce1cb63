"""Which adapter embeds what: (`--model`, `--modality`) -> adapter class, spelled out. Adding a model = its
file in this folder and its lines here."""

from __future__ import annotations

from dogmacache.embed.adapters.base import EmbeddingAdapter
from dogmacache.embed.adapters.borzoi import BorzoiAdapter, FlashzoiAdapter
from dogmacache.embed.adapters.enformer import EnformerAdapter
from dogmacache.embed.adapters.esmc import EsmcAdapter
from dogmacache.embed.adapters.hf_esm import Esm2Adapter, NucleotideTransformerAdapter
from dogmacache.embed.adapters.kmer import KmerDnaAdapter, KmerProteinAdapter, KmerRnaAdapter
from dogmacache.embed.adapters.scgpt_context import ScGPTContextAdapter
from dogmacache.embed.adapters.scgpt_gene import ScGPTGeneAdapter
from dogmacache.errors import ModelError

ADAPTERS: dict[tuple[str, str], type[EmbeddingAdapter]] = {
    ("enformer", "dna"): EnformerAdapter,
    ("borzoi", "dna"): BorzoiAdapter,
    ("flashzoi", "dna"): FlashzoiAdapter,
    ("esm2", "protein"): Esm2Adapter,
    ("esmc", "protein"): EsmcAdapter,  # ESM-C rebuilt natively (`esmc_model`), no `esm` package
    ("nucleotide-transformer", "dna"): NucleotideTransformerAdapter,
    ("nucleotide-transformer", "rna"): NucleotideTransformerAdapter,
    ("scgpt", "gene"): ScGPTGeneAdapter,
    ("scgpt", "context"): ScGPTContextAdapter,
    ("kmer", "dna"): KmerDnaAdapter,  # sequence-only controls: no model, no weights
    ("kmer", "rna"): KmerRnaAdapter,
    ("kmer", "protein"): KmerProteinAdapter,
}


def model_modalities() -> dict[str, list[str]]:
    """Each `--model` name with the modalities it embeds, in registry order."""
    found: dict[str, list[str]] = {}
    for model, modality in ADAPTERS:
        found.setdefault(model, []).append(modality)
    return found


def get_adapter(model: str, modality: str) -> type[EmbeddingAdapter]:
    """The adapter class for `--model` on `--modality`; ModelError naming the choices otherwise."""
    known = model_modalities()
    if model not in known:
        raise ModelError(f"unknown model {model!r}; known: {', '.join(sorted(known))}. Pick one with --model")
    if (model, modality) not in ADAPTERS:
        raise ModelError(
            f"model {model!r} embeds {', '.join(known[model])}, not --modality {modality}; "
            "pick a model for that modality"
        )
    return ADAPTERS[model, modality]
