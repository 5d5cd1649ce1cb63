"""Embed once, ever: rows of earlier caches reused by the digest of what the model saw.

Every cache written by `dogmacache embed` holds `item_sha256` beside `ids`: per item, the sha256 of the
adapter's prepared inputs (`item_digest`: the window's bases with their padding and strand policy, the token
ids after truncation, the gene token, the context profile), never of the id. `--reuse DIR_OR_URL` opens every
complete cache found there (a cache, or a folder of caches one level down; local or any fsspec URL such as
`hf://datasets/...`), keeps those whose numbers would be the same as this run's (`reuse_key`: model, weights,
layer, pooling, shape, storage and every number-changing setting; not the genome file, whose bases the digest
covers) and copies each row whose digest one of them holds. A source shard is read whole and checked against
the sha256 its manifest records before any of its rows is copied; the model runs only on the rest.
"""

from __future__ import annotations

import itertools
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from dogmacache.cache import hub, layout, open_cache
from dogmacache.cache.manifest import Manifest, config_differences, digest_strings
from dogmacache.cache.reader import EmbeddingCache
from dogmacache.cache.storage import local_path
from dogmacache.cache.writer import shard_digest
from dogmacache.embed.settings import number_fingerprint
from dogmacache.errors import CacheError, InputError

# Manifest fields two caches must share for a row of one to stand for a row of the other
_SAME = (
    "modality",
    "model",
    "model_revision",
    "layer",
    "pooling",
    "item_shape",
    "dtype",
    "compression",
    "extra_arrays",
)


# Settings that move a row's numbers by float rounding only (the batch shapes, compiled kernels, and on the CPU the
# thread count): a resume may change them (NUMBER_SETTINGS leaves them out), but a copied row stands for an
# embedded one only where they agree, or a reused table would not hold a full embed's bytes. Lossless codecs, on the
# other hand, store the same numbers: rows are decoded when copied and encoded as this run stores them.
_ROUNDING = {"max_tokens": None, "max_batch": None, "compile": "off"}  # setting -> its value where not recorded


def rounding_changes(begun: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    """The settings that move numbers by float rounding (`_ROUNDING`, and on a CPU the thread count) whose values
    in `now` (a resume's config) differ from the cache's `begun` ones: {setting: now's value}."""
    names = [*_ROUNDING, *(["torch_threads"] if now.get("device") == "cpu" else [])]
    return {k: now.get(k) for k in names if begun.get(k, _ROUNDING.get(k)) != now.get(k, _ROUNDING.get(k))}


def _key(attrs: dict[str, Any], config: dict[str, Any], flags: dict[str, dict]) -> dict[str, Any]:
    key = dict(attrs)
    numbers = number_fingerprint(config, flags)
    key.update({k: v for k, v in numbers.items() if not k.startswith("genome ")})
    key.update({name: config.get(name, default) for name, default in _ROUNDING.items()})
    if config.get("device") == "cpu":
        key["torch_threads"] = config.get("torch_threads")
    key["compression"] = "bitround" if attrs.get("compression") == "bitround" else "lossless"
    # a cache resumed under other rounding settings holds rows of two kinds: no run's rows equal all of them
    key["resumed_with"] = config.get("resumed_with")
    return key


def reuse_key(manifest: Manifest, flags: dict[str, dict]) -> dict[str, Any]:
    """What must agree for two caches' rows of the same item digest to hold the same numbers."""
    return _key({name: getattr(manifest, name) for name in _SAME}, manifest.config, flags)


def usable_threads(
    candidates: Sequence[Candidate], attrs: dict[str, Any], config: dict[str, Any], flags: dict[str, dict]
) -> dict[str, int | None]:
    """The torch threads of each CPU cache among `candidates` that a run of manifest `attrs` (those of _SAME) and
    `config` could copy rows from but for its thread count:
    the counts a run choosing none may take (`settings.resolve`)."""
    here = _key(attrs, config, flags)
    found = {}
    for c in candidates:
        m = c.cache.manifest if c.cache is not None else None
        if m is None or m.config.get("device") != "cpu" or layout.ITEM_SHA256 not in m.extra_arrays:
            continue
        there = reuse_key(m, flags)
        if not _differs({**there, "torch_threads": None}, {**here, "torch_threads": None}):  # all else agrees
            found[c.name] = there.get("torch_threads")
    return found


def _differs(there: dict[str, Any], here: dict[str, Any]) -> str:
    """The first setting of two reuse keys that differs, said in a few words; "" where all agree."""
    differ = config_differences(here, there)
    if not differ:
        return ""
    k = "resumed_with" if "resumed_with" in differ else differ[0]  # rows of two kinds: no run copies them all
    if k == "torch_threads" and isinstance(there.get(k), int):
        return f"torch_threads is {there[k]} there, {here.get(k)} here (a run at {there[k]} copies its rows)"
    if k == "torch_threads":
        return "its torch thread count is not recorded (embedded before counts were); re-embed it to copy from"
    if k == "resumed_with" and here.get(k):  # this run's own cache is the one of two kinds
        return (
            "this run's --out was resumed under other settings (resumed_with in its manifest), so its rows are of two "
            "kinds and it copies from no cache"
        )
    if k == "resumed_with":
        return (
            f"it was resumed under other settings ({there.get(k)!r}), so its rows are of two kinds; no run copies them"
        )
    return f"{k} is {there.get(k)!r} there, {here.get(k)!r} here"


def find_caches(spec: str) -> list[str]:
    """The caches `spec` names: itself if it is one, else its immediate subfolders that are (local or URL)."""
    spec = os.fspath(spec)
    local = local_path(spec)
    if local is not None:
        path = Path(local)
        if path.is_file():
            raise InputError(f"--reuse {spec} is a file; pass a cache (a NAME.zarr folder) or a folder of caches")
        if not path.is_dir():
            raise InputError(f"--reuse {spec}: no such folder; pass a cache or a folder of caches")
        if hub.is_cache_folder(path):  # a cache itself: opened once, by open_sources
            return [str(path)]
        return [str(path / found.relpath) for found in hub.find_caches(path)]
    import fsspec

    fs, root = fsspec.core.url_to_fs(spec)
    try:
        if fs.isfile(f"{root.rstrip('/')}/zarr.json") and _is_cache(spec):
            return [spec]
        subfolders = [p for p in fs.ls(root, detail=False) if fs.isfile(f"{p.rstrip('/')}/zarr.json")]
    except (OSError, ValueError) as err:
        raise InputError(f"--reuse {spec}: cannot list it ({err}); check the URL and your access") from err
    return [f"{spec.rstrip('/')}/{Path(p).name}" for p in sorted(subfolders)]


def _is_cache(url: str) -> bool:
    try:
        open_cache(url, allow_partial=True)
        return True
    except CacheError:
        return False


def source_name(url: str) -> str:
    """How the manifest names a source: a local cache by its folder name (no local path), a URL as given."""
    local = local_path(url)
    return Path(local).resolve().name if local is not None else url


@dataclass
class Candidate:
    """A cache `--reuse` names: opened, or why it could not be (`error`)."""

    name: str
    cache: EmbeddingCache | None
    error: str = ""


def find_sources(specs: Sequence[str]) -> list[Candidate]:
    """Every cache under `specs`, opened, so that a spec naming no cache is one line before anything is written."""
    found = []
    for spec in specs:
        urls = find_caches(spec)
        if not urls:
            raise InputError(f"--reuse {spec}: no cache there (a cache, or a folder with caches one level down)")
        for url in urls:
            try:
                found.append(Candidate(source_name(url), open_cache(url)))
            except CacheError as err:
                found.append(Candidate(source_name(url), None, str(err)))
    return found


@dataclass
class Source:
    name: str
    cache: EmbeddingCache
    rows: dict[bytes, int]  # item digest -> row
    stamp: tuple[int, int, int] | None = None  # its manifest file's (inode, size, mtime) when opened; None: remote

    def record(self, rows: int) -> dict[str, Any]:
        """What the manifest's `reused` says of `rows` copied from this source: its name, its shards' digest, the
        count and its own fidelity receipt (the copied rows' deviation from the float32 model; {} for none)."""
        m = self.cache.manifest
        return {"name": self.name, "shards_digest": digest_strings(m.shards), "rows": rows, "fidelity": m.fidelity}


@dataclass
class ReusePlan:
    """Per row of the new table: the source index holding its digest (-1: embed it) and the row there."""

    sources: list[Source]
    source: np.ndarray  # (N,) int
    row: np.ndarray  # (N,) int

    def summary(self) -> str:
        used = [f"{s.name} ({n:,})" for s, n in zip(self.sources, self.taken().tolist(), strict=True) if n]
        return f"{self.n_reused:,} rows reused from " + (", ".join(used) or "no cache")

    @property
    def n_reused(self) -> int:
        return int((self.source >= 0).sum())

    def taken(self) -> np.ndarray:
        """Rows found in each source, in source order."""
        return np.bincount(self.source[self.source >= 0], minlength=len(self.sources))


def open_sources(
    candidates: Sequence[Candidate], wanted: Manifest, flags: dict[str, dict]
) -> tuple[list[Source], list[str]]:
    """The complete caches among `candidates` (`find_sources`) whose rows can stand for this run's, each with its
    digest index, and one line per cache left out saying why."""
    here = reuse_key(wanted, flags)
    sources, skipped = [], []
    for c in candidates:
        if c.cache is None:
            skipped.append(f"{c.name}: {c.error}")
            continue
        if layout.ITEM_SHA256 not in c.cache.manifest.extra_arrays:
            why = "it records no item digests (written before item_sha256)"
        else:
            why = _differs(reuse_key(c.cache.manifest, flags), here)
        if why:
            skipped.append(f"{c.name}: {why}")
            continue
        sources.append(Source(c.name, c.cache, digest_index(c.cache), manifest_stamp(c.cache)))
    return sources, skipped


def manifest_stamp(cache: EmbeddingCache) -> tuple[int, int, int] | None:
    """(inode, size, mtime in ns) of a local cache's manifest file (its root zarr.json), which every rewrite of
    the cache (`--overwrite`, a resume, a shard's digest) replaces; None for a remote cache or none found."""
    root = local_path(cache.url)
    try:
        found = os.stat(os.path.join(root, "zarr.json")) if root is not None else None
    except OSError:
        return None
    return None if found is None else (found.st_ino, found.st_size, found.st_mtime_ns)


def digest_index(cache: EmbeddingCache) -> dict[bytes, int]:
    """item digest -> row of `cache` (the first row, for an input embedded twice); {} for a cache without digests."""
    if layout.ITEM_SHA256 not in cache.manifest.extra_arrays:
        return {}
    keys = _keys(cache.read_extra(layout.ITEM_SHA256))
    return dict(zip(reversed(keys), range(len(keys) - 1, -1, -1), strict=True))  # the first row wins


def _keys(digests: np.ndarray) -> list[bytes]:
    """Each (32,) digest row as bytes (slices of one bytes object: ~10x faster than bytes() per row)."""
    raw = np.ascontiguousarray(digests, dtype=np.uint8).tobytes()
    return [raw[k : k + 32] for k in range(0, len(raw), 32)]


def plan(sources: list[Source], digests: np.ndarray, wanted_rows: np.ndarray) -> ReusePlan:
    """For each of `wanted_rows` (rows of the new table still to write), the first source holding its digest."""
    n = len(digests)
    source, row = np.full(n, -1, dtype=np.int64), np.full(n, -1, dtype=np.int64)
    left = np.asarray(wanted_rows, dtype=np.int64)  # rows no source has given yet
    keys = _keys(digests[left])
    for s, src in enumerate(sources):
        found = np.fromiter((src.rows.get(key, -1) for key in keys), dtype=np.int64, count=len(keys))
        hit = found >= 0
        source[left[hit]], row[left[hit]] = s, found[hit]
        left, keys = left[~hit], list(itertools.compress(keys, (~hit).tolist()))
    return ReusePlan(sources, source, row)


HOLD_BYTES = 1 << 30  # stored rows of checked source shards kept in memory: about this much, and always the last


class RowCopier:
    """Rows of the sources as stored. The first time a source shard is needed it is read whole and checked against
    its manifest's sha256 before any row of it is used; its extras (a few bytes per row) are kept, and its stored
    rows while all held fit in HOLD_BYTES (the shards used longest ago let go first; the shard read last is always
    held, so with ~1 GiB shards two may be in memory for a moment). A shard checked before whose rows
    were let go gives later requests just the rows asked for, each checked by its own crc32c, once the source's
    manifest file is seen unchanged (`Source.stamp`); a remote source's, which has no such file here, is read whole
    and checked against its sha256 again. A table in another
    order than its source asks every source shard for rows again for every shard it fills: reading each whole
    every time made copying grow with the square of the shards."""

    def __init__(self, sources: list[Source]):
        self.sources = sources
        self._held: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()  # (source, shard) -> its stored rows
        self._extras: dict[tuple[int, int], list[np.ndarray]] = {}  # per shard checked: its extras, manifest order

    def _checked(self, s: int, shard: int) -> list[np.ndarray]:
        """The extras of source `s`'s `shard`, the shard read whole and checked against its sha256 the first time."""
        key = (s, shard)
        if key not in self._extras:
            cache = self.sources[s].cache
            start, stop = cache.manifest.shard_rows(shard)
            try:
                extras = cache.shard_blocks(shard, embeddings=False)  # from their chunk files, each crc32c checked
                stored = cache.read_rows(np.arange(start, stop))  # as stored (bfloat16 as ml_dtypes'), crc32c checked
            except CacheError as err:  # a damaged source: this run may go on without it
                self._check_unchanged(s)
                raise CacheError(
                    f"--reuse source {self.sources[s].name}: {err}; or drop it from --reuse (its rows are "
                    "embedded instead)"
                ) from None
            if shard_digest([stored, *extras]).hex() != cache.manifest.shards[shard]:
                self._check_unchanged(s)  # a source rewritten since it was opened is said as such
                raise CacheError(
                    f"shard {shard} of reused cache {self.sources[s].name} does not match the sha256 its manifest "
                    "records; run `dogmacache cache verify` on it, or drop it from --reuse"
                )
            self._hold(key, stored)
            self._extras[key] = extras
        return self._extras[key]

    def _hold(self, key: tuple[int, int], stored: np.ndarray) -> None:
        self._held[key] = stored
        while len(self._held) > 1 and sum(block.nbytes for block in self._held.values()) > HOLD_BYTES:
            self._held.popitem(last=False)

    def _stored(self, s: int, shard: int, local: np.ndarray) -> np.ndarray:
        """Stored rows `local` (offsets in the shard) of a checked shard: from memory if held, else read by row."""
        held = self._held.get((s, shard))
        if held is None and self.sources[s].stamp is None:  # a remote source: no file to see it rewritten by
            del self._extras[(s, shard)]
            self._checked(s, shard)  # read whole again and checked against its sha256, as the first time
            held = self._held[(s, shard)]  # the shard read last is always held
        if held is not None:
            self._held.move_to_end((s, shard))
            return held[local]
        self._check_unchanged(s)  # a row's crc32c says it is whole, not that it is of the cache that was checked
        cache = self.sources[s].cache
        return cache.read_rows(shard * cache.manifest.shard_items + local)  # each row's crc32c checked

    def _check_unchanged(self, s: int) -> None:
        """CacheError where source `s` was rewritten since it was opened (its manifest file replaced: another run
        with --overwrite, or resumed): its rows are no longer those its checked shards and settings vouched for.
        The shards this run wrote hold rows of the source as it was, checked; a re-run keeps them and copies from
        the source as it is now, where its settings still agree."""
        source = self.sources[s]
        if source.stamp is not None and manifest_stamp(source.cache) != source.stamp:
            raise CacheError(
                f"--reuse source {source.name} was rewritten while this run copied from it (its manifest changed); "
                "re-run the same command, which copies from it as it is now where its settings still agree"
            )

    def take(self, s: int, rows: np.ndarray) -> list[np.ndarray]:
        """[embeddings, *extras in the source's manifest order] of `rows` of source `s`, in the order given."""
        cache = self.sources[s].cache
        per = cache.manifest.shard_items
        out: list[np.ndarray] | None = None
        for shard in np.unique(rows // per):
            at = np.flatnonzero(rows // per == shard)
            local = rows[at] - shard * per
            extras = self._checked(s, int(shard))
            blocks = [self._stored(s, int(shard), local), *(extra[local] for extra in extras)]
            if out is None:
                out = [np.empty((len(rows), *b.shape[1:]), dtype=b.dtype) for b in blocks]
            for target, block in zip(out, blocks, strict=True):
                target[at] = block
        assert out is not None
        return out
