"""Contracts shared by every stage: what a recipe's tables hold and how they are read (`tables`), how things
are fingerprinted (`provenance`), how DNA windows and their bins lie on the genome (`windows`). The cache package
is the embed -> train contract; this one is the recipe -> embed/train contract. It imports nothing of the
stages, so every stage may import it."""

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
    read_table,
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
    "read_table",
    "reverse_complement",
]
