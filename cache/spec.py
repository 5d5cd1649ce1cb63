"""What a cache holds, as one value: the manifest fields a writer is created with (`CacheWriter.create`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dogmacache.cache import layout
from dogmacache.cache.layout import ExtraArray


@dataclass(frozen=True)
class CacheSpec:
    """Everything about a cache but its ids: which numbers (model, layer, pooling, inputs) and how stored."""

    modality: str  # one of contracts.tables.MODALITIES
    model: str  # model id as loaded
    model_revision: str  # hub revision or "sha256:..." of the weights
    layer: int | str  # which layer's output (-1 = last)
    pooling: str  # "none" for (N, L, D) caches, else "mean", "cls", ...
    item_shape: tuple[int, ...]  # (L, D) or (D,)
    input_digest: str  # contracts.provenance.input_digest of the ordered ids and their inputs
    dtype: str = "float16"  # storage dtype: float16, float32 or bfloat16
    compression: str = "none"  # none, zstd or bitround
    shard_items: int | None = None  # items per shard file; None: about `shard_bytes` per shard
    shard_bytes: int = layout.DEFAULT_SHARD_BYTES
    extras: tuple[ExtraArray, ...] = ()  # per-item arrays beside `embeddings`
    config: dict[str, Any] = field(default_factory=dict)  # the resolved config that made the numbers

    def __post_init__(self) -> None:  # sequences as given by callers, stored as tuples (hashable, comparable)
        object.__setattr__(self, "item_shape", tuple(int(s) for s in self.item_shape))
        object.__setattr__(self, "extras", tuple(self.extras))
        object.__setattr__(self, "config", dict(self.config))
