"""Writing a cache: whole shards, one owner each, resumable after a crash or `kill -9`.

Order of writes, and why it is safe:
1. `create` writes the group, the arrays, the `ids` and a manifest with `complete=False`.
2. `write_shard(i, ...)` writes all rows of shard i (one shard file per array), then the shard's digest
   into row i of `shard_sha256`. A kill before the digest lands leaves the shard pending; it is redone.
3. `finalize` checks every shard has a digest and rewrites the manifest with `complete=True`.
One process owns a cache while it is written (`cache/lock.py`): `create` and `open` take the writer lock
and refuse a cache another process holds, naming its pid; `finalize` or `close` let go of it. Processes that
own disjoint shards of the same write (a fan-out) join the owner's lock explicitly with
`CacheWriter.open(path, lock_token=owner.lock_token)`; two writers must never share a shard, since partial
writes to one shard file lose rows. A full disk or a read-only file system is a one-line CacheError saying
which shards are kept; re-running the same command resumes.

Shapes: N items, item_shape (L, D) or (D,); shard i holds rows [i * shard_items, min(N, (i + 1) * shard_items)).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from dogmacache.cache import convert, layout
from dogmacache.cache.layout import ExtraArray, check_ids
from dogmacache.cache.lock import WriterLock
from dogmacache.cache.manifest import MANIFEST_KEY, Manifest, config_differences, digest_strings, manifest_mapping
from dogmacache.cache.reader import chunk_file, damaged_metadata, member
from dogmacache.cache.shards import (
    PlainChunks,
    chunk_path,
    direct_readable,
    direct_writable,
    write_chunk_file,
    write_shard_file,
)
from dogmacache.cache.spec import CacheSpec
from dogmacache.cache.storage import disk_error, local_path
from dogmacache.errors import CacheError, IncompleteCacheError


def shard_digest(blocks: Sequence[np.ndarray]) -> bytes:
    """sha256 over the decoded rows of one shard: `embeddings` first, then the extra arrays in manifest order."""
    h = hashlib.sha256()
    for block in blocks:
        h.update(np.ascontiguousarray(block).reshape(-1).view(np.uint8))  # no copy of the shard
    return h.digest()


def _local_path(path: str | os.PathLike) -> Path:
    local = local_path(path)
    if local is None:
        raise CacheError(
            f"caches are written to a local directory, got {os.fspath(path)!r}; write locally, then `cache publish`"
        )
    return Path(local)


def _member(group: zarr.Group, name: str, path: Path) -> zarr.Array:
    """Array `name` of a cache being written (`reader.member`), its fix said as the writer's."""
    return member(group, str(path), name, "pass --overwrite to write the cache anew (or choose another output path)")


def _remove_at_once(path: Path, token: str) -> None:
    """Remove the cache at `path` for --overwrite: renamed aside in one step (to the name of a stopped creation,
    which the next create clears), then deleted. A stop during the deletion leaves no cache at `path`, never a
    half-deleted one whose manifest still says complete. A link is refused: the cache is another folder."""
    if not path.is_dir():
        raise CacheError(
            f"{path} is a file, not a cache folder; --overwrite replaces a cache: remove the file, or choose another "
            "output path"
        )
    if path.is_symlink():
        raise CacheError(
            f"{path} is a link to {os.path.realpath(path)}; --overwrite replaces a cache folder, not what a link "
            "points to: pass that folder itself, or remove the link"
        )
    aside = layout.staged_path(path, token)
    shutil.rmtree(aside, ignore_errors=True)
    os.rename(path, aside)
    shutil.rmtree(aside)


class CacheWriter:
    """Writes whole shards of one cache. Use `create` (new or resumed cache) or `open` (attach to one)."""

    def __init__(
        self,
        path: Path,
        group: zarr.Group,
        manifest: Manifest,
        extras: tuple[ExtraArray, ...],
        lock: WriterLock | None = None,
    ):
        self.path = path
        self._lock = lock
        self._group = group
        self.manifest = manifest
        self.extras = extras
        # Writing every chunk without testing it against the fill value: 1.2 GB/s instead of 0.2-0.6 GB/s
        # (measured, 16 Enformer windows per shard), and every shard file exists once written.
        self._embeddings = _member(group, layout.EMBEDDINGS, path).with_config({"write_empty_chunks": True})
        self._extra_arrays = {
            e.name: _member(group, e.name, path).with_config({"write_empty_chunks": True}) for e in extras
        }
        self._digests = _member(group, layout.SHARD_SHA256, path)
        # Plain layouts (no compression) are written file by file here, the same bytes zarr writes, without
        # zarr's ~0.15 ms per chunk (`cache/shards.py`); anything else goes through zarr.
        self._direct = (
            direct_readable(self._embeddings, manifest.item_shape)
            and all(direct_writable(a) for a in self._extra_arrays.values())
            and direct_writable(self._digests)
        )

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        spec: CacheSpec,
        *,
        ids: Sequence[str],
        overwrite: bool = False,
        settings_of: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> CacheWriter:
        """A writer for a new cache at `path`, or for the unfinished cache already there when it was started
        with the same inputs and settings (resume). A finished cache with the same content is returned as is
        (`pending_shards()` is empty); anything else at `path` is an error unless `overwrite`. The same settings
        means the same manifest fields (`Manifest.same_content_as`) and the same `settings_of(config)` (the
        caller's rule for what in a config decides the numbers; None: the whole `spec.config`), compared under
        the writer lock."""
        path = _local_path(path)
        ids = check_ids(ids)
        shard_items = spec.shard_items
        item_bytes = layout.item_nbytes(spec.item_shape, spec.dtype)
        if shard_items is None:
            shard_items = layout.choose_shard_items(len(ids), item_bytes, spec.shard_bytes)
        else:
            shard_items = layout.check_shard_items(int(shard_items), len(ids), item_bytes)
        extras = spec.extras
        wanted = Manifest(
            modality=spec.modality,
            model=spec.model,
            model_revision=spec.model_revision,
            layer=spec.layer,
            pooling=spec.pooling,
            dtype=spec.dtype,
            n_items=len(ids),
            item_shape=spec.item_shape,
            shard_items=int(shard_items),
            input_digest=spec.input_digest,
            compression=spec.compression,
            extra_arrays=tuple(e.name for e in extras),
            ids_digest=digest_strings(ids),
            config=dict(spec.config),
        )
        layout.codecs_for(spec.compression, spec.dtype)  # fail early on an impossible combination
        try:
            lock = WriterLock.acquire(path)
        except OSError as err:
            raise disk_error(err, f"create {path}", "nothing was written") or err from None
        try:
            for staged in layout.stale_staged(path):  # a stopped creation's or --overwrite's
                shutil.rmtree(staged, ignore_errors=True)
            if path.exists() and overwrite:
                _remove_at_once(path, lock.token)
            if path.exists():
                return cls._resume(path, wanted, extras, lock, settings_of)
            try:
                return cls._create_new(path, wanted, ids, extras, lock)
            except OSError as err:
                raise disk_error(err, f"create {path}", "nothing was written") or err from None
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _create_new(
        cls, path: Path, manifest: Manifest, ids: list[str], extras: tuple[ExtraArray, ...], lock: WriterLock
    ):
        # built in a sibling folder and renamed into place whole: a stop while the arrays and ids are written (a
        # second for a million ids) leaves no group without a manifest at `path`, which no rerun could resume
        staged = layout.staged_path(path, lock.token)
        group = zarr.open_group(staged, mode="w-", zarr_format=3)
        n, per_shard = manifest.n_items, manifest.shard_items
        filters, compressors = layout.codecs_for(manifest.compression, manifest.dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numcodecs' "not in the v3 spec" notice for bitround
            group.create_array(
                layout.EMBEDDINGS,
                shape=(n, *manifest.item_shape),
                chunks=(1, *manifest.item_shape),  # one item per chunk: random reads touch one item
                shards=(per_shard, *manifest.item_shape),
                dtype=layout.zarr_dtype(manifest.dtype),
                filters=filters,
                compressors=compressors,
                fill_value=0,
                chunk_key_encoding=layout.CHUNK_KEY_ENCODING,
                attributes={"storage_dtype": manifest.dtype, "coordinates": layout.IDS},  # xarray: ids label items
                dimension_names=layout.EMBEDDING_DIMS.get(len(manifest.item_shape)),
            )
        ids_array = group.create_array(
            layout.IDS,
            shape=(n,),
            chunks=(min(n, layout.IDS_CHUNK),),
            dtype=str,
            compressors=layout.checksum(),
            chunk_key_encoding=layout.CHUNK_KEY_ENCODING,
            dimension_names=("item",),
        )
        ids_array[:] = np.asarray(ids, dtype=object)
        for extra in extras:
            group.create_array(
                extra.name,
                shape=(n, *extra.item_shape),
                chunks=(per_shard, *extra.item_shape),  # one chunk file per shard, owned by its writer
                dtype=extra.dtype,
                fill_value=0,
                compressors=layout.checksum(),
                chunk_key_encoding=layout.CHUNK_KEY_ENCODING,
                dimension_names=layout.extra_dims(extra),
            )
        group.create_array(
            layout.SHARD_SHA256,
            shape=(manifest.n_shards, 32),
            chunks=(1, 32),  # one tiny file per shard, written last for that shard
            dtype="uint8",
            fill_value=0,
            compressors=layout.checksum(),
            chunk_key_encoding=layout.CHUNK_KEY_ENCODING,
            dimension_names=layout.SHARD_SHA256_DIMS,
        )
        group.attrs[MANIFEST_KEY] = manifest.to_dict()  # complete=False until finalize
        os.rename(staged, path)
        return cls(path, zarr.open_group(path, mode="r+", zarr_format=3), manifest, extras, lock)

    @classmethod
    def _resume(
        cls,
        path: Path,
        wanted: Manifest,
        extras: tuple[ExtraArray, ...],
        lock: WriterLock,
        settings_of: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> CacheWriter:
        writer = cls._attach(path, extras, lock, allow_complete=True)
        for root, _, files in os.walk(path):  # the temporary file of a shard write a kill stopped (a shard's size)
            for name in files:
                if name.endswith(".partial"):
                    os.unlink(os.path.join(root, name))
        if writer.manifest.complete:
            shutil.rmtree(path / layout.SHARD_NOTES, ignore_errors=True)  # left by a stop after the manifest's write
            lock.release()  # nothing more will be written
        differs = writer.manifest.same_content_as(wanted)
        if differs:
            detail = "; ".join(
                f"{k}: {getattr(writer.manifest, k)!r} there, {getattr(wanted, k)!r} now" for k in differs
            )
            raise CacheError(
                f"{path} already holds a cache of other content ({detail}); "
                "choose another output path, or pass --overwrite to replace it"
            )
        there, now = (
            (writer.manifest.config, wanted.config)
            if settings_of is None
            else (settings_of(writer.manifest.config), settings_of(wanted.config))
        )
        settings = config_differences(there, now)
        if settings:
            detail = "; ".join(f"{k}: {there.get(k)!r} there, {now.get(k)!r} now" for k in settings[:3])
            more = f" (and {len(settings) - 3} more: {', '.join(settings[3:6])})" if len(settings) > 3 else ""
            raise CacheError(
                f"{path} already holds a cache written with other settings ({detail}{more}); re-run with the "
                "cache's settings to resume it, or pass --overwrite (or choose another output path) to write it anew"
            )
        return writer

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        *,
        extras: Sequence[ExtraArray] | None = None,
        allow_complete: bool = False,
        lock_token: str | None = None,
    ) -> CacheWriter:
        """Attach to an existing cache: take its writer lock, or with `lock_token` (the owning writer's
        `lock_token`) write shards the owner hands this process while the owner holds the lock."""
        path = _local_path(path)
        lock = WriterLock.acquire(path) if lock_token is None else WriterLock.join(path, lock_token)
        try:
            return cls._attach(path, extras, lock, allow_complete)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _attach(
        cls, path: Path, extras: Sequence[ExtraArray] | None, lock: WriterLock, allow_complete: bool
    ) -> CacheWriter:
        try:
            group = zarr.open_group(path, mode="r+", zarr_format=3)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as err:
            raise CacheError(
                f"{path} is a folder but not a cache (no Zarr group there); choose another --out, or pass --overwrite "
                "to replace the folder with the cache"
            ) from err
        except json.JSONDecodeError as err:
            fix = "pass --overwrite to write the cache anew (or choose another output path)"
            raise damaged_metadata(str(path), "", err, fix) from None
        if MANIFEST_KEY not in group.attrs:
            raise CacheError(
                f"{path} is a Zarr group without a '{MANIFEST_KEY}' manifest; it is not a dogmacache cache: pass "
                "--overwrite to write the cache there anew, or choose another output path"
            )
        manifest = Manifest.from_dict(manifest_mapping(group.attrs[MANIFEST_KEY], str(path)), where=str(path))
        if manifest.complete and not allow_complete:
            raise CacheError(f"{path} is complete; re-embedding writes a new cache (choose another output path)")
        if extras is None:
            extras = tuple(
                ExtraArray(name, str(member.dtype), tuple(member.shape[1:]))
                for name, member in ((name, _member(group, name, path)) for name in manifest.extra_arrays)
            )
        return cls(path, group, manifest, tuple(extras), lock)

    @property
    def lock_token(self) -> str:
        """What a helper process passes to `CacheWriter.open(path, lock_token=...)` to write shards of this write."""
        if self._lock is None:
            raise CacheError(f"this writer of {self.path} holds no lock to share")
        return self._lock.token

    def close(self) -> None:
        """Let go of the writer lock (the cache stays as it is: unfinished shards resume on the next run)."""
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- progress -----------------------------------------------------------------------------------
    def _digest_rows(self) -> np.ndarray | None:
        """(n_shards, 32): each shard's digest as on disk, zeros where its chunk was never written or is torn (a
        kill mid-write), read from the chunk files themselves (zarr's pipeline costs more per chunk than reading
        it here, docs/formats.md, and a cache has one per shard); None where this writer does not write them
        directly (zarr reads them)."""
        if not self._direct:
            return None
        chunks = PlainChunks(str(self.path), layout.SHARD_SHA256, (self.manifest.n_shards, 32), (1, 32), np.uint8)
        out = np.zeros((self.manifest.n_shards, 32), dtype=np.uint8)
        for shard in range(self.manifest.n_shards):
            try:
                block = chunks.read(shard)
            except CacheError:  # torn: not done
                continue
            if block is not None:
                out[shard] = block[0]
        return out

    def done_shards(self) -> set[int]:
        """Shards whose digest is on disk (their rows are complete)."""
        direct = self._digest_rows()
        if direct is not None:
            return {int(i) for i in np.flatnonzero(direct.any(axis=1))}
        try:
            digests = self._digests[:]
        except Exception:  # a digest chunk torn by a kill: read row by row, a torn row counts as not done
            rows = []
            for i in range(self.manifest.n_shards):
                try:
                    rows.append(self._digests[i])
                except Exception:
                    rows.append(np.zeros(32, dtype=np.uint8))
            digests = np.stack(rows)
        return {int(i) for i in np.flatnonzero(digests.any(axis=1))}

    def pending_shards(self) -> list[int]:
        if self.manifest.complete:
            return []
        done = self.done_shards()
        return [i for i in range(self.manifest.n_shards) if i not in done]

    # ---- writing ------------------------------------------------------------------------------------
    def write_shard(
        self,
        shard: int,
        embeddings: np.ndarray,
        *,
        checked: bool = False,
        note: dict[str, Any] | None = None,
        **extras: np.ndarray,
    ) -> str:
        """Write all rows of one shard, then record its digest. Returns the digest (hex). `checked`: the caller
        has already refused NaN/Inf and float16 overflow (the embed stream does, on the device), so the rows'
        finiteness is not checked again here. `note`: a small JSON record of how the shard was written (the rows
        `--reuse` copied into it), kept beside the cache until `finalize` and written before the shard's digest,
        so that a shard written again after an interruption has its own note, or none."""
        m = self.manifest
        if m.complete:
            raise CacheError(f"{self.path} is complete; it takes no more writes")
        start, stop = m.shard_rows(shard)
        embeddings = np.asarray(embeddings)
        expected = (stop - start, *m.item_shape)
        if embeddings.shape != expected:
            raise CacheError(
                f"shard {shard} of {self.path} takes embeddings of shape {expected} (rows {start}..{stop - 1} x "
                f"item_shape {m.item_shape}), got {embeddings.shape}; the model's output does not match the "
                "manifest: check the window length and layer width, or write a new cache"
            )
        stored = self._to_storage(embeddings, start, checked)
        if set(extras) != set(m.extra_arrays):
            raise CacheError(
                f"shard {shard} needs extra arrays {list(m.extra_arrays)}, got {sorted(extras)}; pass each of them"
            )
        extra_blocks = []
        for spec in self.extras:
            block = np.asarray(extras[spec.name]).astype(spec.dtype, copy=False)
            if block.shape != (stop - start, *spec.item_shape):
                raise CacheError(
                    f"extra array {spec.name!r} of shard {shard} takes shape {(stop - start, *spec.item_shape)}, "
                    f"got {block.shape}"
                )
            extra_blocks.append(block)

        try:
            self._set_note(shard, note)
            if self._direct:
                digest = self._write_direct(shard, stored, extra_blocks)
            else:
                self._embeddings[start:stop] = stored  # one whole shard file
                for spec, block in zip(self.extras, extra_blocks, strict=True):
                    self._extra_arrays[spec.name][start:stop] = block
                if m.compression == "bitround":  # lossy: digest what a reader will decode, not what was passed in
                    stored = self._embeddings[start:stop]
                digest = shard_digest([stored, *extra_blocks])
                self._digests[shard] = np.frombuffer(digest, dtype=np.uint8)  # last: marks the shard finished
        except OSError as err:
            kept = f"{len(self.done_shards())} of {m.n_shards} shards are finished and kept (shard {shard} is redone)"
            raise disk_error(err, f"write shard {shard} of {self.path}", kept) or err from None
        return digest.hex()

    def _write_direct(self, shard: int, stored: np.ndarray, extra_blocks: list[np.ndarray]) -> bytes:
        """The shard's files as zarr would write them (`cache/shards.py`), its digest row last."""
        m, root = self.manifest, str(self.path)
        write_shard_file(chunk_path(root, layout.EMBEDDINGS, (shard, *[0] * len(m.item_shape))), stored, m.shard_items)
        for spec, block in zip(self.extras, extra_blocks, strict=True):
            write_chunk_file(chunk_path(root, spec.name, (shard, *[0] * len(spec.item_shape))), block, m.shard_items)
        digest = shard_digest([stored, *extra_blocks])
        write_chunk_file(chunk_path(root, layout.SHARD_SHA256, (shard, 0)), np.frombuffer(digest, np.uint8)[None], 1)
        return digest

    def _to_storage(self, embeddings: np.ndarray, start: int, checked: bool = False) -> np.ndarray:
        """Cast to the storage dtype, refusing non-finite values before and after the cast (unless `checked`)."""
        dtype = self.manifest.dtype
        if embeddings.dtype.kind not in "fiuV":
            raise CacheError(f"embeddings must be numbers, got dtype {embeddings.dtype}")
        if checked:
            return convert.to_storage(embeddings, dtype)
        self._refuse_nonfinite(embeddings, start, "")
        stored = convert.to_storage(embeddings, dtype)
        if dtype in ("float16", "bfloat16") and embeddings.dtype != layout.numpy_view(dtype):
            self._refuse_nonfinite(
                stored.view(layout.numpy_view(dtype)),
                start,
                f" after the cast to {dtype} (values beyond {dtype}'s range; store float32 instead)",
            )
        return stored

    def _refuse_nonfinite(self, block: np.ndarray, start: int, why: str) -> None:
        bad_rows = convert.nonfinite_rows(block)
        if bad_rows.size:
            row = start + int(bad_rows[0])
            n_bad = int((~np.isfinite(np.asarray(block[bad_rows[0]], dtype=np.float32))).sum())
            raise CacheError(
                f"item {self._id_at(row)!r} (row {row}) has {n_bad} NaN/Inf values{why}, and {bad_rows.size - 1} more "
                "rows in this shard do too; nothing of this shard was written. Check that item's input "
                "(e.g. an all-N window), or run the model in float32"
            )

    def _id_at(self, row: int) -> str:
        return str(self._group[layout.IDS][row])

    def _set_note(self, shard: int, note: dict[str, Any] | None) -> None:
        path = self.path / layout.SHARD_NOTES / f"{shard}.json"
        if not note:
            path.unlink(missing_ok=True)
            return
        path.parent.mkdir(exist_ok=True)
        staged = path.with_name(f".{shard}.json.tmp")
        staged.write_text(json.dumps(note))
        os.replace(staged, path)

    def shard_notes(self) -> dict[int, dict[str, Any]]:
        """The notes (`write_shard`) of the shards written, by shard."""
        folder = self.path / layout.SHARD_NOTES
        done, notes = self.done_shards(), {}
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
            try:
                shard, note = int(path.stem), json.loads(path.read_text())
            except (ValueError, OSError) as err:
                warnings.warn(f"{path}: not a shard note ({err}); left out of the cache's reused record", stacklevel=2)
                continue
            if shard in done and isinstance(note, dict):
                notes[shard] = note
        return notes

    def reused_records(self) -> list[dict[str, Any]]:
        """The manifest's `reused`: the records of the rows copied into each shard written (its note's "reused"
        list: name, shards_digest, rows, fidelity per source) summed per source (name and shards digest), so that
        rows copied by an interrupted run count as well as the last run's."""
        merged: dict[tuple[str, str], dict[str, Any]] = {}
        for note in self.shard_notes().values():
            for record in note.get("reused", ()):
                if not isinstance(record, dict) or not {"name", "shards_digest", "rows"} <= set(record):
                    continue  # not a record this version writes
                key = (record["name"], record["shards_digest"])
                if key in merged:
                    merged[key]["rows"] += record["rows"]
                else:
                    merged[key] = dict(record)
        return list(merged.values())

    def note_config(self, name: str, value: Any) -> None:
        """Add `name` to the unfinished manifest's config and write it now (a later stop keeps it): e.g. the
        settings a resume ran under where they differ from those the cache was begun with."""
        if self.manifest.complete:
            raise CacheError(f"{self.path} is complete; its manifest's config is not changed")
        self.manifest = dataclasses.replace(self.manifest, config={**self.manifest.config, name: value})
        self._group.attrs[MANIFEST_KEY] = self.manifest.to_dict()

    def _lost_shards(self) -> list[int]:
        """Shards whose `embeddings` file is missing or empty (a stat each), though their digest row is written."""
        n_dims = 1 + len(self.manifest.item_shape)
        lost = []
        for shard in range(self.manifest.n_shards):
            try:
                empty = os.stat(chunk_file(str(self.path), layout.EMBEDDINGS, shard, n_dims)).st_size == 0
            except FileNotFoundError:
                empty = True
            if empty:
                lost.append(shard)
        return lost

    def finalize(self, *, fidelity: dict | None = None) -> Manifest:
        """Mark the cache complete once every shard has its digest. Call once, after all writers finished.
        `fidelity` (the fp32 receipt) and the rows copied from earlier caches (`reused_records`, from the shards'
        notes, which are then let go) go into the manifest."""
        if self.manifest.complete:
            return self.manifest
        digests = self._digest_rows()
        digests = self._digests[:] if digests is None else digests
        missing = [int(i) for i in np.flatnonzero(~digests.any(axis=1))]
        if missing:
            raise IncompleteCacheError(
                f"{self.path}: {len(missing)} of {self.manifest.n_shards} shards are not written yet "
                f"(first: {missing[:5]}); re-run the same command to finish them"
            )
        lost = self._lost_shards()
        if lost:
            for shard in lost:  # written again by the next run
                self._digests[shard] = np.zeros(32, dtype=np.uint8)
            raise IncompleteCacheError(
                f"{self.path}: {len(lost)} shard(s) have a checksum but their file of rows is missing or empty "
                f"(first: {lost[:5]}; a machine that stopped before the file reached the disk); their checksums are "
                "cleared: re-run the same command to write them again"
            )
        done = dataclasses.replace(
            self.manifest,
            complete=True,
            shards=tuple(bytes(d).hex() for d in digests),
            fidelity=dict(fidelity or {}),
            reused=tuple(self.reused_records()),
        )
        try:
            self._group.attrs[MANIFEST_KEY] = done.to_dict()  # the last write: the cache is now complete
        except OSError as err:
            kept = f"all {done.n_shards} shards are finished and kept, the manifest is not yet marked complete"
            raise disk_error(err, f"finalize {self.path}", kept) or err from None
        self.manifest = done
        shutil.rmtree(self.path / layout.SHARD_NOTES, ignore_errors=True)  # summed into `reused` above
        self.close()
        return done
