"""`--model kmer`: sequence-only control features with no model. Counts checked by hand on made-up sequences (a bin
with N, a window over a chromosome end, the minus-strand policy, canonical folding, a peptide's composition), and
whole caches embedded from the demo recipe's tables in the layouts of the models they stand beside."""

import contextlib
import io
import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from dogmacache.cache import open_cache
from dogmacache.cli import main
from dogmacache.embed.adapters import get_adapter
from dogmacache.embed.adapters.kmer import (
    KmerDnaOptions,
    KmerProteinOptions,
    KmerRnaOptions,
    kmer_columns,
    protein_composition,
)
from dogmacache.embed.genome import Genome
from dogmacache.errors import InputError

CPU = torch.device("cpu")
DINUCLEOTIDES = ["".join(p) for p in itertools.product("ACGT", repeat=2)]  # base-4 order


def counts(seq: str) -> np.ndarray:
    """Dinucleotide frequencies of one bin, counted the slow way: every k-mer wholly inside, none with N."""
    found = [seq[i : i + 2] for i in range(len(seq) - 1) if "N" not in seq[i : i + 2]]
    out = np.array([found.count(d) for d in DINUCLEOTIDES], dtype=np.float32)
    return out / max(len(found), 1)


@pytest.fixture
def genome(tmp_path):
    # chr1 is 20 bp: a 4 x 8 bp window centred on 17 runs 12 bp past its end
    (tmp_path / "g.fa").write_text(">chr1\nAACCGGTTANNGACGTTTGA\n")
    return Genome(tmp_path / "g.fa")


def prepare(genome, options, center, strand="+"):
    adapter = get_adapter("kmer", "dna")(None, options, CPU)
    return adapter, adapter.prepare({"id": "w", "chrom": "chr1", "center": center, "strand": strand, "_genome": genome})


def test_dna_bins_count_kmers_inside_each_bin_skipping_n(genome):
    adapter, item = prepare(genome, KmerDnaOptions(k=2, n_bins=2, bin_bp=8), center=9)  # bases 1..16
    bins = ["AACCGGTT", "ANNGACGT"]
    assert item["features"].shape == (2, 16) and int(item["n_padded"]) == 0
    np.testing.assert_allclose(item["features"], np.stack([counts(b) for b in bins]))
    assert item["features"][1].tolist() == pytest.approx([0, 0.25, 0, 0, 0, 0, 0.25, 0, 0.25, 0, 0, 0.25, 0, 0, 0, 0])
    info = adapter.info()
    assert (info.model, info.item_shape, info.pooling) == ("kmer", (2, 16), "none")
    assert info.config["bin_bp"] == 8 and info.config["output_span_bp"] == 16


def test_a_window_past_the_chromosome_end_is_padded_with_n_and_counted(genome):
    _, item = prepare(genome, KmerDnaOptions(k=2, n_bins=4, bin_bp=8), center=17)  # bases 1..32 of a 20 bp chr1
    assert int(item["n_padded"]) == 12
    bins = ["AACCGGTT", "ANNGACGT", "TTGANNNN", "NNNNNNNN"]
    np.testing.assert_allclose(item["features"], np.stack([counts(b) for b in bins]))
    assert item["features"][3].sum() == 0  # wholly past the end: no k-mer, all zeros


def test_minus_strand_rc_average_and_canonical_folding(genome):
    options = KmerDnaOptions(k=2, n_bins=2, bin_bp=8, strand_policy="rc-average")
    _, plus = prepare(genome, options, 9, "+")
    _, minus = prepare(genome, options, 9, "-")
    rc = {"A": "T", "C": "G", "G": "C", "T": "A", "N": "N"}
    bins = ["AACCGGTT", "ANNGACGT"]
    reverse = [counts("".join(rc[b] for b in reversed(s))) for s in bins]  # bins stay in reference order
    np.testing.assert_allclose(plus["features"], np.stack([counts(b) for b in bins]))
    np.testing.assert_allclose(minus["features"], (plus["features"] + np.stack(reverse)) / 2, atol=1e-7)
    columns, n = kmer_columns(2, canonical=True)
    assert n == 10 and columns[DINUCLEOTIDES.index("AC")] == columns[DINUCLEOTIDES.index("GT")]
    _, folded = prepare(genome, KmerDnaOptions(k=2, n_bins=2, bin_bp=8, canonical=True), 9, "-")
    # AACCGGTT: AA+TT 2/7, AC+GT 2/7, CC+GG 2/7, CG 1/7
    first = dict(zip(["AA", "AC", "CC", "CG"], folded["features"][0, columns[[0, 1, 5, 6]]], strict=True))
    assert first == pytest.approx({"AA": 2 / 7, "AC": 2 / 7, "CC": 2 / 7, "CG": 1 / 7})


def test_protein_composition_and_per_residue_one_hot():
    features = protein_composition("MKKMX")  # X is no standard residue: skipped, and so are KM..X pairs
    single, double = features[:20], features[20:].reshape(20, 20)
    aa = "ACDEFGHIKLMNPQRSTVWY"
    assert single[aa.index("M")] == single[aa.index("K")] == 0.5 and single.sum() == pytest.approx(1)
    pairs = {(aa[i], aa[j]): v for (i, j), v in np.ndenumerate(double) if v}
    assert pairs == pytest.approx({("M", "K"): 1 / 3, ("K", "K"): 1 / 3, ("K", "M"): 1 / 3})
    adapter = get_adapter("kmer", "protein")(None, KmerProteinOptions(pooling="none", max_length=5), CPU)
    item = adapter.prepare({"id": "p", "sequence": "MKVLA*"})
    assert adapter.info().item_shape == (5, 20) and int(item["n_truncated"]) == 2  # 3 residues kept, as ESM-2's rows
    assert item["mask"].tolist() == [False, True, True, True, False]
    assert item["features"].argmax(1)[1:4].tolist() == [aa.index(r) for r in "MKV"] and item["features"].sum() == 3


def test_rna_is_pooled_only_and_refusals_name_the_way_out():
    adapter = get_adapter("kmer", "rna")(None, KmerRnaOptions(k=1), CPU)
    assert adapter.prepare({"id": "t", "sequence": "acgUUN"})["features"].tolist() == pytest.approx(
        [0.2, 0.2, 0.2, 0.4]
    )
    with pytest.raises(InputError, match=r"--pooling none is not available for --model kmer --modality rna"):
        KmerRnaOptions(pooling="none")
    with pytest.raises(InputError, match=r"--kmer-k 9 is outside 1..8"):
        KmerDnaOptions(k=9)
    with pytest.raises(
        InputError, match=r"--model kmer reads no model and draws no weights; drop --model-path some/model"
    ):
        get_adapter("kmer", "dna")("some/model", KmerDnaOptions(), CPU)


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    from dogmacache.data_recipes.demo import build_demo

    root = tmp_path_factory.mktemp("kmer")
    with contextlib.redirect_stdout(io.StringIO()):
        build_demo(root / "recipe")
    return root / "recipe"


def test_embed_writes_complete_caches_in_the_models_layouts(recipe, tmp_path, capsys):
    runs = {
        "dna": ["cdt/dna_windows.parquet", "--genome", str(recipe / "genome.fa"), "--kmer-bins", "8"],  # tiny Enformer
        "rna": ["isoform/rna_sequences.parquet", "--kmer-canonical"],
        "protein": ["cdt/proteins.parquet"],
        "residues": ["isoform/protein_sequences.parquet", "--pooling", "none", "--max-length", "64"],
    }
    for name, (table, *extra) in runs.items():
        modality = "protein" if name == "residues" else name
        argv = ["embed", "--input", str(recipe / table), "--modality", modality, "--model", "kmer"]
        argv += ["--out", str(tmp_path / name), "--num-workers", "0", "--no-progress", "--dtype", "float32", *extra]
        assert main(argv) == 0, name
    caches = {name: open_cache(tmp_path / name) for name in runs}
    shapes = {name: (len(c), c.item_shape) for name, c in caches.items()}
    assert shapes == {"dna": (180, (8, 64)), "rna": (371, (136,)), "protein": (35, (420,)), "residues": (256, (64, 20))}
    dna = caches["dna"]
    config = dna.manifest.config
    assert dna.manifest.complete and dna.manifest.model == "kmer"
    assert config["options"] == {"k": 3, "canonical": False, "n_bins": 8, "bin_bp": 128, "strand_policy": "forward"}
    assert (config["bin_bp"], config["output_span_bp"]) == (128, 1024)
    values = dna[:].astype(np.float32)
    assert np.allclose(values.sum(-1), 1, atol=1e-5)  # the demo genome holds no N: every bin's frequencies sum to 1
    assert np.allclose(caches["protein"][:].astype(np.float32)[:, :20].sum(-1), 1, atol=1e-5)
    windows = pd.read_parquet(recipe / "cdt" / "dna_windows.parquet")
    assert dna.ids.tolist() == windows["id"].tolist()
    capsys.readouterr()
    assert main(["models", "list"]) == 0
    assert "kmer" in capsys.readouterr().out.split()
