"""Batches of fixed shapes, so that an item's numbers depend on the item alone.

CPU kernels (and GPU ones) take other code paths at other batch shapes and round differently: a tiny Enformer
window embedded alone differs from the same window in a batch of two by up to 1.2e-6, and an ESM-2 protein padded
to 76 tokens differs from the same protein padded to 46. Were batches cut in row order, a row's numbers would
depend on its neighbours: a shard's last batch, the rows left to embed after `--reuse`, a resumed shard. So:

- Items of one size (DNA windows; gene tokens) are batched in row order and a short batch is filled out with
  copies of its last item to the size every full batch has, min(max_batch, max_tokens // size).
- Items of many sizes (proteins, transcripts), where the adapter says how (`shape_bucket`, `filler`), are grouped
  within runs of rows by their length bucket (tokens rounded up to a multiple of
  BUCKET_TOKENS, capped at the model's limit); each batch holds one bucket and is padded to the bucket's length
  (the items carry it under PAD_TO, and the adapter pads its ids to it), so every item of a bucket is computed at
  the bucket's length. A bucket batch of one item gets a filler item of exactly the bucket's length beside it
  (`filler`): a batch of one takes another code path. Same-length buckets are computed together whatever their
  rows, which also spares most of the padding of row-order batches.
- Minus-strand windows under `--strand-policy rc-average` cost two forwards: they form their own bucket.

Since a filled-out batch of one size has one shape whichever rows it holds, such batches may also run past a
shard's end into the next shard (`stream.batches_by_budget`' `span`, which `run_embed` uses): the windows
`--reuse` or a resume leaves in many shards then fill whole batches, not one short batch per shard. Batches of
several sizes are cut exactly as without it, so no shard's bytes depend on the shard before it; bucketed rows
stay within their shard (a bucket's batch count changes with the rows it holds).

The fillers' and copies' outputs are dropped. `plan` says which rows of a run form each batch; `filled` builds
the batch the model sees.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

SEGMENT_ROWS = (256, 4096)  # rows of many sizes are bucketed within runs of this many rows, fewest to most
SEGMENT_BYTES = 1 << 29  # a run's outputs are held on the host until the run is done: about this much at most
BUCKET_TOKENS = 32  # bucket edges: token counts rounded up to a multiple of this
PAD_TO = "_pad_to"  # key of a bucket batch's items: the token length the adapter pads the batch to


def pad_length(batch: Sequence[dict[str, Any]]) -> int:
    """The token length the stream asks the batch to be padded to (0: the batch's longest)."""
    return max((int(item.get(PAD_TO, 0)) for item in batch), default=0)


def segment_rows(item_bytes: int) -> int:
    """Rows per run of bucketed rows: as many as hold SEGMENT_BYTES of outputs, within SEGMENT_ROWS. Longer runs
    fill the buckets' batches (proteins of human-proteome lengths fall into ~30 buckets: 256 rows make batches of
    ~8, too few for a GPU); pooled rows are small, per-position rows of a large model are megabytes."""
    low, high = SEGMENT_ROWS
    return max(low, min(high, SEGMENT_BYTES // max(item_bytes, 1)))


def per_batch(size: int, max_tokens: int, max_batch: int) -> int:
    """How many items of `size` tokens every full batch holds."""
    return max(1, min(max_batch, max_tokens // max(size, 1)))


def length_bucket(n_tokens: int, cap: int) -> int:
    """The bucket of an item of `n_tokens` tokens: rounded up to a multiple of BUCKET_TOKENS, at most `cap` (the
    model's length limit, which no item exceeds)."""
    return min(-(-n_tokens // BUCKET_TOKENS) * BUCKET_TOKENS, cap)


def plan(buckets: Sequence[int], max_tokens: int, max_batch: int) -> list[list[int]]:
    """The batches of one run of rows, as offsets into it: one bucket per batch, buckets in increasing length,
    rows in order inside each. (Rows of an adapter without buckets are batched in row order by
    `stream.batches_by_budget`.)"""
    groups: dict[int, list[int]] = defaultdict(list)
    for offset, bucket in enumerate(buckets):
        groups[bucket].append(offset)
    out = []
    for bucket in sorted(groups):
        size = per_batch(bucket, max_tokens, max_batch)
        rows = groups[bucket]
        out += [rows[i : i + size] for i in range(0, len(rows), size)]
    return out


def filled(
    batch: list[dict[str, Any]],
    n_tokens: Callable[[dict[str, Any]], int],
    max_tokens: int,
    max_batch: int,
    bucket: int | None = None,
    filler: Callable[[int], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """The batch the model sees. With a `bucket` (one of `plan`'s bucket batches): the items, each marked to be
    padded to `bucket` tokens (PAD_TO), and for an item alone a `filler` item of exactly `bucket` tokens beside it
    (a batch of one takes another path, as it does for Enformer windows). Its count is left as it is: filling it out
    would compute up to a full batch of copies for a bucket of a few proteins, and at a fixed length the count does
    not change an item's numbers (an ESM-2 protein padded to 64 tokens gives the same bits in batches of 2 to 33 on
    the CPU). Without a bucket: a batch of same-size items filled out with copies of its last item to the full batch
    size; a batch of several sizes as it is."""
    if bucket is not None and filler is not None:
        padded = [{**item, PAD_TO: bucket} for item in batch]
        return padded if len(padded) > 1 else [*padded, filler(bucket)]
    sizes = {n_tokens(item) for item in batch}
    if len(sizes) != 1:
        return batch
    full = per_batch(sizes.pop(), max_tokens, max_batch)
    return batch + [batch[-1]] * (full - len(batch)) if len(batch) < full else batch
