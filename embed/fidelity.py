"""The fidelity receipt: how far a cache's stored numbers are from the full-precision model.

Settings that silently change embeddings (autocast precision, storage dtype, bitround, pooling to fewer
positions, batch composition on other kernels) are common; a cache says how far they moved its numbers. Once
every shard is written, a seeded sample of items (16 by default, `--fidelity-items`) is embedded again on the
same device in float32 with TF32 off, through the same adapter and pooling, and compared with the rows as
stored (decoded to float32): per item the cosine similarity and the relative L2 distance
||stored - fp32|| / ||fp32|| over the whole item (every position and feature). The manifest's `fidelity`
records the worst and the median of each with the precision and storage dtype that caused them;
`dogmacache cache info` prints it and `cache publish` puts it on the dataset card
(`cache.manifest.describe_fidelity`).
"""

from __future__ import annotations

import contextlib
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


def sample_rows(n_items: int, n_sample: int, seed: int) -> np.ndarray:
    """The receipt's rows: `n_sample` distinct rows drawn with `seed`, sorted."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_items, size=min(n_sample, n_items), replace=False))


def deviation(stored: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Worst and median per-item cosine and relative L2 of `stored` against `reference`, both (k, ...)."""
    a = stored.reshape(len(stored), -1).astype(np.float64)
    b = reference.reshape(len(reference), -1).astype(np.float64)
    norm_a, norm_b = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both_zero = (norm_a == 0) & (norm_b == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        cosine = np.where(both_zero, 1.0, (a * b).sum(axis=1) / (norm_a * norm_b))
        relative = np.where(both_zero, 0.0, np.linalg.norm(a - b, axis=1) / norm_b)
    return {
        "cosine_min": float(np.min(cosine)),
        "cosine_median": float(np.median(cosine)),
        "relative_l2_max": float(np.max(relative)),
        "relative_l2_median": float(np.median(relative)),
    }


def receipt(
    adapter: EmbeddingAdapter,
    rows: list[dict[str, Any]],
    path: str,
    *,
    settings,
    n_sample: int,
    seed: int = 0,
) -> dict[str, Any]:
    """The receipt for the cache at `path` (all shards written), whose items are `rows`; {} when n_sample is 0."""
    if n_sample <= 0:
        return {}
    from dogmacache.embed.stream import embed_rows

    config = settings.config
    picked = sample_rows(len(rows), n_sample, seed)
    with full_fp32():
        reference, _ = embed_rows(
            adapter,
            [rows[i] for i in picked],
            device=settings.device,
            precision="fp32",
            max_tokens=settings.max_tokens,
            max_batch=config.max_batch,
            num_workers=0,
            dtype="float32",
            max_positions=config.max_positions,
        )
    stored = open_cache(path, allow_partial=True).read_rows(picked, dtype=np.float32)
    return {
        "items": len(picked),
        "seed": seed,
        "reference": f"float32 forward, TF32 off, on {settings.device.type}",
        "precision": settings.precision,
        "dtype": config.dtype,
        "compression": config.compression,
        **deviation(stored, reference),
    }
