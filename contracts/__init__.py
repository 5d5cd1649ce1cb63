"""Contracts shared by every stage: what a recipe's tables hold (`tables`) and how things are fingerprinted
(`provenance`). The cache package is the embed -> train contract; this one is the recipe -> embed/train
contract. It imports nothing of the stages, so every stage may import it."""

from dogmacache.contracts.provenance import digest_strings, file_sha256, input_digest, package_versions
from dogmacache.contracts.sequences import reverse_complement
from dogmacache.contracts.tables import (
    INPUT_COLUMNS,
    LABEL_COLUMNS,
    MODALITIES,
    SPLITS,
    check_gene_alignment,
    check_splits,
    digest_columns,
)

__all__ = [
    "INPUT_COLUMNS",
    "LABEL_COLUMNS",
    "MODALITIES",
    "SPLITS",
    "check_gene_alignment",
    "check_splits",
    "digest_columns",
    "digest_strings",
    "file_sha256",
    "input_digest",
    "package_versions",
    "reverse_complement",
]
