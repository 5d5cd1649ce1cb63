"""The embedding cache: one Zarr v3 group per (modality, model, layer/pooling, input set), self-describing
through its `dogmacache` manifest, written in whole shards, readable with plain `zarr`."""

from dogmacache.lazy import lazy_names

__all__, __getattr__ = lazy_names(
    globals(),
    {
        "fingerprint": ("FingerprintDifference", "first_fingerprint_difference"),
        "h5import": ("import_h5",),
        "layout": ("ExtraArray", "check_ids"),
        "manifest": ("MANIFEST_KEY", "SCHEMA_VERSION", "Manifest", "digest_strings"),
        "reader": ("EmbeddingCache", "open_cache"),
        "spec": ("CacheSpec",),
        "verify": ("VerifyReport", "verify_cache"),
        "writer": ("CacheWriter",),
    },
)
