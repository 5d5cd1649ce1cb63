"""Sequence-only control features (`--model kmer`): no foundation model, no weights, the same cache layout as the
model each stands in for, so any task trains on them and every result can stand beside plain sequence features.

- dna (as Enformer): k-mer frequencies per output bin, `n_bins` bins of `bin_bp` bp centred on the window centre
  (`contracts/windows.py`; by default Enformer's 896 bins of 128 bp, the central 114,688 bp of its 196,608 bp
  input), item (n_bins, 4**k) in reference bin order. Only the bins are read: positions past a chromosome end
  are N, counted per item in `n_padded`.
- rna (cDNA sequences, as the Nucleotide Transformer reads them; U is T): k-mer frequencies over each whole
  sequence, (4**k,). Pooled only.
- protein (as ESM-2): amino-acid composition (20) then dipeptide composition (400), (420,) over the whole
  sequence; or, with pooling none, one-hot residues (max_length, 20) with ESM-2's rows (row 0 and the row after
  the last residue are its <cls> and <eos>: zero, masked out), so row i is the same residue in both caches.

Counting: a k-mer belongs to a bin when all its bases lie inside the bin (bin_bp - k + 1 per bin); a k-mer with
an N (or a residue pair with a letter outside the 20 standard ones) is skipped; frequencies are counts divided by
the counted k-mers of the bin or sequence (all zeros when none). Columns are k-mers in base-4 order over A, C, G,
T (AA..A first); `canonical` folds each k-mer with its reverse complement into the column of the first of the two
in that order. Strand policy rc-average (dna): the mean of a window's frequencies and its reverse complement's,
bins in reference order; with canonical k-mers both are the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from dogmacache.cache.layout import ExtraArray
from dogmacache.contracts.provenance import KMER_MODEL
from dogmacache.contracts.windows import WindowGeometry
from dogmacache.embed.adapters.base import STRAND_POLICY_FLAG, AdapterOptions, EmbeddingAdapter, ModelInfo
from dogmacache.embed.adapters.hf_esm import ESM2_MAX_TOKENS, POOLING_FLAG, EsmOptions, clean_protein
from dogmacache.embed.genome import check_dna
from dogmacache.errors import InputError

REVISION = "1"  # version of the feature definitions above; changed whenever a number would change
MAX_K = 8  # 65,536 columns
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"  # the 20 standard residues, the column order
_BASE = np.full(256, 4, dtype=np.uint8)  # A, C, G, T -> 0..3; anything else (N) -> 4
for _i, _b in enumerate("ACGT"):
    _BASE[ord(_b)] = _i
_RESIDUE = np.full(256, 20, dtype=np.uint8)  # the 20 standard residues -> 0..19; X, B, Z, U, O -> 20
for _i, _b in enumerate(AMINO_ACIDS):
    _RESIDUE[ord(_b)] = _i

K_FLAG = {"flags": ("--kmer-k",), "type": int, "help": "kmer: k-mer length (dna default 3, rna 4; 4**k columns)"}
CANONICAL_FLAG = {
    "flags": ("--kmer-canonical",),
    "action": "store_true",
    "help": "kmer: fold each k-mer with its reverse complement into one column",
}


def kmer_index(codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Base codes (..., n) in 0..4 (4 = N) -> the k-mer starting at each position, (..., n - k + 1) int64 in
    0..4**k - 1 (base 4, first base most significant), and (..., n - k + 1) bool: it holds no N."""
    n = codes.shape[-1] - k + 1
    index = np.zeros((*codes.shape[:-1], max(n, 0)), dtype=np.int64)
    valid = np.ones(index.shape, dtype=bool)
    for i in range(k):
        part = codes[..., i : i + n]
        index = index * 4 + np.minimum(part, 3)
        valid &= part < 4
    return index, valid


def reverse_complement_index(k: int) -> np.ndarray:
    """(4**k,) the index of each k-mer's reverse complement."""
    weights = 4 ** np.arange(k - 1, -1, -1)
    digits = (np.arange(4**k)[:, None] // weights) % 4  # (4**k, k), first base first
    return ((3 - digits[:, ::-1]) * weights).sum(1)


def kmer_columns(k: int, canonical: bool) -> tuple[np.ndarray, int]:
    """(4**k,) the column of each k-mer, and the number of columns."""
    index = np.arange(4**k)
    if not canonical:
        return index, 4**k
    folded = np.minimum(index, reverse_complement_index(k))
    kept, columns = np.unique(folded, return_inverse=True)
    return columns, len(kept)


def frequencies(index: np.ndarray, valid: np.ndarray, columns: np.ndarray, n_columns: int) -> np.ndarray:
    """k-mer indices (R, n) with their validity -> (R, n_columns) float32 frequencies per row (zeros for a row
    with no valid k-mer)."""
    rows = np.broadcast_to(np.arange(index.shape[0])[:, None], index.shape)
    flat = rows[valid] * n_columns + columns[index[valid]]
    counts = np.bincount(flat, minlength=index.shape[0] * n_columns).reshape(index.shape[0], n_columns)
    return (counts / np.maximum(counts.sum(1, keepdims=True), 1)).astype(np.float32)


def dna_bin_frequencies(seq: str, geometry: WindowGeometry, k: int, canonical: bool, rc_average: bool) -> np.ndarray:
    """(n_bins, columns) k-mer frequencies of the bins of `seq` (exactly `geometry.span_bp` bases, reference
    strand); `rc_average` averages them with the reverse complement's (bins in reference order)."""
    codes = _BASE[np.frombuffer(seq.encode(), dtype=np.uint8)].reshape(geometry.n_bins, geometry.bin_bp)
    columns, n_columns = kmer_columns(k, canonical)
    out = frequencies(*kmer_index(codes, k), columns, n_columns)
    if rc_average and not canonical:  # a bin's reverse complement holds the reverse complements of its k-mers
        out = (out + out[:, reverse_complement_index(k)]) / 2
    return out


def protein_composition(seq: str) -> np.ndarray:
    """(420,) float32: amino-acid composition over the standard residues (20), then dipeptide composition over
    the pairs of standard residues (400, first residue major)."""
    codes = _RESIDUE[np.frombuffer(seq.encode(), dtype=np.uint8)].astype(np.int64)
    single = np.bincount(codes[codes < 20], minlength=21)[:20]
    pairs = codes[:-1] * 20 + codes[1:]
    pairs = pairs[(codes[:-1] < 20) & (codes[1:] < 20)]
    double = np.bincount(pairs, minlength=400)
    return np.concatenate([single / max(single.sum(), 1), double / max(double.sum(), 1)]).astype(np.float32)


@dataclass(frozen=True)
class KmerDnaOptions(AdapterOptions):
    k: int = 3  # k-mer length: 4**k columns (3: 64 columns over the 126 k-mers of a 128 bp bin)
    canonical: bool = False  # fold each k-mer with its reverse complement
    n_bins: int = 896  # bins per window (Enformer's output); match the DNA model this cache stands beside
    bin_bp: int = 128  # bp per bin (Enformer's)
    strand_policy: str = "forward"  # minus-strand items: forward (reference strand) | rc-average

    flags: ClassVar[dict[str, dict[str, Any]]] = {
        "k": K_FLAG,
        "canonical": CANONICAL_FLAG,
        "n_bins": {"flags": ("--kmer-bins",), "type": int, "help": "kmer dna: bins per window (default 896)"},
        "bin_bp": {"flags": ("--kmer-bin-bp",), "type": int, "help": "kmer dna: bp per bin (default 128)"},
        "strand_policy": STRAND_POLICY_FLAG,
    }

    def __post_init__(self):
        _check_k(self.k)
        WindowGeometry(self.n_bins, self.bin_bp)  # checks both
        if self.k > self.bin_bp:
            raise InputError(f"--kmer-k {self.k} is longer than a bin (--kmer-bin-bp {self.bin_bp}); use a smaller k")
        self._check_choice("strand_policy", ("forward", "rc-average"))


@dataclass(frozen=True)
class KmerRnaOptions(AdapterOptions):
    k: int = 4  # k-mer length: 4**k columns
    canonical: bool = False  # fold each k-mer with its reverse complement (a cDNA has one strand: off by default)
    pooling: str = "mean"  # frequencies over the whole sequence; nothing per position

    flags: ClassVar[dict[str, dict[str, Any]]] = {"k": K_FLAG, "canonical": CANONICAL_FLAG, "pooling": POOLING_FLAG}

    def __post_init__(self):
        _check_k(self.k)
        if self.pooling != "mean":
            raise InputError(
                f"--pooling {self.pooling} is not available for --model kmer --modality rna: it gives k-mer "
                "frequencies over each whole sequence only, nothing per position; use --pooling mean"
            )


@dataclass(frozen=True)
class KmerProteinOptions(AdapterOptions):
    pooling: str = "mean"  # mean: composition (420,) | none: one-hot residues (max_length, 20) with a mask
    max_length: int = ESM2_MAX_TOKENS  # pooling none: rows per item, ESM-2's (<cls> + residues + <eos>)

    flags: ClassVar[dict[str, dict[str, Any]]] = {
        "pooling": POOLING_FLAG,
        "max_length": EsmOptions.flags["max_length"],
    }

    def __post_init__(self):
        self._check_choice("pooling", ("mean", "none"))
        if self.max_length < 3:
            raise InputError(f"--max-length {self.max_length} leaves no residue (2 rows are <cls> and <eos>); use 3+")


def _check_k(k: int) -> None:
    if not 1 <= k <= MAX_K:
        raise InputError(f"--kmer-k {k} is outside 1..{MAX_K} (4**k columns); pick one in that range")


class _KmerFeatures(EmbeddingAdapter):
    """Features computed on the CPU in `prepare` (input workers); `embed` only stacks them."""

    reads_weights = False

    def __init__(
        self,
        model_path: str | None,
        options: AdapterOptions,
        device: torch.device,
        revision: str | None = None,
        random_init: int | None = None,
    ):
        given = {"--model-path": model_path, "--revision": revision, "--random-init": random_init}
        for flag, value in given.items():
            if value is not None:
                raise InputError(f"--model kmer reads no model and draws no weights; drop {flag} {value}")
        self.options = options

    def info(self) -> ModelInfo:
        return ModelInfo(model=KMER_MODEL, model_revision=REVISION, **self.describe())

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError

    def default_max_tokens(self, device: torch.device) -> int:
        return 1 << 20  # nothing runs on the device: batches are --max-batch items

    def n_tokens(self, prepared: dict[str, np.ndarray]) -> int:
        return 1

    def embed(self, batch: list[dict[str, np.ndarray]]) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
        out = torch.from_numpy(np.stack([item["features"] for item in batch]))
        extras = {k: np.stack([item[k] for item in batch]) for k in batch[0] if k != "features"}
        return out, extras


def _columns_fact(k: int, canonical: bool) -> str:
    order = f"{k}-mers over ACGT in base-4 order"
    return f"{order}, each folded with its reverse complement (the first of the two kept)" if canonical else order


class KmerDnaAdapter(_KmerFeatures):
    options_class = KmerDnaOptions
    options: KmerDnaOptions

    def __init__(self, model_path, options: KmerDnaOptions, device, revision=None, random_init=None):
        super().__init__(model_path, options, device, revision, random_init)
        self.geometry = WindowGeometry(options.n_bins, options.bin_bp)
        self.n_columns = kmer_columns(options.k, options.canonical)[1]

    def describe(self) -> dict[str, Any]:
        o = self.options
        return {
            "layer": "kmer_frequencies",
            "pooling": "none",
            "item_shape": (o.n_bins, self.n_columns),
            "extras": (ExtraArray("n_padded", "int32"),),
            "config": {
                "bin_bp": o.bin_bp,
                "output_span_bp": self.geometry.span_bp,
                "features": f"frequencies per bin of the {_columns_fact(o.k, o.canonical)} wholly inside the bin; "
                "k-mers with N skipped",
            },
        }

    def prepare(self, row: dict[str, Any]) -> dict[str, np.ndarray]:
        seq, n_padded = row["_genome"].window(str(row["chrom"]), int(row["center"]), self.geometry.span_bp)
        check_dna(seq, row["id"])
        o = self.options
        minus = o.strand_policy == "rc-average" and str(row.get("strand", "+")) == "-"
        features = dna_bin_frequencies(seq, self.geometry, o.k, o.canonical, rc_average=minus)
        return {"features": features, "n_padded": np.int32(n_padded)}


class KmerRnaAdapter(_KmerFeatures):
    options_class = KmerRnaOptions
    options: KmerRnaOptions

    def __init__(self, model_path, options: KmerRnaOptions, device, revision=None, random_init=None):
        super().__init__(model_path, options, device, revision, random_init)
        self.columns, self.n_columns = kmer_columns(options.k, options.canonical)

    def describe(self) -> dict[str, Any]:
        o = self.options
        features = f"frequencies of the {_columns_fact(o.k, o.canonical)} over the whole sequence (U read as T); "
        return {
            "layer": "kmer_frequencies",
            "pooling": "mean",
            "item_shape": (self.n_columns,),
            "config": {"features": features + "k-mers with N skipped"},
        }

    def prepare(self, row: dict[str, Any]) -> dict[str, np.ndarray]:
        seq = str(row["sequence"]).strip().upper().replace("U", "T")
        if not seq:  # blank: a row of zeros, which no other adapter would write for it
            raise InputError(f"item {row['id']!r} has an empty sequence; drop it in the recipe")
        check_dna(seq, row["id"])
        codes = _BASE[np.frombuffer(seq.encode(), dtype=np.uint8)][None]
        return {"features": frequencies(*kmer_index(codes, self.options.k), self.columns, self.n_columns)[0]}


class KmerProteinAdapter(_KmerFeatures):
    options_class = KmerProteinOptions
    options: KmerProteinOptions

    def describe(self) -> dict[str, Any]:
        if self.options.pooling == "mean":
            return {
                "layer": "composition",
                "pooling": "mean",
                "item_shape": (20 + 400,),
                "config": {
                    "features": f"amino-acid composition ({AMINO_ACIDS}) then dipeptide composition (first residue "
                    "major) over the whole sequence; other letters and pairs with them skipped"
                },
            }
        length = self.options.max_length
        return {
            "layer": "one_hot",
            "pooling": "none",
            "item_shape": (length, 20),
            "extras": (ExtraArray("n_truncated", "int32"), ExtraArray("mask", "bool", (length,))),
            "config": {
                "features": f"one-hot residues ({AMINO_ACIDS}; other letters all zero) at ESM-2's rows: row 0 and "
                "the row after the last residue empty",
                "truncation": f"first {length - 2} residues",
            },
        }

    def prepare(self, row: dict[str, Any]) -> dict[str, np.ndarray]:
        seq = clean_protein(row)
        if self.options.pooling == "mean":
            return {"features": protein_composition(seq)}
        length = self.options.max_length
        kept = seq[: length - 2]
        codes = _RESIDUE[np.frombuffer(kept.encode(), dtype=np.uint8)]
        features = np.zeros((length, 21), dtype=np.float32)
        features[1 + np.arange(len(kept)), codes] = 1.0
        mask = np.zeros(length, dtype=bool)
        mask[1 : 1 + len(kept)] = True
        return {"features": features[:, :20], "n_truncated": np.int32(len(seq) - len(kept)), "mask": mask}
