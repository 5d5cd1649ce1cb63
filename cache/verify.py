"""Checking a cache against its manifest: every shard's digest recomputed from the decoded rows, ids too,
and the size on disk for `cache info`."""

from __future__ import annotations

import asyncio
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

# what to do about a shard that fails: re-running a finished cache's command redoes nothing, so replace the file
_NEXT = (
    "the file is corrupted: re-create the cache (re-run the command that wrote it, with --overwrite) or, for a "
    "cache pulled from the Hub, delete that file and run `dogmacache cache pull` again"
)
_SETTLE_S = 60.0


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
    try:
        return _check_shards(cache, url, report, progress)
    finally:
        if report.problems:
            _settle_reads()


def _check_shards(cache: Any, url: str, report: VerifyReport, progress: bool) -> VerifyReport:
    m = cache.manifest
    try:
        if digest_strings(cache.ids.tolist()) != m.ids_digest:
            report.problems.append("`ids` do not match the manifest's ids_digest")
    except CacheError as err:
        report.problems.append(f"`ids` cannot be read: {_cause(err)}; {_NEXT}")
    try:  # the per-shard record `done_shards` and a resume read: it must agree with the manifest's list
        recorded = cache.shard_digests()
        differ = [i for i in range(m.n_shards) if bytes(recorded[i]).hex() != m.shards[i]]
        if differ:
            report.problems.append(
                f"`{layout.SHARD_SHA256}` disagrees with the manifest's checksums for {len(differ)} shard(s) (first: "
                f"shard {differ[0]}); {_NEXT}"
            )
    except CacheError as err:
        report.problems.append(f"`{layout.SHARD_SHA256}` cannot be read: {_cause(err)}; {_NEXT}")
    n_dims = {layout.EMBEDDINGS: 1 + len(m.item_shape)}
    n_dims.update({name: cache.extra(name).ndim for name in m.extra_arrays})
    for shard in tqdm(
        range(m.n_shards), desc="verify", unit="shard", disable=None if progress else True
    ):  # None: off when not a terminal
        where = ", ".join(chunk_file(url, name, shard, dims) for name, dims in n_dims.items())
        report.checked += 1
        try:
            digest = shard_digest(cache.shard_blocks(shard)).hex()
        except CacheError as err:  # names the array file whose checksum failed
            report.problems.append(f"shard {shard} cannot be read: {_cause(err)}; {_NEXT}")
            continue
        except Exception as err:  # a shard that no longer decodes is as broken as one with other bytes
            reason = (str(err).splitlines() or [""])[0]
            report.problems.append(f"shard {shard} ({where}) cannot be read ({type(err).__name__}: {reason}); {_NEXT}")
            continue
        if digest != m.shards[shard]:
            start, stop = m.shard_rows(shard)
            report.problems.append(
                f"shard {shard} ({where}, rows {start}..{stop - 1}) has checksum {digest[:16]}…, "
                f"the manifest says {m.shards[shard][:16]}…; {_NEXT}"
            )
    return report


def _cause(err: CacheError) -> str:
    """A reader's error without the advice it gives every other command (which is to run verify)."""
    return str(err).split("; the file is corrupted")[0].split("; run `dogmacache cache verify")[0]


def _settle_reads() -> None:
    """Wait for the reads zarr left running when one chunk of a shard failed (the others go on in its event loop);
    left pending at exit, each would print asyncio's 'Task was destroyed but it is pending!'."""
    from zarr.core.sync import SyncError, sync

    async def rest() -> None:
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if others:  # return_exceptions: their failures are the one already reported
            await asyncio.wait_for(asyncio.gather(*others, return_exceptions=True), _SETTLE_S)

    try:
        sync(rest())
    except (TimeoutError, RuntimeError, SyncError):  # a stuck read: the report stands, the noise may follow
        pass


def size_on_disk(url: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> tuple[int, int]:
    """(bytes, files) under a cache, local or remote."""
    fs, path = fsspec.core.url_to_fs(os.fspath(url), **(storage_options or {}))
    sizes = fs.du(path, total=False, maxdepth=None)
    return int(sum(sizes.values())), len(sizes)
