"""The two project functions explain uses from the stages below it, imported from their shared homes.

FALLBACK (remove once both are on main): until `contracts.tables.read_table` and
`cache.first_fingerprint_difference` exist, `read_table` comes from its current home in `train.tasks.base` and
`first_fingerprint_difference` is the minimal comparison below (the same one `train.checkpoint.check_resume`
makes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

try:
    from dogmacache.contracts.tables import read_table
except ImportError:  # FALLBACK
    from dogmacache.train.task import read_table

try:
    from dogmacache.cache import first_fingerprint_difference
except ImportError:  # FALLBACK

    @dataclass(frozen=True)
    class FingerprintDifference:
        name: str  # the cache's role (dna, rna, protein ...)
        key: str  # the fingerprint entry that differs
        recorded: Any
        current: Any
        url: str  # where the current cache is

        def describe(self) -> str:
            return f"a {self.name} cache with {self.key} {self.recorded!r} but {self.url} has {self.current!r}"

    def first_fingerprint_difference(
        recorded: dict[str, dict[str, Any]], current: dict[str, dict[str, Any]]
    ) -> FingerprintDifference | None:
        """The first (cache name, key) whose value differs between two sets of fingerprints (`url` aside)."""
        for name in sorted(set(recorded) | set(current)):
            before, now = recorded.get(name) or {}, current.get(name) or {}
            for key in sorted(set(before) | set(now)):
                if key != "url" and before.get(key) != now.get(key):
                    return FingerprintDifference(name, key, before.get(key), now.get(key), now.get("url", name))
        return None


__all__ = ["first_fingerprint_difference", "read_table"]
