"""Comparing cache fingerprints (`EmbeddingCache.fingerprint`): the one rule for "is this the cache a run was
trained on". A fingerprint is a dict per cache name (model, revision, layer, pooling, digests, url); every key
but `url` (where the cache lies, not what it holds) must agree."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FingerprintDifference:
    """The first key on which a cache's recorded and current fingerprints differ."""

    name: str  # the cache's name in the run (dna, rna, protein, ...)
    key: str  # the fingerprint key that differs
    recorded: Any  # its value when the run was made (None: absent)
    current: Any  # its value now (None: absent)
    url: str  # where the current cache lies (its name when unknown)

    def describe(self) -> str:
        """E.g. "a dna cache with input_digest 'sha256:..' but out/dna.zarr has 'sha256:..'"."""
        return f"a {self.name} cache with {self.key} {self.recorded!r} but {self.url} has {self.current!r}"


def first_fingerprint_difference(
    recorded: dict[str, dict[str, Any]], current: dict[str, dict[str, Any]]
) -> FingerprintDifference | None:
    """The first difference between two {cache name: fingerprint} dicts, names and keys in sorted order; a cache
    or key present on one side only differs from the other's None. `url` is never compared. None when they agree."""
    for name in sorted(set(recorded) | set(current)):
        before, now = recorded.get(name) or {}, current.get(name) or {}
        for key in sorted(set(before) | set(now)):
            if key != "url" and before.get(key) != now.get(key):
                return FingerprintDifference(name, key, before.get(key), now.get(key), str(now.get("url", name)))
    return None
