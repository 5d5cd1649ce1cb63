"""The fidelity receipt: how far a cache's stored numbers are from the full-precision model.

Settings that silently change embeddings (autocast precision, storage dtype, bitround, pooling to fewer
positions, batch composition on other kernels) are common; a cache says how far they moved its numbers. Once
every shard is written, a seeded sample of the items (16 by default, `--fidelity-items`; drawn from those this
run embedded where there are enough, in a cache this run began: rows copied by `--reuse` are byte-identical to
what the run would compute, and the `reused` record beside them holds their source's receipt; from all rows of
a resumed cache, whose earlier rows another run wrote, or where few rows were embedded; `sampled_from` says which)
is embedded again on the same device in float32 with TF32 off, through the same adapter and pooling, and
compared with the rows as stored (decoded to float32). Where the run itself is that reference (float32 on the
CPU, not compiled) the stream's own float32 outputs of the sampled rows are kept instead of a second forward; a
compiled run's reference is the eager forward (`adapter.eager()`; Flashzoi's flash-attn, which runs in bf16 or
fp16 only, gives way to the same weights with plain attention there). Measured: per item the cosine similarity
and the relative L2 distance ||stored - fp32|| / ||fp32|| over the whole item (every position and feature; an
item whose stored or reference numbers are all zero, the other not, counts as cosine 0 and relative L2 1). The
manifest's `fidelity` records the worst and the median of each with the precision and storage dtype that caused
them; `dogmacache cache info` prints it and `cache publish` puts it on the
dataset card (`cache.manifest.describe_fidelity`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from dogmacache.cache import open_cache
from dogmacache.embed.adapters import EmbeddingAdapter


@contextlib.contextmanager
def full_fp32():
    """float32 matrix products and convolutions as written (no TF32 on CUDA) inside the block."""
    matmul, conv = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    precision = torch.get_float32_matmul_precision()
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, conv
        torch.set_float32_matmul_precision(precision)


RECEIPT_SEED = 0


def sample_rows(
    embedded: Sequence[int], n_rows: int, n_sample: int, resumed: bool = False, seed: int = RECEIPT_SEED
) -> tuple[np.ndarray, str]:
    """(the receipt's rows, sorted; what they were drawn from): `n_sample` distinct rows drawn with `seed` from the
    rows this run `embedded` when there are that many and the run began the cache (rows copied by `--reuse` have
    their source's receipt in the `reused` record), else from all `n_rows` rows of the table (a `resumed` cache
    holds rows another run wrote; a run with a few rows left still measures the cache it finishes)."""
    if len(embedded) >= n_sample and not resumed:
        candidates, drawn = np.asarray(embedded), f"rows embedded by this run ({len(embedded):,} of {n_rows:,})"
    else:
        candidates, drawn = np.arange(n_rows), f"all {n_rows:,} rows" + (" (a resumed cache)" if resumed else "")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(candidates, size=min(n_sample, len(candidates)), replace=False)), drawn


def deviation(stored: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Worst and median per-item cosine and relative L2 of `stored` against `reference`, both (k, ...)."""
    a = stored.reshape(len(stored), -1).astype(np.float64)
    b = reference.reshape(len(reference), -1).astype(np.float64)
    norm_a, norm_b = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both_zero, one_zero = (norm_a == 0) & (norm_b == 0), (norm_a == 0) != (norm_b == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        cosine = np.where(both_zero, 1.0, np.where(one_zero, 0.0, (a * b).sum(axis=1) / (norm_a * norm_b)))
        relative = np.where(both_zero, 0.0, np.where(one_zero, 1.0, np.linalg.norm(a - b, axis=1) / norm_b))
    return {
        "cosine_min": float(np.min(cosine)),
        "cosine_median": float(np.median(cosine)),
        "relative_l2_max": float(np.max(relative)),
        "relative_l2_median": float(np.median(relative)),
    }


class Capture:
    """The float32 outputs of the sampled rows, taken from the stream itself where its forward already is the
    reference (float32 on the CPU, where no TF32 exists): the receipt then runs no second forward for them."""

    def __init__(self, sample: np.ndarray, positions: dict[int, int], settings):
        self.sample = sample  # the receipt's rows (of the table)
        eager = settings.config.compile == "off"  # a compiled forward is no reference
        self.usable = settings.precision == "fp32" and settings.device.type == "cpu" and eager
        self.wanted = {positions[r]: int(r) for r in sample if r in positions} if self.usable else {}
        self.rows: dict[int, np.ndarray] = {}

    def __call__(self, positions: list[int], embedded: torch.Tensor) -> None:
        for i, position in enumerate(positions):
            row = self.wanted.get(position)
            if row is not None:
                self.rows[row] = embedded[i].float().cpu().numpy().copy()  # not a view holding the whole batch


def receipt(
    adapter: EmbeddingAdapter,
    rows: list[dict[str, Any]],
    path: str,
    *,
    settings,
    sample: np.ndarray,
    sampled_from: str = "",
    captured: dict[int, np.ndarray] | None = None,
) -> dict[str, Any]:
    """The receipt for the cache at `path` (all shards written) whose items are `rows`, over the `sample` rows;
    rows in `captured` already have their float32 outputs. {} for an empty sample."""
    if not len(sample):
        return {}
    from dogmacache.embed.stream import embed_rows

    config = settings.config
    captured = captured or {}
    todo = [int(r) for r in sample if int(r) not in captured]
    reference = dict(captured)
    if todo:
        with full_fp32(), adapter.eager():  # the library's own forward, never a compiled one
            computed, _ = embed_rows(
                adapter,
                [rows[i] for i in todo],
                **settings.stream_options(len(todo), precision="fp32", num_workers=0, dtype="float32"),
            )
        reference.update(zip(todo, computed, strict=True))
    stored = open_cache(path, allow_partial=True).read_rows(sample, dtype=np.float32)
    return {
        "items": len(sample),
        "seed": RECEIPT_SEED,
        "sampled_from": sampled_from,
        "reference": f"float32 forward, TF32 off, on {settings.device.type}",
        "precision": settings.precision,
        "dtype": config.dtype,
        "compression": config.compression,
        **deviation(stored, np.stack([reference[int(r)] for r in sample])),
    }
