"""Shared fixtures: small caches written through the real writer."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from dogmacache.cache import CacheWriter, ExtraArray, digest_strings

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))  # for the writer-process helper module


def write_cache(path, data: np.ndarray, ids=None, shard_items=3, extras=None, **kwargs):
    """Write `data` (N, ...) into a complete cache and return the final manifest."""
    ids = ids if ids is not None else [f"id{i}" for i in range(len(data))]
    extra_specs = [ExtraArray(name, str(v.dtype), v.shape[1:]) for name, v in (extras or {}).items()]
    writer = CacheWriter.create(
        path, ids=ids, modality=kwargs.pop("modality", "dna"), model="test/model", model_revision="r1",
        layer=-1, pooling=kwargs.pop("pooling", "none" if data.ndim == 3 else "mean"),
        item_shape=data.shape[1:], input_digest=digest_strings(ids), shard_items=shard_items,
        extras=extra_specs, **kwargs,
    )  # fmt: skip
    for shard in writer.pending_shards():
        a, b = writer.manifest.shard_rows(shard)
        writer.write_shard(shard, data[a:b], **{k: v[a:b] for k, v in (extras or {}).items()})
    return writer.finalize()


@pytest.fixture
def rng():
    return np.random.default_rng(0)
