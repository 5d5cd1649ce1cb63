"""The batch loop: rows prepared on the CPU by DataLoader worker processes (FASTA reads, one-hot, tokenisation)
while the device computes, grouped into batches by a token budget counted after tokenisation
(`batches_by_budget`; a short batch of same-size items filled out to the full batch size, `fixed_shape`), run
under the resolved autocast, optionally pooled to `max_positions`, and cast to the
storage dtype on the device before the copy to the host (`to_host`). `embed_stream` yields batch by batch;
`embed_rows` collects every row.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import os
import signal
import sys
from collections.abc import Collection
from typing import Any

import numpy as np
import torch
from dogmacache.cache.layout import ITEM_SHA256, ExtraArray, numpy_view
from dogmacache.embed.adapters import EmbeddingAdapter, ModelInfo
from dogmacache.embed.reuse import item_digest
from dogmacache.embed.settings import PRECISIONS
from dogmacache.errors import CacheError, DogmaError


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


def bounded_info(info: ModelInfo, max_positions: int | None) -> ModelInfo:
    """The model's outputs as the cache holds them: pooled to `max_positions` (item shape and mask), and the
    per-item digest of the inputs (`item_sha256`) after the adapter's extras."""
    if max_positions and len(info.item_shape) == 2 and info.item_shape[0] > max_positions:
        extras = tuple(
            dataclasses.replace(e, item_shape=(max_positions,)) if e.name == "mask" else e for e in info.extras
        )
        info = dataclasses.replace(info, item_shape=(max_positions, info.item_shape[1]), extras=extras)
    return dataclasses.replace(info, extras=(*info.extras, DIGEST_EXTRA))


def to_host(embedded: torch.Tensor, dtype: str, ids: list[str]) -> np.ndarray:
    """(b, ...) outputs cast to the storage `dtype` on their device, then copied to the host. bfloat16 comes
    back as ml_dtypes' bfloat16 (same bits). Values finite before the cast and not after (beyond float16's
    range) are refused here, naming the item, where the cause is still known."""
    stored = embedded.to(getattr(torch, dtype))
    if dtype == "float16":
        overflow = (torch.isinf(stored) & torch.isfinite(embedded)).flatten(1).any(1)  # (b,)
        if bool(overflow.any()):
            first = int(overflow.nonzero()[0, 0])
            raise CacheError(
                f"item {ids[first]!r} has values beyond float16's range (|x| > 65,504); store float32 instead "
                "(--dtype float32)"
            )
    if dtype == "bfloat16":  # numpy has no bfloat16 of its own: move the bits, view them as ml_dtypes'
        return stored.view(torch.int16).cpu().numpy().view(numpy_view("bfloat16"))
    return stored.cpu().numpy()


class _Prepared(torch.utils.data.Dataset):
    """Rows of the table for the pending shards, prepared one by one in worker processes, each with the digest
    of its prepared inputs (or, `digest_only`, just that digest)."""

    def __init__(self, rows: list[dict[str, Any]], adapter: EmbeddingAdapter, digest_only: bool = False):
        self.rows, self.adapter, self.digest_only = rows, adapter, digest_only

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        # A worker's exception reaches the parent re-raised inside torch's multi-line wrapper; the user's error
        # travels as data instead and is raised as itself (`_raise_errors`), one line as always.
        try:
            prepared = self.adapter.prepare(self.rows[i])
        except DogmaError as err:
            return {_ERROR: err}
        digest = item_digest(prepared)
        return {_DIGEST: digest} if self.digest_only else {**prepared, _DIGEST: digest}


_ERROR = "_error"  # key of an item whose preparation failed
_DIGEST = "_sha256"  # key of an item's input digest (taken off before the adapter sees the batch)


def _raise_errors(items):
    for item in items:
        if _ERROR in item:
            raise item[_ERROR]
        yield item


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


def batches_by_budget(items, n_tokens, max_tokens: int, max_batch: int, starts: Collection[int] = ()):
    """Group a stream of prepared items into batches whose padded cost (B x longest) fits `max_tokens`; the
    items at positions `starts` always open a new batch (shard boundaries: a shard's bytes then depend only on
    the shard, since CPU kernels round differently at other batch sizes)."""
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


def _loader(dataset: _Prepared, device: torch.device, num_workers: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        collate_fn=_as_prepared,
        pin_memory=device.type == "cuda" and not dataset.digest_only,
        prefetch_factor=16 if num_workers else None,
        multiprocessing_context="fork" if num_workers else None,
        worker_init_fn=functools.partial(_die_with_parent, os.getpid()) if num_workers else None,
    )


def input_digests(adapter: EmbeddingAdapter, rows: list[dict[str, Any]], num_workers: int, progress=None) -> np.ndarray:
    """(N, 32) uint8: each row's prepared-input digest, prepared by `num_workers` processes (nothing embedded).
    `progress(n)` is called per row."""
    out = np.zeros((len(rows), 32), dtype=np.uint8)
    for i, item in enumerate(_raise_errors(_loader(_Prepared(rows, adapter, True), torch.device("cpu"), num_workers))):
        out[i] = item[_DIGEST]
        if progress is not None:
            progress(1)
    return out


def fixed_shape(batch: list, n_tokens, max_tokens: int, max_batch: int) -> list:
    """A batch of same-size items (DNA windows) filled out with copies of its last item to the size every full
    batch of them has, min(max_batch, max_tokens // size): CPU kernels pick other code paths (and round
    differently) at other batch sizes, so an item's numbers would depend on how many items it was embedded
    with (a shard's last batch, the rows left to embed after `--reuse`). The copies' outputs are dropped.
    Batches of items of several sizes (proteins, transcripts) are left as they are."""
    sizes = {n_tokens(item) for item in batch}
    if len(sizes) != 1:
        return batch
    full = max(1, min(max_batch, max_tokens // sizes.pop()))
    return batch + [batch[-1]] * (full - len(batch)) if len(batch) < full else batch


def prepared_batches(
    adapter: EmbeddingAdapter,
    rows: list[dict[str, Any]],
    *,
    device: torch.device,
    max_tokens: int,
    max_batch: int,
    num_workers: int,
    starts: Collection[int] = (),
):
    """Yield batches of prepared items in row order: rows prepared by `num_workers` worker processes, grouped by
    the token budget, no batch spanning a position in `starts` and the row before it. Each item carries its
    input digest until `forward` takes it off."""
    loader = _loader(_Prepared(rows, adapter), device, num_workers)
    yield from batches_by_budget(_raise_errors(loader), adapter.n_tokens, max_tokens, max_batch, frozenset(starts))


def forward(call, batch: list[dict[str, Any]], n_tokens, max_tokens: int, max_batch: int):
    """`call(batch)` (an adapter's `embed`, or `embed_layers` for some layers) on a batch from `prepared_batches`,
    filled out to its fixed shape (`fixed_shape`) and cut back: (outputs, a tensor or a dict of them, each (b,
    ...); extras, with the items' digests as `item_sha256`)."""
    digests = np.stack([item.pop(_DIGEST) for item in batch])
    outputs, extras = call(fixed_shape(batch, n_tokens, max_tokens, max_batch))
    n = len(batch)
    if isinstance(outputs, dict):
        outputs = {k: v[:n] for k, v in outputs.items()}
    else:
        outputs = outputs[:n]
    return outputs, {**{k: np.asarray(v)[:n] for k, v in extras.items()}, ITEM_SHA256: digests}


def pooled(
    embedded: torch.Tensor, extras: dict[str, Any], max_positions: int | None
) -> tuple[torch.Tensor, dict[str, Any]]:
    """A batch's outputs pooled to `max_positions` (per-position outputs only), its mask with them."""
    if max_positions and embedded.ndim == 3:
        embedded, mask = pool_positions(embedded, extras.get("mask"), max_positions)
        if mask is not None:
            extras = {**extras, "mask": mask}
    return embedded, extras


def host_outputs(
    embedded: torch.Tensor, extras: dict[str, Any], ids: list[str], dtype: str, max_positions: int | None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A batch's outputs as the cache stores them: pooled to `max_positions`, in the storage `dtype` on the CPU."""
    embedded, extras = pooled(embedded, extras, max_positions)
    return to_host(embedded, dtype, ids), {k: np.asarray(v) for k, v in extras.items()}


def embed_stream(
    adapter: EmbeddingAdapter,
    rows: list[dict[str, Any]],
    *,
    device: torch.device,
    precision: str,
    max_tokens: int,
    max_batch: int,
    num_workers: int,
    dtype: str = "float32",
    starts: Collection[int] = (),
    max_positions: int | None = None,
    capture=None,
):
    """Yield (outputs (b, *item_shape) in the storage `dtype` on the CPU, extras each (b, ...)) batch by
    batch, in row order. `precision` is resolved (fp32 | bf16 | fp16, see `resolve_precision`); no batch
    spans a position in `starts` and the row before it. `capture(position of the batch's first row, outputs)`,
    if given, sees each batch's outputs before the cast to the storage dtype."""
    batches = prepared_batches(
        adapter,
        rows,
        device=device,
        max_tokens=max_tokens,
        max_batch=max_batch,
        num_workers=num_workers,
        starts=starts,
    )
    done = 0
    with torch.inference_mode(), autocast_for(device, precision):
        for batch in batches:
            embedded, extras = pooled(
                *forward(adapter.embed, batch, adapter.n_tokens, max_tokens, max_batch), max_positions
            )
            ids = [str(row["id"]) for row in rows[done : done + len(batch)]]
            if capture is not None:  # `capture(first position, outputs)` sees each batch before the storage cast
                capture(done, embedded)
            done += len(batch)
            yield to_host(embedded, dtype, ids), {k: np.asarray(v) for k, v in extras.items()}


def embed_rows(adapter: EmbeddingAdapter, rows: list[dict[str, Any]], **kwargs) -> tuple[np.ndarray, dict]:
    """All rows at once: (N, *item_shape) in the stream's `dtype` and the extras, each (N, ...)."""
    outputs, extras = [], {}
    for embedded, batch_extras in embed_stream(adapter, rows, **kwargs):
        outputs.append(embedded)
        for key, value in batch_extras.items():
            extras.setdefault(key, []).append(value)
    return np.concatenate(outputs), {k: np.concatenate(v) for k, v in extras.items()}
