"""Cache fingerprints compare in one place: the first differing key, `url` never compared."""

from dogmacache.cache import FingerprintDifference, first_fingerprint_difference

DNA = {"url": "out/dna.zarr", "model": "enformer", "input_digest": "sha256:aa", "ids_digest": "sha256:ii"}
RNA = {"url": "out/rna.zarr", "model": "nt", "input_digest": "sha256:bb"}


def test_equal_fingerprints_wherever_the_caches_lie():
    moved = {"dna": {**DNA, "url": "elsewhere/dna.zarr"}, "rna": dict(RNA)}
    assert first_fingerprint_difference({"dna": DNA, "rna": RNA}, moved) is None


def test_the_first_difference_in_name_then_key_order_is_described():
    now = {"dna": {**DNA, "input_digest": "sha256:cc", "url": "new/dna.zarr"}, "rna": {**RNA, "model": "esm"}}
    difference = first_fingerprint_difference({"dna": DNA, "rna": RNA}, now)
    assert difference == FingerprintDifference("dna", "input_digest", "sha256:aa", "sha256:cc", "new/dna.zarr")
    assert difference.describe() == "a dna cache with input_digest 'sha256:aa' but new/dna.zarr has 'sha256:cc'"


def test_a_cache_or_key_on_one_side_only_differs():
    missing = first_fingerprint_difference({"dna": DNA, "rna": RNA}, {"dna": DNA})
    assert (missing.name, missing.key, missing.current, missing.url) == ("rna", "input_digest", None, "rna")
    extra = first_fingerprint_difference({"dna": DNA}, {"dna": {**DNA, "shards_digest": "sha256:ss"}})
    assert (extra.key, extra.recorded, extra.current) == ("shards_digest", None, "sha256:ss")
