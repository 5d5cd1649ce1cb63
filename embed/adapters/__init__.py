"""Foundation-model adapters, one file each; importing this package registers them all."""

from dogmacache.embed.adapters import enformer, hf_esm, scgpt  # noqa: F401 - registers the adapters
from dogmacache.embed.adapters.base import (
    ADAPTERS,
    EmbeddingAdapter,
    ModelError,
    ModelInfo,
    get_adapter,
    register,
)

__all__ = ["ADAPTERS", "EmbeddingAdapter", "ModelError", "ModelInfo", "get_adapter", "register"]
