"""Fingerprints: package versions, file digests, digests of ordered strings and of an input table.

One definition of each, so that a cache written by `embed` and one imported from HDF5 compute their
identity (`input_digest`) the same way, and a checkpoint's fingerprints compare with a cache's.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
from collections.abc import Iterable

import pandas as pd

# The controls a manifest names itself as, written by `embed` and read by `probe`: the sequence-only k-mer features
# (`embed --model kmer`: the manifest's `model`) and a model's architecture with random weights (`embed
# --random-init SEED`: its `model_revision` is RANDOM_INIT + the seed)
KMER_MODEL = "kmer"
RANDOM_INIT = "random_init:"


def random_init_revision(seed: int) -> str:
    """The manifest's `model_revision` for weights drawn at random with `seed` (`--random-init`), none read."""
    return f"{RANDOM_INIT}{seed}"


def is_random_init(revision: object) -> bool:
    """Whether a manifest's `model_revision` says its weights were drawn at random (`random_init_revision`)."""
    return str(revision).startswith(RANDOM_INIT)


# Packages whose versions can change the numbers or the layout; recorded in every manifest and checkpoint.
PROVENANCE_PACKAGES = ("dogmacache", "numpy", "zarr", "numcodecs", "torch", "transformers", "enformer-pytorch")


def package_versions(names: Iterable[str] = PROVENANCE_PACKAGES) -> dict[str, str]:
    """{"python": ..., package: version} for the installed ones of `names`."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def file_sha256(path: str | os.PathLike, block: int = 1 << 22) -> str:
    """ "sha256:<hex>" of a file's bytes, read 4 MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def digest_strings(parts: Iterable[str]) -> str:
    """sha256 over an ordered sequence of strings (each terminated by a newline, so boundaries count)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8"))
        h.update(b"\n")
    return "sha256:" + h.hexdigest()


def input_digest(table: pd.DataFrame, columns: list[str], extra: Iterable[str] = ()) -> str:
    """A cache's identity: `digest_strings` over the `extra` strings (e.g. the genome's name and size), then one
    tab-joined line per row of `columns` in order. Two caches join only if their digests agree."""
    rows = ("\t".join(row) for row in table[columns].astype(str).itertuples(index=False))
    return digest_strings([*extra, *rows])
