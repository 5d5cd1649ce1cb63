"""The embedding cache: one Zarr v3 group per (modality, model, layer/pooling, input set), self-describing
through its `dogmacache` manifest, written in whole shards, readable with plain `zarr`."""

from dogmacache.cache.fingerprint import FingerprintDifference, first_fingerprint_difference
from dogmacache.cache.h5import import import_h5
from dogmacache.cache.layout import ExtraArray, check_ids
from dogmacache.cache.manifest import MANIFEST_KEY, SCHEMA_VERSION, Manifest, digest_strings
from dogmacache.cache.reader import EmbeddingCache, open_cache
from dogmacache.cache.spec import CacheSpec
from dogmacache.cache.verify import VerifyReport, verify_cache
from dogmacache.cache.writer import CacheWriter

__all__ = [
    "MANIFEST_KEY",
    "SCHEMA_VERSION",
    "CacheSpec",
    "CacheWriter",
    "EmbeddingCache",
    "ExtraArray",
    "FingerprintDifference",
    "Manifest",
    "VerifyReport",
    "check_ids",
    "digest_strings",
    "first_fingerprint_difference",
    "import_h5",
    "open_cache",
    "verify_cache",
]
