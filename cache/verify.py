"""Checking a cache against its manifest: every shard's digest recomputed from the decoded rows, ids too,
and the size on disk for `cache info`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import fsspec
from dogmacache.cache import layout
from dogmacache.cache.manifest import digest_strings
from dogmacache.cache.reader import chunk_file, open_cache
from dogmacache.cache.writer import shard_digest
from dogmacache.errors import CacheError
from tqdm.auto import tqdm


@dataclass
class VerifyReport:
    url: str
    n_shards: int
    checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.checked == self.n_shards


def verify_cache(
    url: str | os.PathLike, *, storage_options: dict[str, Any] | None = None, progress: bool = True
) -> VerifyReport:
    """Recompute each shard's sha256 from its decoded rows and compare with the manifest."""
    url = os.fspath(url)
    cache = open_cache(url, allow_partial=True, storage_options=storage_options)
    m = cache.manifest
    report = VerifyReport(url=url, n_shards=m.n_shards)
    if not m.complete:
        report.problems.append("the manifest is not marked complete: the write did not finish; re-run it")
        return report
    if len(m.shards) != m.n_shards:
        report.problems.append(f"the manifest lists {len(m.shards)} shard checksums for {m.n_shards} shards")
        return report
    if digest_strings(cache.ids.tolist()) != m.ids_digest:
        report.problems.append("`ids` do not match the manifest's ids_digest")
    n_dims = {layout.EMBEDDINGS: 1 + len(m.item_shape)}
    n_dims.update({name: cache.extra(name).ndim for name in m.extra_arrays})
    for shard in tqdm(
        range(m.n_shards), desc="verify", unit="shard", disable=None if progress else True
    ):  # None: off when not a terminal
        where = ", ".join(chunk_file(url, name, shard, dims) for name, dims in n_dims.items())
        try:
            digest = shard_digest(cache.shard_blocks(shard)).hex()
        except CacheError as err:  # names the array file whose checksum failed
            report.problems.append(f"shard {shard} cannot be read: {err}")
            report.checked += 1
            continue
        except Exception as err:  # a shard that no longer decodes is as broken as one with other bytes
            report.problems.append(f"shard {shard} ({where}) cannot be read: {type(err).__name__}: {err}")
            report.checked += 1
            continue
        if digest != m.shards[shard]:
            start, stop = m.shard_rows(shard)
            report.problems.append(
                f"shard {shard} ({where}, rows {start}..{stop - 1}) has checksum {digest[:16]}…, "
                f"the manifest says {m.shards[shard][:16]}…: the file is corrupted; re-download or re-create it"
            )
        report.checked += 1
    return report


def size_on_disk(url: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> tuple[int, int]:
    """(bytes, files) under a cache, local or remote."""
    fs, path = fsspec.core.url_to_fs(os.fspath(url), **(storage_options or {}))
    sizes = fs.du(path, total=False, maxdepth=None)
    return int(sum(sizes.values())), len(sizes)
