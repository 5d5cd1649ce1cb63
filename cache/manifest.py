"""The cache manifest: the root attribute `dogmacache` that makes a Zarr group self-describing.

A cache is one Zarr v3 group for one (modality, model, layer/pooling, input set). Its manifest names all
that changes the numbers and is written first with `complete=False`, then rewritten last, once every
shard is on disk and checksummed, with `complete=True`. A group whose manifest is not complete is an
unfinished write by definition.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import MISSING, dataclass, field
from datetime import UTC, datetime
from typing import Any

from dogmacache.contracts.provenance import digest_strings, package_versions
from dogmacache.contracts.tables import MODALITIES
from dogmacache.errors import CacheError

__all__ = ["MANIFEST_KEY", "SCHEMA_VERSION", "Manifest", "describe_fidelity", "digest_strings", "package_versions"]

SCHEMA_VERSION = 1
MANIFEST_KEY = "dogmacache"  # root attribute name
STORAGE_DTYPES = ("float16", "float32", "bfloat16")
COMPRESSIONS = ("none", "zstd", "bitround")


# (field, the JSON types it may hold, in words): a manifest read back is checked against them, so that a damaged one
# is one line naming the field, not a TypeError deep in a reader
_FIELD_TYPES = (
    ("modality", (str,), "a text"),
    ("model", (str,), "a text"),
    ("model_revision", (str,), "a text"),
    ("layer", (int, str), "a layer number or name"),
    ("pooling", (str,), "a text"),
    ("dtype", (str,), "a text"),
    ("n_items", (int,), "a whole number"),
    ("item_shape", (list, tuple), "a list of sizes"),
    ("shard_items", (int,), "a whole number"),
    ("input_digest", (str,), "a text"),
    ("compression", (str,), "a text"),
    ("extra_arrays", (list, tuple), "a list of names"),
    ("ids_digest", (str,), "a text"),
    ("config", (dict,), "a mapping"),
    ("complete", (bool,), "true or false"),
    ("shards", (list, tuple), "a list of checksums"),
    ("fidelity", (dict,), "a mapping"),
    ("reused", (list, tuple), "a list"),
)


def _wrong_type(data: dict[str, Any]) -> str:
    """The first field of a manifest's values whose type is not one `_FIELD_TYPES` allows, said in words ("" when
    all fit): checked when a manifest is made (a writer's arguments) and when one is read back."""
    for name, kinds, what in _FIELD_TYPES:
        value = data.get(name)
        if name in data and not (isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)):
            return f"field {name!r} holds {value!r}, not {what}"
    for name, what in (("item_shape", "whole numbers"), ("shards", "texts"), ("extra_arrays", "texts")):
        kind = int if what == "whole numbers" else str
        if any(not isinstance(v, kind) or isinstance(v, bool) for v in data.get(name) or ()):
            return f"field {name!r} holds {data[name]!r}, not a list of {what}"
    return ""


@dataclass(frozen=True)
class Manifest:
    """Everything a reader needs to trust and interpret a cache. Stored as the root attribute `dogmacache`."""

    modality: str  # one of MODALITIES
    model: str  # model id as loaded, e.g. "EleutherAI/enformer-official-rough" or a local directory name
    model_revision: str  # hub revision or "sha256:..." of the weights file
    layer: int | str  # which layer's output (-1 = last); a name where layers are not numbered
    pooling: str  # "none" for per-position (N, L, D) caches, else "mean", "cls", "center", ...
    dtype: str  # storage dtype of `embeddings`: one of STORAGE_DTYPES
    n_items: int
    item_shape: tuple[int, ...]  # (L, D) or (D,)
    shard_items: int  # items per shard file; shard i holds rows [i*shard_items, (i+1)*shard_items)
    input_digest: str  # digest of the ordered ids and their inputs: two caches join only if their inputs agree
    compression: str = "none"  # one of COMPRESSIONS
    extra_arrays: tuple[str, ...] = ()  # per-item arrays beside `embeddings` (e.g. "n_padded", "mask")
    ids_digest: str = ""  # digest_strings(ids), checked by `verify`
    config: dict[str, Any] = field(default_factory=dict)  # the resolved embed/import config
    created_by: dict[str, str] = field(default_factory=package_versions)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    complete: bool = False
    shards: tuple[str, ...] = ()  # per-shard checksums (sha256 of the decoded rows), set when complete
    # Set when complete, outside the content the cache is matched on (`same_content_as`):
    fidelity: dict[str, Any] = field(default_factory=dict)  # stored numbers vs an fp32 forward on a sample
    reused: tuple[dict[str, Any], ...] = ()  # rows copied from earlier caches: {name, shards_digest, rows}
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        problem = _wrong_type({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        if problem:  # what a reader would refuse, refused before anything is written
            raise CacheError(f"manifest {problem}; pass values of those types")
        if self.modality not in MODALITIES:
            raise CacheError(f"modality {self.modality!r} is not one of {', '.join(MODALITIES)}; pick one of those")
        if self.dtype not in STORAGE_DTYPES:
            raise CacheError(f"dtype {self.dtype!r} is not one of {', '.join(STORAGE_DTYPES)}; pick one of those")
        if self.compression not in COMPRESSIONS:
            raise CacheError(
                f"compression {self.compression!r} is not one of {', '.join(COMPRESSIONS)}; pick one of those"
            )
        if self.n_items < 1:
            raise CacheError(f"a cache needs at least one item, got n_items={self.n_items}")
        if not self.item_shape or any(int(s) < 1 for s in self.item_shape):
            raise CacheError(f"item_shape {self.item_shape} must be (D,) or (L, D) with positive sizes")
        if self.shard_items < 1:
            raise CacheError(f"shard_items must be >= 1, got {self.shard_items}")

    @property
    def n_shards(self) -> int:
        return -(-self.n_items // self.shard_items)

    def shard_rows(self, shard: int) -> tuple[int, int]:
        """Row range [start, stop) of one shard."""
        if not 0 <= shard < self.n_shards:
            raise CacheError(f"shard {shard} does not exist; this cache has shards 0..{self.n_shards - 1}")
        start = shard * self.shard_items
        return start, min(start + self.shard_items, self.n_items)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["item_shape"] = list(self.item_shape)
        out["extra_arrays"] = list(self.extra_arrays)
        out["shards"] = list(self.shards)
        out["reused"] = [dict(r) for r in self.reused]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "cache") -> Manifest:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise CacheError(
                f"{where} has manifest schema_version {version!r}, this dogmacache reads {SCHEMA_VERSION}; "
                "upgrade dogmacache or re-create the cache"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise CacheError(f"{where} manifest has unknown keys {unknown}; it was written by another dogmacache")
        required = [f.name for f in dataclasses.fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        absent = [name for name in required if name not in data]
        if absent:
            raise CacheError(
                f"{where} manifest lacks keys {absent}; it is damaged or was not written by dogmacache: copy or pull "
                "the cache again, or re-create it"
            )
        problem = _wrong_type(data)
        if problem:
            raise CacheError(
                f"{where} manifest {problem}; the manifest is damaged or was not written by dogmacache: copy or pull "
                "the cache again, or re-create it"
            )
        values = dict(data)
        values["item_shape"] = tuple(int(s) for s in data["item_shape"])
        values["extra_arrays"] = tuple(data.get("extra_arrays", ()))
        values["shards"] = tuple(data.get("shards", ()))
        values["reused"] = tuple(dict(r) for r in data.get("reused", ()))
        return cls(**values)

    def same_content_as(self, other: Manifest) -> list[str]:
        """Fields that make `other` describe different numbers than `self` (empty when a resume is safe)."""
        keys = (
            "modality",
            "model",
            "model_revision",
            "layer",
            "pooling",
            "dtype",
            "n_items",
            "item_shape",
            "shard_items",
            "input_digest",
            "compression",
            "extra_arrays",
            "ids_digest",
        )
        return [k for k in keys if getattr(self, k) != getattr(other, k)]


def manifest_mapping(value: Any, where: str) -> dict[str, Any]:
    """The group attribute that holds a manifest, as a mapping; one line where it is something else."""
    if not isinstance(value, dict):
        raise CacheError(
            f"{where} manifest is {type(value).__name__} {str(value)[:40]!r}, not a mapping; the cache's metadata is "
            "damaged: copy or pull the cache again, or re-create it"
        )
    return dict(value)


def config_differences(mine: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """Keys whose values differ between two manifest configs, compared as the manifest stores them (JSON: a
    tuple equals the list it is stored as); a key absent from one counts as None there."""
    mine, theirs = _as_stored(mine), _as_stored(theirs)
    return [k for k in dict.fromkeys([*mine, *theirs]) if mine.get(k) != theirs.get(k)]


def _as_stored(config: dict[str, Any]) -> dict[str, Any]:
    """`config` as it reads back from the manifest's JSON (tuples as lists, numpy scalars as numbers)."""
    return json.loads(json.dumps(config, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


FIDELITY_NUMBERS = ("items", "cosine_min", "cosine_median", "relative_l2_max", "relative_l2_median")


def cosine_floor(value: float) -> str:
    """A lower bound on a cosine, to 8 decimals: rounded down, so that "cosine >= x" holds (rounding to the
    nearest printed 0.9999999980 as 1.00000000)."""
    return f"{math.floor(value * 1e8) / 1e8:.8f}"


def ceiling_2e(value: float) -> str:
    """An upper bound in the form 1.23e-04: rounded up, so that "<= x" holds."""
    if value <= 0 or not math.isfinite(value):
        return f"{value:.2e}"
    exponent = math.floor(math.log10(value))
    mantissa = math.ceil(value / 10**exponent * 100 - 1e-9) / 100
    return f"{mantissa * 10**exponent:.2e}"


def _finite_number(value: Any) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond float's range
        return False


def describe_fidelity(fidelity: dict[str, Any], complete: bool = True) -> str:
    """The manifest's fidelity receipt (`embed/fidelity.py`) in one line, for `cache info` and the dataset card;
    `complete` False: the cache is unfinished, and a receipt comes with its last shard. The bounds are rounded
    outward (`cosine_floor`, `ceiling_2e`); a receipt lacking a number says so."""
    if not fidelity:
        if not complete:
            return "not yet measured (the cache is unfinished; the receipt is taken once every shard is written)"
        return "not measured (written before receipts, imported, or --fidelity-items 0)"
    bad = [k for k in FIDELITY_NUMBERS if not _finite_number(fidelity.get(k))]
    if bad:
        return f"malformed receipt (no finite number for {', '.join(bad)}): the manifest was edited or damaged"
    drawn = f", drawn from {fidelity['sampled_from']}" if fidelity.get("sampled_from") else ""
    return (
        f"{fidelity['items']} items{drawn} vs a {fidelity.get('reference', '?')}: cosine >= "
        f"{cosine_floor(fidelity['cosine_min'])} (median {fidelity['cosine_median']:.8f}), relative L2 <= "
        f"{ceiling_2e(fidelity['relative_l2_max'])} (median {fidelity['relative_l2_median']:.2e}); "
        f"{fidelity.get('precision', '?')} forward, {fidelity.get('dtype', '?')} storage, "
        f"{fidelity.get('compression', 'none')} compression"
    )


def describe_reused(reused: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> list[str]:
    """One line per source of rows copied by `--reuse`: how many rows, from which cache (its name and shards
    digest), and that cache's own fidelity receipt, which those rows keep."""
    lines = []
    for r in reused:
        if not isinstance(r, dict) or not isinstance(r.get("rows"), int) or "name" not in r:
            lines.append(f"malformed record of reused rows ({str(r)[:60]}): the manifest was edited or damaged")
            continue
        fidelity = r.get("fidelity") if isinstance(r.get("fidelity"), dict) else {}
        lines.append(
            f"{r['rows']:,} rows from {r['name']} ({r.get('shards_digest', '?')}); its fidelity: "
            + describe_fidelity(fidelity)
        )
    return lines
