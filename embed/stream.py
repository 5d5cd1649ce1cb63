"""The batch loop: rows prepared on the CPU by DataLoader worker processes (FASTA reads, one-hot, tokenisation)
while the device computes, grouped into batches by a token budget counted after tokenisation
(`batches_by_budget`), or by length bucket for items of many sizes, every batch of one fixed shape
(`embed/shapes.py`), run under the resolved autocast, optionally pooled to `max_positions`, and cast to the
storage dtype on the device before the copy to the host (`to_host`). `embed_stream` yields batch by batch;
`embed_rows` collects every row; `embed_segments` is the same loop with several outputs per batch (`--layers`).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import itertools
import os
import signal
import sys
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from dogmacache.cache.layout import ITEM_SHA256, ExtraArray
from dogmacache.embed import shapes
from dogmacache.embed.adapters import EmbeddingAdapter, ModelInfo
from dogmacache.embed.digest import item_digest
from dogmacache.embed.settings import PRECISIONS
from dogmacache.embed.transfer import HostCopy
from dogmacache.errors import DogmaError, InputError


def autocast_for(device: torch.device, precision: str):
    """The autocast context for the forward pass under a resolved `precision` (weights stay fp32)."""
    dtype = PRECISIONS[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


def pool_positions(
    embedded: torch.Tensor, mask: np.ndarray | None, max_positions: int
) -> tuple[torch.Tensor, np.ndarray | None]:
    """(b, L, D) outputs average-pooled to (b, K, D), K = min(L, max_positions), bins as torch's adaptive pooling.
    With a `mask` (b, L) of real positions, only an item's real positions are pooled, into min(n_real, K) bins
    at the front; the returned mask (b, K) marks the bins that hold any."""
    length = embedded.shape[1]
    if length <= max_positions:
        return embedded, mask
    if mask is None:
        pooled = torch.nn.functional.adaptive_avg_pool1d(embedded.transpose(1, 2).float(), max_positions)
        return pooled.transpose(1, 2).to(embedded.dtype), None
    out = embedded.new_zeros(embedded.shape[0], max_positions, embedded.shape[2])
    kept = np.zeros((embedded.shape[0], max_positions), dtype=bool)
    for i, row in enumerate(np.asarray(mask, dtype=bool)):
        real = torch.from_numpy(np.flatnonzero(row)).to(embedded.device)
        bins = min(len(real), max_positions)
        if bins:
            tokens = embedded[i, real].T.unsqueeze(0).float()  # (1, D, n_real)
            out[i, :bins] = torch.nn.functional.adaptive_avg_pool1d(tokens, bins)[0].T.to(embedded.dtype)
            kept[i, :bins] = True
    return out, kept


DIGEST_EXTRA = ExtraArray(ITEM_SHA256, "uint8", (32,))  # every streamed batch carries its items' digests


def stored_info(info: ModelInfo, max_positions: int | None) -> ModelInfo:
    """The model's outputs as the cache holds them: pooled to `max_positions` (item shape and mask), and the
    per-item digest of the inputs (`item_sha256`) after the adapter's extras."""
    if max_positions and len(info.item_shape) == 1:
        raise InputError(
            f"--max-positions {max_positions} pools per-position outputs, but {info.model} stores one vector per "
            f"item here (pooling {info.pooling}); where the model offers per-position outputs pass --pooling none, "
            "else leave --max-positions out (a cache begun with it before this check: --overwrite)"
        )
    if max_positions and len(info.item_shape) == 2 and info.item_shape[0] > max_positions:
        extras = tuple(
            dataclasses.replace(e, item_shape=(max_positions,)) if e.name == "mask" else e for e in info.extras
        )
        info = dataclasses.replace(info, item_shape=(max_positions, info.item_shape[1]), extras=extras)
    return dataclasses.replace(info, extras=(*info.extras, DIGEST_EXTRA))


class _Prepared(torch.utils.data.Dataset):
    """Rows of the table for the pending shards, prepared one by one in worker processes, each with the digest
    of its prepared inputs."""

    digest_only = False

    def __init__(self, rows: list[dict[str, Any]], adapter: EmbeddingAdapter):
        self.rows, self.adapter = rows, adapter

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        # A worker's exception reaches the parent re-raised inside torch's multi-line wrapper; the user's error
        # travels as data instead and is raised as itself (`_raise_errors`), one line as always.
        try:
            prepared = self.adapter.prepare(self.rows[i])
        except DogmaError as err:
            return {_ERROR: err}
        return {**prepared, _DIGEST: item_digest(prepared)}


class _Digests(_Prepared):
    """Only the digests, DIGEST_ROWS rows per item: the inputs are prepared and dropped in the workers, and one
    small array per run of rows crosses to the parent."""

    digest_only = True

    def __len__(self) -> int:
        return -(-len(self.rows) // DIGEST_ROWS)

    def __getitem__(self, k: int) -> dict[str, Any]:
        rows = self.rows[k * DIGEST_ROWS : (k + 1) * DIGEST_ROWS]
        try:
            return {_DIGEST: self.adapter.digests(rows)}
        except DogmaError as err:
            return {_ERROR: err}


DIGEST_ROWS = 64


_ERROR = "_error"  # key of an item whose preparation failed
_DIGEST = "_sha256"  # key of an item's input digest (taken off before the adapter sees the batch)


def _raise_errors(items):
    """The items, raising a worker's error as itself. On an error, or when the consumer stops early, the loader's
    workers are shut down here at once: left to the garbage collector, torch later waits up to 5 s for each."""
    iterator = iter(items)
    try:
        for item in iterator:
            if _ERROR in item:
                raise item[_ERROR]
            yield item
    finally:
        shutdown = getattr(iterator, "_shutdown_workers", None)  # torch's multi-process loader iterator
        if shutdown is not None:
            shutdown()


def _die_with_parent(parent_pid: int, worker_id: int) -> None:
    """DataLoader worker init: the kernel kills this worker when the embed process dies (even by kill -9).
    torch's own check exits the work loop, but the exiting worker then waits forever to flush results into a
    pipe whose read end its sibling workers still hold. Linux only; elsewhere torch's check is all there is."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)


PR_SET_PDEATHSIG = 1  # <sys/prctl.h>


def _as_prepared(item: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Items stay as the adapter prepared them (the default would turn numpy arrays into tensors)."""
    return item


def batches_by_budget(
    items, n_tokens, max_tokens: int, max_batch: int, starts: Collection[int] = (), span: bool = False
):
    """Group a stream of prepared items into batches whose padded cost (B x longest) fits `max_tokens`; the
    items at positions `starts` open a new batch (shard boundaries: a shard's bytes then depend only on the
    shard, since CPU kernels round differently at other batch sizes). With `span`, runs of consecutive batches
    whose items all have one size are joined across the starts (`_join_one_size`): such a batch is filled out
    to one shape whichever items it holds (`shapes.filled`), and every batch of several sizes stays exactly as
    cut without `span`, so no shard's bytes depend on the shard before it."""
    cut = _cut_by_budget(items, n_tokens, max_tokens, max_batch, starts)
    return _join_one_size(cut, n_tokens, max_tokens, max_batch) if span else cut


def _cut_by_budget(items, n_tokens, max_tokens: int, max_batch: int, starts: Collection[int]):
    batch, longest = [], 0
    for position, item in enumerate(items):
        cost = n_tokens(item)
        full = max(longest, cost) * (len(batch) + 1) > max_tokens or len(batch) >= max_batch
        if batch and (full or position in starts):
            yield batch
            batch, longest = [], 0
        batch.append(item)
        longest = max(longest, cost)
    if batch:
        yield batch


def _join_one_size(batches, n_tokens, max_tokens: int, max_batch: int):
    """Each run of consecutive batches whose items all have one size, joined and cut again into full batches of
    that size (`shapes.per_batch`; the run's last may be short); every other batch as it is, in its place."""
    held: list = []
    size = None
    for batch in batches:
        sizes = {n_tokens(item) for item in batch}
        if len(sizes) != 1:
            if held:
                yield held
            held, size = [], None
            yield batch
            continue
        (one,) = sizes
        if held and one != size:
            yield held
            held = []
        size = one
        held.extend(batch)
        full = shapes.per_batch(one, max_tokens, max_batch)
        while len(held) >= full:
            yield held[:full]
            held = held[full:]
    if held:
        yield held


def _loader(dataset: _Prepared, device: torch.device, num_workers: int) -> torch.utils.data.DataLoader:
    """`num_workers` (at least 1) forked processes preparing `dataset`'s items; with none, callers read the
    dataset in this process themselves (torch's single-process loader adds ~20 us per item)."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        collate_fn=_as_prepared,
        pin_memory=device.type == "cuda" and not dataset.digest_only,
        prefetch_factor=16,
        multiprocessing_context="fork",
        worker_init_fn=functools.partial(_die_with_parent, os.getpid()),
    )


def input_digests(adapter: EmbeddingAdapter, rows: list[dict[str, Any]], num_workers: int, progress=None) -> np.ndarray:
    """(N, 32) uint8: each row's prepared-input digest, prepared by `num_workers` processes (nothing embedded).
    `progress(n)` is called per row."""
    out = np.zeros((len(rows), 32), dtype=np.uint8)
    if not num_workers:  # prepared here, in runs of rows
        for start in range(0, len(rows), 16 * DIGEST_ROWS):
            run = rows[start : start + 16 * DIGEST_ROWS]
            out[start : start + len(run)] = adapter.digests(run)
            if progress is not None:
                progress(len(run))
        return out
    for k, item in enumerate(_raise_errors(_loader(_Digests(rows, adapter), torch.device("cpu"), num_workers))):
        out[k * DIGEST_ROWS : k * DIGEST_ROWS + len(item[_DIGEST])] = item[_DIGEST]
        if progress is not None:
            progress(len(item[_DIGEST]))
    return out


@dataclass
class Segment:
    """A run of rows prepared for the device: its first position among the stream's rows, the items in row
    order, their input digests, and its batches as offsets into it (`shapes.plan`)."""

    first: int
    items: list[dict[str, Any]]
    digests: np.ndarray  # (n, 32) uint8
    batches: list[list[int]]
    buckets: list[int] | None  # per item, where the adapter batches by length bucket


def segments(
    adapter: EmbeddingAdapter,
    rows: list[dict[str, Any]],
    *,
    device: torch.device,
    max_tokens: int,
    max_batch: int,
    num_workers: int,
    starts: Collection[int] = (),
    span: bool = False,
):
    """Yield the stream's rows as `Segment`s, prepared by `num_workers` worker processes: one batch each, in row
    order under the token budget, for an adapter without length buckets; else runs of
    `shapes.segment_rows` rows batched by bucket. No segment spans a position in `starts` and the row before it,
    unless `span` joins batches of one size across it (`batches_by_budget`): the caller then takes rows that run
    on into the next shard. Bucketed runs always stop at a start (a bucket's batches have one length, but their
    count changes with the rows they hold, which a GPU's kernels need not ignore)."""
    prepared = _Prepared(rows, adapter)
    # no worker: the items straight from the dataset (torch's single-process loader adds ~20 us per item)
    items = _raise_errors(
        _loader(prepared, device, num_workers) if num_workers else map(prepared.__getitem__, range(len(rows)))
    )
    first = next(items, None)
    if first is None:
        return
    items = itertools.chain([first], items)
    if adapter.shape_bucket(first) is None:
        position = 0
        for batch in batches_by_budget(items, adapter.n_tokens, max_tokens, max_batch, frozenset(starts), span):
            digests = np.stack([item.pop(_DIGEST) for item in batch])
            yield Segment(position, batch, digests, [list(range(len(batch)))], None)
            position += len(batch)
        return
    rows_per_segment = shapes.segment_rows(4 * int(np.prod(adapter.info().item_shape)))  # float32 outputs, at most
    run: list[dict[str, Any]] = []
    position = 0
    for offset, item in enumerate(itertools.chain(items, [None])):
        if run and (item is None or offset in starts or len(run) >= rows_per_segment):
            digests = np.stack([x.pop(_DIGEST) for x in run])
            buckets = [adapter.shape_bucket(x) for x in run]
            plan = shapes.plan(buckets, max_tokens, max_batch)
            yield Segment(position, run, digests, plan, buckets)
            position, run = position + len(run), []
        if item is not None:
            run.append(item)


def has_filler(adapter: EmbeddingAdapter) -> bool:
    return type(adapter).filler is not EmbeddingAdapter.filler


def run_segment(call, adapter: EmbeddingAdapter, segment: Segment, max_tokens: int, max_batch: int):
    """Yield (offsets, outputs, extras) per batch of `segment`: `call` (an adapter's `embed`, or `embed_layers`
    for some layers) on the batch as `shapes.filled` builds it, outputs (a tensor or a dict of them) and extras
    cut back to the batch's own items."""
    for offsets in segment.batches:
        batch = [segment.items[o] for o in offsets]
        bucket = None if segment.buckets is None else segment.buckets[offsets[0]]
        filler = adapter.filler if bucket is not None and has_filler(adapter) else None
        outputs, extras = call(shapes.filled(batch, adapter.n_tokens, max_tokens, max_batch, bucket, filler))
        n = len(batch)
        outputs = {k: v[:n] for k, v in outputs.items()} if isinstance(outputs, dict) else outputs[:n]
        yield offsets, outputs, {k: np.asarray(v)[:n] for k, v in extras.items()}


class Assembly:
    """One segment's host outputs put back in row order, batch by batch."""

    def __init__(self, n: int, digests: np.ndarray):
        self.n, self.block = n, None
        self.extras: dict[str, np.ndarray] = {ITEM_SHA256: digests}

    def put(self, offsets: list[int], host: np.ndarray, extras: dict[str, np.ndarray]) -> None:
        if self.block is None and len(offsets) == self.n and offsets == list(range(self.n)):
            self.block = host  # one batch in row order (same-size items): kept as it is, no copy
            self.extras.update(extras)
            return
        if self.block is None:
            self.block = np.empty((self.n, *host.shape[1:]), dtype=host.dtype)
        self.block[offsets] = host
        for name, values in extras.items():
            if name not in self.extras:
                self.extras[name] = np.empty((self.n, *values.shape[1:]), dtype=values.dtype)
            self.extras[name][offsets] = values

    def result(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return self.block, self.extras


def pooled(
    embedded: torch.Tensor, extras: dict[str, Any], max_positions: int | None
) -> tuple[torch.Tensor, dict[str, Any]]:
    """A batch's outputs pooled to `max_positions` (per-position outputs only), its mask with them."""
    if max_positions and embedded.ndim == 3:
        embedded, mask = pool_positions(embedded, extras.get("mask"), max_positions)
        if mask is not None:
            extras = {**extras, "mask": mask}
    return embedded, extras


def embed_stream(adapter: EmbeddingAdapter, rows: list[dict[str, Any]], *, capture=None, **options):
    """Yield (outputs (b, *item_shape) in the storage `dtype` on the CPU, extras each (b, ...)) batch by
    batch, in row order: `embed_segments` with the adapter's one output. `options` are `embed_segments`' (device,
    resolved precision, token budget, workers, dtype, starts, max_positions, span); `capture(positions of the
    batch's rows, outputs)`, if given, sees each batch's outputs before the cast to the storage dtype."""

    def call(batch, keys):
        outputs, extras = adapter.embed(batch)
        return {"": outputs}, extras

    captures = None if capture is None else {"": capture}
    for _, outputs in embed_segments(adapter, rows, lambda segment: ("",), call, captures=captures, **options):
        yield outputs[""]


def embed_segments(
    adapter: EmbeddingAdapter,
    rows: list[dict[str, Any]],
    keys_for,
    call,
    *,
    device: torch.device,
    precision: str,
    max_tokens: int,
    max_batch: int,
    num_workers: int,
    dtype: str = "float32",
    starts: Collection[int] = (),
    max_positions: int | None = None,
    captures=None,
    span: bool = False,
):
    """The batch loop, one output per key (`--layers`: one per layer): yield, per segment in row order, (the
    segment, {key: (outputs (n, *item_shape) in `dtype` on the CPU, extras each (n, ...))}) for the keys
    `keys_for(segment)` names, each batch computed once by `call(batch, keys)` -> ({key: outputs}, extras).
    `precision` is resolved (fp32 | bf16 | fp16, see `resolve_precision`); no batch spans a position in `starts`
    and the row before it, unless `span` lets batches of one size do so (see `segments`); batches have fixed
    shapes (`shapes.py`). Each batch's host copies are read only after the next batch's forward was launched
    (`one_behind`). `captures[key](positions, outputs)`, where given, sees a key's outputs before the storage
    cast."""
    captures = captures or {}

    def launched():
        """Per batch, its forward launched and each key's copy to the host queued: (the segment, its assemblies
        by key, the batch's offsets in it, {key: (`HostCopy`, extras)}, whether it is the segment's last batch)."""
        for segment in segments(
            adapter,
            rows,
            device=device,
            max_tokens=max_tokens,
            max_batch=max_batch,
            num_workers=num_workers,
            starts=starts,
            span=span,
        ):
            keys = keys_for(segment)
            assembled = {key: Assembly(len(segment.items), segment.digests) for key in keys}
            for k, (offsets, outputs, extras) in enumerate(
                run_segment(lambda batch, keys=keys: call(batch, keys), adapter, segment, max_tokens, max_batch)
            ):
                positions = [segment.first + o for o in offsets]
                ids = [str(rows[p]["id"]) for p in positions]
                copies = {}
                for key in keys:
                    embedded, key_extras = pooled(outputs[key], extras, max_positions)
                    if key in captures:  # sees each batch before the storage cast
                        captures[key](positions, embedded)
                    copies[key] = (HostCopy(embedded, dtype, ids), key_extras)
                yield segment, assembled, offsets, copies, k == len(segment.batches) - 1

    with torch.inference_mode(), autocast_for(device, precision):
        for segment, assembled, offsets, copies, last in one_behind(launched()):
            for key, (copy, extras) in copies.items():
                assembled[key].put(offsets, copy.result(), extras)
            if last:
                yield segment, {key: assembly.result() for key, assembly in assembled.items()}


_END = object()


def one_behind(items):
    """Each of `items` once the next one has been produced (the last at the end). A stream reads a batch's host
    copy only after the next batch's forward was launched: on a GPU the host's work on it then overlaps that
    forward (`transfer.HostCopy`)."""
    iterator = iter(items)
    waiting = next(iterator, _END)
    for item in iterator:
        yield waiting
        waiting = item
    if waiting is not _END:
        yield waiting


def embed_rows(adapter: EmbeddingAdapter, rows: list[dict[str, Any]], **kwargs) -> tuple[np.ndarray, dict]:
    """All rows at once: (N, *item_shape) in the stream's `dtype` and the extras, each (N, ...)."""
    outputs, extras = [], {}
    for embedded, batch_extras in embed_stream(adapter, rows, **kwargs):
        outputs.append(embedded)
        for key, value in batch_extras.items():
            extras.setdefault(key, []).append(value)
    return np.concatenate(outputs), {k: np.concatenate(v) for k, v in extras.items()}
