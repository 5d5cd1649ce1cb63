"""Window geometry is defined once (`contracts/windows.py`); the recipes' coding masks and the embed stage's
genome windows follow it, and give what they gave before it was shared. Windows cut at one base on the two strands
read the same bases, so they share a split."""

import numpy as np
import pandas as pd
import pytest
from dogmacache.contracts.windows import (
    WindowGeometry,
    bin_coordinates,
    bin_of,
    interval_center,
    orient_bins,
    tss,
    window_holds,
    window_label,
    window_start0,
)
from dogmacache.data_recipes.gene_tss import build_gene_tss
from dogmacache.data_recipes.gtex_masks import coding_masks
from dogmacache.embed.genome import Genome
from dogmacache.embed.inputs import read_input_table
from dogmacache.errors import InputError


def test_coding_masks_bins_on_both_strands_and_orientations():
    # 8 bins of 10 bp centred on 1-based 41: window [0, 80); CDS 1-based [11, 25] = 0-based [10, 25) -> bins 1, 2;
    # a stop codon [78, 90] is clipped to the window's last bin; an interval wholly outside is dropped.
    centers, strands = np.array([41, 41]), np.array(["+", "-"])
    rows = np.array([0, 1, 1, 1])
    starts, ends = np.array([11, 11, 78, 200]), np.array([25, 25, 90, 210])
    kwargs = dict(window_bins=8, bin_bp=10)
    reference = coding_masks(centers, strands, rows, starts, ends, orientation="reference", **kwargs)
    assert reference.tolist() == [[0, 1, 1, 0, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0, 0, 1]]
    transcript = coding_masks(centers, strands, rows, starts, ends, orientation="transcript", **kwargs)
    assert transcript.tolist() == [[0, 1, 1, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 1, 1, 0]]
    assert transcript.dtype == np.uint8
    with pytest.raises(InputError, match="orientation 'sideways'"):
        coding_masks(centers, strands, rows, starts, ends, orientation="sideways", **kwargs)


def test_mask_bins_agree_with_bin_of():
    geometry = WindowGeometry(n_bins=8, bin_bp=10, orientation="transcript")
    masks = coding_masks(
        np.array([501]),
        np.array(["-"]),
        np.array([0]),
        np.array([473]),
        np.array([473]),
        window_bins=8,
        bin_bp=10,
        orientation="transcript",
    )
    assert np.flatnonzero(masks[0]).tolist() == [bin_of(472, 501, "-", geometry)]


def test_genome_windows_start_where_the_contract_says(tmp_path):
    bases = "".join("ACGT"[(i * 7) % 4] for i in range(60))
    (tmp_path / "g.fa").write_text(">chr1\n" + bases + "\n")
    genome = Genome(tmp_path / "g.fa")
    for center, length in ((30, 10), (31, 11), (5, 20)):
        seq, padded = genome.window("chr1", center, length)
        start = window_start0(center, length)
        assert start == center - 1 - length // 2  # the formula Genome.window used before
        assert seq == "N" * max(0, -start) + bases[max(0, start) : start + length]
        assert padded == max(0, -start)


def test_window_start_label_and_holds():
    assert window_start0(np.array([101, 1]), 40).tolist() == [80, -20]
    assert window_label("chr2", 1_001, 2_000) == "chr2:1-2,000"
    starts = np.array([0, 100])
    assert window_holds(starts, 50, 10, 20).tolist() == [True, False]
    assert window_holds(100, 50, 149, 150) and not window_holds(100, 50, 149, 151)
    # an insertion (an empty span) only between two of the window's bases
    assert window_holds(100, 50, 101, 101) and window_holds(100, 50, 149, 149)
    assert not window_holds(100, 50, 100, 100) and not window_holds(100, 50, 150, 150)


def test_an_interval_and_its_window_share_their_midpoint(tmp_path):
    # the window's midpoint is the left edge of its centre base (0-based center - 1): for [start0, end0) of either
    # parity it is the interval's midpoint, to the half base an odd length leaves
    for start0, end0 in ((100, 104), (100, 105), (0, 1), (7, 9)):
        center = interval_center(start0, end0)
        midpoint_edge = center - 1
        assert abs(midpoint_edge - (start0 + end0) / 2) <= 0.5 and start0 <= center - 1 < end0
        if (end0 - start0) % 2 == 0:
            assert midpoint_edge == (start0 + end0) // 2
    # a BED interval read by embed and the same site written 1-based inclusive (gasperini) give one centre
    table = pd.DataFrame({"id": ["a", "b"], "chrom": "chr1", "start": [100, 100], "end": [104, 105]})
    table.to_parquet(tmp_path / "t.parquet")
    assert read_input_table(tmp_path / "t.parquet", "dna")["center"].tolist() == [103, 103]
    assert interval_center(np.array([101, 101]) - 1, np.array([104, 105])).tolist() == [103, 103]


def test_tss_is_the_start_on_plus_and_the_end_on_minus():
    assert tss(100, 200, "+") == 100 and tss(100, 200, "-") == 200
    assert tss(np.array([1, 5]), np.array([3, 9]), np.array(["+", "-"])).tolist() == [1, 9]
    with pytest.raises(InputError, match="strand '.'"):
        tss(1, 2, ".")


@pytest.mark.parametrize("orientation", ["reference", "transcript"])
@pytest.mark.parametrize("strand", ["+", "-"])
def test_bin_of_inverts_bin_coordinates(strand, orientation):
    geometry = WindowGeometry(n_bins=6, bin_bp=8, orientation=orientation)
    coords = bin_coordinates("chr1", 100, strand, geometry)
    for k, (a, b) in enumerate(zip(coords.start, coords.end, strict=True)):
        assert bin_of(int(a), 100, strand, geometry) == k
        assert bin_of(int(b) - 1, 100, strand, geometry) == k
    first = window_start0(100, geometry.span_bp)
    assert bin_of(first - 1, 100, strand, geometry) is None
    assert bin_of(first + geometry.span_bp, 100, strand, geometry) is None


def test_orient_bins_reverses_minus_strand_only_in_transcript_order():
    values = np.arange(6).reshape(2, 3)
    assert orient_bins(values, np.array(["+", "-"]), "transcript").tolist() == [[0, 1, 2], [5, 4, 3]]
    assert orient_bins(values, np.array(["+", "-"]), "reference").tolist() == values.tolist()
    assert orient_bins(np.arange(3), "-", "transcript").tolist() == [2, 1, 0]
    assert values.tolist() == [[0, 1, 2], [3, 4, 5]]  # the input is left as it was


def test_a_bidirectional_promoters_two_windows_share_a_split(tmp_path):
    """20 '+' genes each starting where a '-' gene ends (one TSS, both strands): under the forward strand policy both
    windows read the same bases, so each pair is one split group, whatever the seed."""
    lines, symbols = [], []
    for i in range(20):
        tss_bp = 10_000 * (i + 1)
        lines.append(f'1\tt\tgene\t{tss_bp}\t{tss_bp + 500}\t.\t+\t.\tgene_id "GP{i:02d}"; gene_name "P{i:02d}";')
        lines.append(f'1\tt\tgene\t{tss_bp - 500}\t{tss_bp}\t.\t-\t.\tgene_id "GM{i:02d}"; gene_name "M{i:02d}";')
        symbols += [f"P{i:02d}", f"M{i:02d}"]
    (tmp_path / "bidir.gtf").write_text("\n".join(lines) + "\n")
    for seed in range(6):
        manifest = build_gene_tss(tmp_path / "bidir.gtf", symbols, tmp_path / f"seed{seed}", seed=seed)
        genes = pd.read_parquet(tmp_path / f"seed{seed}" / "genes.parquet")
        assert genes.groupby("center")["strand"].nunique().eq(2).all()  # every TSS carries both strands
        assert genes.groupby(["chrom", "center"])["split"].nunique().max() == 1, seed
        assert set(genes["split"]) == {"train", "validation", "test"}
    counts = manifest["counts"]
    assert [counts[k] for k in ("split_groups", "split_groups_merged", "dna_windows_shared_by_genes")] == [20, 20, 0]


def test_gene_tss_records_its_sources_by_digest(tmp_path):
    """recipe.json traces the windows to the exact bytes of the GTF and gene list they came from."""
    import hashlib

    gtf = tmp_path / "g.gtf"
    gtf.write_text('1\tt\tgene\t10000\t10500\t.\t+\t.\tgene_id "G1"; gene_name "A";\n')
    (tmp_path / "genes.txt").write_text("A\n")
    listed = build_gene_tss(gtf, tmp_path / "genes.txt", tmp_path / "out", fractions=(1.0, 0.0, 0.0))
    assert listed["sources"] == {
        "gtf": {"name": "g.gtf", "sha256": hashlib.sha256(gtf.read_bytes()).hexdigest()},
        "genes": {"name": "genes.txt", "sha256": hashlib.sha256(b"A\n").hexdigest()},
    }
    given = build_gene_tss(gtf, ["A"], tmp_path / "out2", fractions=(1.0, 0.0, 0.0))
    assert given["sources"]["genes"] == {"name": "list", "n": 1}


@pytest.mark.parametrize("n_bins,bin_bp", [(5, 7), (1, 5), (3, 128), (4, 8)])
def test_offsets_are_strand_symmetric_for_odd_and_even_spans(n_bins, bin_bp):
    """Offsets run from the window's midpoint: a '-' window read 5' to 3' has a '+' window's offsets, and with an
    odd number of bins the bin holding the centre base is at offset 0 on both strands (an odd span's midpoint is
    that base's middle)."""
    from dogmacache.contracts.windows import bin_offsets

    geometry = WindowGeometry(n_bins=n_bins, bin_bp=bin_bp)
    plus = bin_coordinates("chr1", 150, "+", geometry)
    minus = orient_bins(bin_coordinates("chr1", 150, "-", geometry).offset_bp, "-", "transcript")
    assert plus.offset_bp.tolist() == minus.tolist() == bin_offsets(geometry).tolist()
    on_minus = bin_coordinates("chr1", 150, "-", geometry)
    assert on_minus.offset_bp.tolist() == (-plus.offset_bp).tolist()  # the same bins, mirrored
    if n_bins % 2:  # a middle bin holds the centre base, at offset 0 on either strand
        holds = int(np.flatnonzero((plus.start <= 149) & (149 < plus.end))[0])  # 0-based c0
        assert holds == n_bins // 2 and plus.offset_bp[holds] == on_minus.offset_bp[holds] == 0
