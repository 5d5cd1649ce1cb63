"""Foundation-model adapters, one file each, and the registry (`registry.ADAPTERS`): (`--model`, `--modality`)
-> adapter class. One model may embed several modalities with one class (the Nucleotide Transformer) or with
one class each (scGPT's gene tokens and contexts, over one encoder in `scgpt_model`; the sequence-only `kmer`
controls in `kmer`). ESM-C's encoder is rebuilt in `esmc_model`, its adapter is `esmc`."""

from dogmacache.embed.adapters.base import AdapterOptions, EmbeddingAdapter, ModelInfo
from dogmacache.embed.adapters.borzoi import BorzoiAdapter, BorzoiOptions, FlashzoiAdapter, FlashzoiOptions
from dogmacache.embed.adapters.enformer import EnformerAdapter, EnformerOptions
from dogmacache.embed.adapters.esmc import EsmcAdapter, EsmcOptions
from dogmacache.embed.adapters.hf_esm import (
    Esm2Adapter,
    EsmOptions,
    NucleotideTransformerAdapter,
    NucleotideTransformerOptions,
)
from dogmacache.embed.adapters.kmer import (
    KmerDnaAdapter,
    KmerDnaOptions,
    KmerProteinAdapter,
    KmerProteinOptions,
    KmerRnaAdapter,
    KmerRnaOptions,
)
from dogmacache.embed.adapters.registry import ADAPTERS, get_adapter, model_modalities
from dogmacache.embed.adapters.scgpt_context import ScGPTContextAdapter, ScgptContextOptions
from dogmacache.embed.adapters.scgpt_gene import ScGPTGeneAdapter, ScgptGeneOptions

__all__ = [
    "ADAPTERS",
    "AdapterOptions",
    "BorzoiAdapter",
    "BorzoiOptions",
    "EmbeddingAdapter",
    "EnformerAdapter",
    "EnformerOptions",
    "Esm2Adapter",
    "EsmcAdapter",
    "EsmcOptions",
    "EsmOptions",
    "FlashzoiAdapter",
    "FlashzoiOptions",
    "KmerDnaAdapter",
    "KmerDnaOptions",
    "KmerProteinAdapter",
    "KmerProteinOptions",
    "KmerRnaAdapter",
    "KmerRnaOptions",
    "ModelInfo",
    "NucleotideTransformerAdapter",
    "NucleotideTransformerOptions",
    "ScGPTContextAdapter",
    "ScGPTGeneAdapter",
    "ScgptContextOptions",
    "ScgptGeneOptions",
    "get_adapter",
    "model_modalities",
]
