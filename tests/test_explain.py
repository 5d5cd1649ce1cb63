"""explain's parts, worked out by hand on tiny inputs: window geometry, gradients vs finite differences,
attention rows, top-k overlap, correlations, tracks and feature overlap. No checkpoint needed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from dogmacache.contracts.windows import WindowGeometry, bin_coordinates, bin_offsets, window_start0
from dogmacache.errors import InputError
from dogmacache.explain import attribution, stats, tracks
from dogmacache.train.tasks.cdt.model import CentralDogmaTransformer
from dogmacache.train.tasks.cdt.sizes import CDTConfig

# ---- window geometry ------------------------------------------------------------------------------------
GEOMETRY = WindowGeometry(n_bins=4, bin_bp=10)  # centre 101 (1-based) -> c0 = 100, window [80, 120)


def test_plus_strand_bins_by_hand():
    c = bin_coordinates("chr1", 101, "+", GEOMETRY, chrom_size=1000)
    assert c.start.tolist() == [80, 90, 100, 110] and c.end.tolist() == [90, 100, 110, 120]
    assert c.offset_bp.tolist() == [-15, -5, 5, 15]
    assert c.inside.all() and c.chrom == "chr1"
    assert bin_offsets(GEOMETRY).tolist() == c.offset_bp.tolist()


def test_odd_bin_counts_measure_offsets_one_way():
    """3 bins of 128 bp: the centre base lies half a bin into bin 1, so the bins' middles sit at -128, 0, +128."""
    odd = WindowGeometry(n_bins=3, bin_bp=128)
    c = bin_coordinates("chr1", 1001, "+", odd, chrom_size=10_000)
    assert c.offset_bp.tolist() == [-128.0, 0.0, 128.0] == bin_offsets(odd).tolist()
    assert c.start.tolist() == [1000 - 192, 1000 - 64, 1000 + 64]


def test_minus_strand_reference_and_transcript_orientation():
    reference = bin_coordinates("chr1", 101, "-", GEOMETRY, chrom_size=1000)
    assert reference.start.tolist() == [80, 90, 100, 110]  # the cache's bins stay in reference order
    assert reference.offset_bp.tolist() == [15, 5, -5, -15]  # upstream on the minus strand = higher coordinate
    transcript = bin_coordinates("chr1", 101, "-", WindowGeometry(4, 10, "transcript"), chrom_size=1000)
    assert transcript.start.tolist() == [110, 100, 90, 80]  # bin 0 is the 5'-most bin
    assert transcript.offset_bp.tolist() == bin_offsets(GEOMETRY).tolist() == [-15, -5, 5, 15]


def test_bins_clip_at_both_chromosome_ends():
    near_start = bin_coordinates("chr2", 11, "+", GEOMETRY, chrom_size=25)  # window [-10, 30)
    assert near_start.start.tolist() == [0, 0, 10, 20] and near_start.end.tolist() == [0, 10, 20, 25]
    assert near_start.inside.tolist() == [False, True, True, True]
    past_end = bin_coordinates("chr2", 11, "+", GEOMETRY, chrom_size=20)
    assert past_end.inside.tolist() == [False, True, True, False]
    unknown_size = bin_coordinates("chr2", 11, "+", GEOMETRY)
    assert unknown_size.end.tolist() == [0, 10, 20, 30]


def test_window_start_matches_the_embed_stage_and_the_coding_masks():
    from dogmacache.data_recipes.gtex_masks import window_start0 as mask_start
    from dogmacache.embed.genome import Genome

    centers = np.array([1, 101, 57_345])
    assert window_start0(centers, 114_688).tolist() == mask_start(centers, 896, 128).tolist()
    assert window_start0(101, 40) == 80
    assert Genome.window.__doc__  # the embed stage cuts [center - 1 - length // 2, ...): the same formula


def test_geometry_refuses_bad_values():
    with pytest.raises(InputError, match="orientation 'sideways'"):
        WindowGeometry(4, 10, "sideways")
    with pytest.raises(InputError, match="strand '.'"):
        bin_coordinates("chr1", 101, ".", GEOMETRY)


# ---- gradients and attention on a tiny CDT ------------------------------------------------------------------
def tiny_cdt() -> tuple[CentralDogmaTransformer, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    config = CDTConfig(
        n_genes=3,
        dna_positions=5,
        dna_width=4,
        rna_width=3,
        protein_width=2,
        d_model=8,
        n_heads=2,
        vce_heads=2,
        dropout=0.1,
    )
    model = CentralDogmaTransformer(config).double().eval()
    return (
        model,
        torch.randn(2, 5, 4, dtype=torch.float64),
        torch.randn(3, 3, dtype=torch.float64),
        torch.randn(3, 2, dtype=torch.float64),
    )


def test_gradient_equals_finite_differences():
    model, dna, rna, protein = tiny_cdt()
    genes = torch.tensor([2, 0])

    def predict(x, g):
        return model(x, rna, protein, g)

    gradient = attribution.input_gradient(predict, dna, genes)  # (2, 5, 4)
    eps = 1e-6

    def slope(step):  # central difference of each sample's prediction along `step`
        with torch.no_grad():
            return (predict(dna + eps * step, genes) - predict(dna - eps * step, genes)) / (2 * eps)

    checked = [(0, 0, 0), (0, 4, 3), (1, 2, 1), (1, 3, 0)]
    for b, p, j in checked:
        step = torch.zeros_like(dna)
        step[b, p, j] = 1.0
        assert slope(step)[b].item() == pytest.approx(gradient[b, p, j].item(), rel=1e-5, abs=1e-8)
    direction = torch.randn(dna.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    along = slope(direction)  # every coordinate at once: sum_p,j g_p,j v_p,j per sample
    assert along.abs().min() > 1e-3  # the model's output does depend on its DNA
    torch.testing.assert_close(along, (gradient * direction).sum((1, 2)), rtol=1e-5, atol=1e-8)
    norms = attribution.gradient_norm(gradient)
    assert norms.shape == (2, 5)
    assert norms[1, 2].item() == pytest.approx(float(np.sqrt(sum(gradient[1, 2, j].item() ** 2 for j in range(4)))))
    assert not dna.requires_grad  # the caller's tensor is left as it was
    offset = torch.full((4,), 3.0, dtype=torch.float64)  # features far from zero, as cached features are
    by_hand = (gradient * (dna - offset)).sum(-1)
    torch.testing.assert_close(attribution.gradient_x_input(gradient, dna, offset), by_hand)


def test_gradient_x_input_is_measured_from_the_integrated_gradients_baseline():
    """For a linear read-out, gradient x input from the baseline adds up to f(x) - f(baseline) exactly, as
    integrated gradients do, whatever offset the features carry; measured from zero it would add up to f(x) - f(0)."""
    weights = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def predict(x, target):
        return (x * weights).sum((1, 2)) + target.double()

    dna = 50.0 + torch.randn(2, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    baseline = torch.full((4,), 50.0, dtype=torch.float64)  # the features' training mean
    target = torch.tensor([0, 1])
    gradient = attribution.input_gradient(predict, dna, target)
    scores = attribution.gradient_x_input(gradient, dna, baseline)
    change = predict(dna, target) - predict(baseline.expand_as(dna), target)
    torch.testing.assert_close(scores.sum(1), change)
    from_zero = (gradient * dna).sum((1, 2))  # f(x) - f(0): the offset's share, not the input's
    torch.testing.assert_close(from_zero - change, (50.0 * weights).sum().expand(2))  # f(x0) - f(0), ~81 here


def test_attention_rows_of_the_target_gene_sum_to_one():
    model, dna, rna, protein = tiny_cdt()
    genes = torch.tensor([2, 0])
    _, maps = model.forward_with_attention(dna, rna, protein, genes)
    rows = attribution.target_rows(maps["dna_to_rna"], genes)  # (B, H, L)
    assert rows.shape == (2, 2, 5)
    for b, g in enumerate(genes.tolist()):
        torch.testing.assert_close(rows[b], maps["dna_to_rna"][b, :, g])
    torch.testing.assert_close(rows.sum(-1), torch.ones(2, 2, dtype=torch.float64))
    torch.testing.assert_close(attribution.head_mean(rows).sum(-1), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(maps["vce_dna"].sum(-1), torch.ones(2, 2, dtype=torch.float64))


def test_temperature_only_sharpens_and_keeps_the_order():
    weights = torch.tensor([0.1, 0.2, 0.7])
    sharp = attribution.temperature_scaled(weights, 0.3)
    torch.testing.assert_close(sharp.sum(), torch.tensor(1.0))
    assert sharp.argsort().tolist() == [0, 1, 2] and sharp[2] > weights[2]
    torch.testing.assert_close(attribution.temperature_scaled(weights, 1.0), weights)


def test_integrated_gradients_add_up_to_the_prediction_change():
    pytest.importorskip("captum")
    model, dna, rna, protein = tiny_cdt()
    genes = torch.tensor([1, 2])

    def predict(x, g):
        return model(x, rna, protein, g)

    baseline = torch.zeros(4, dtype=torch.float64)
    ig = attribution.integrated_gradients(predict, dna, genes, baseline, n_steps=200)  # (B, L)
    assert ig.shape == (2, 5)
    with torch.no_grad():
        change = predict(dna, genes) - predict(torch.zeros_like(dna), genes)
    assert change.abs().max() > 1e-2
    torch.testing.assert_close(ig.sum(-1), change, rtol=1e-3, atol=1e-4)


# ---- rankings and correlations -------------------------------------------------------------------------
def test_topk_overlap_of_identical_and_disjoint_rankings():
    scores = np.array([0.5, 0.1, 0.9, 0.3, 0.7, 0.2])
    assert stats.top_k(scores, 3).tolist() == [2, 4, 0]
    assert stats.topk_overlap(scores, scores, 3) == 3
    assert stats.topk_overlap(scores, -scores, 3) == 0
    assert stats.topk_overlap(scores, np.array([0.9, 0, 0.8, 0, 0, 0]), 2) == 1  # {2, 4} and {0, 2} share 2
    assert stats.top_k(np.zeros(4), 2).tolist() == [0, 1]  # ties: the lower index first
    with pytest.raises(InputError, match="--top-k 7 is outside the 6 DNA positions"):
        stats.top_k(scores, 7)
    assert stats.random_overlap(20, 896) == pytest.approx(400 / 896)


def test_running_correlation_equals_the_correlation_matrix(rng):
    rows = rng.normal(size=(7, 12)) + np.linspace(0, 3, 12)
    matrix = np.corrcoef(rows)
    off_diagonal = matrix[~np.eye(7, dtype=bool)]
    assert len(off_diagonal) == 42
    running = stats.RunningCorrelation()
    for row in rows:
        running.add(row)
    running.add(np.full(12, 0.25))  # a constant row has no correlation: counted apart
    assert running.mean() == pytest.approx(off_diagonal.mean())
    assert (running.n, running.n_constant) == (7, 1)


def test_summary_counts_overlaps_and_peak_distances():
    summary = stats.Summary(k=2, n_positions=4)
    offsets = np.array([-15.0, -5.0, 5.0, 15.0])
    genes = np.array([[0.1, 0.2, 0.3, 0.4], [0.2, 0.4, 0.6, 0.8]])
    assert summary.add(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.4, 0.3, 0.2, 0.1]), offsets, genes) == 0
    assert summary.add(np.array([0.4, 0.3, 0.2, 0.1]), np.array([0.9, 0.8, 0.0, 0.0]), offsets, genes) == 2
    numbers = summary.to_dict(within_bp=10)
    assert numbers["topk_overlap"]["mean"] == 1.0 and numbers["topk_overlap"]["histogram"] == {0: 1, 1: 0, 2: 1}
    assert numbers["attention_peak"]["mean_abs_distance_bp"] == 15.0  # peaks at +15 and -15
    assert numbers["gradient_peak"]["fraction_within_10_bp"] == 0.0
    assert numbers["gradient_peak"]["fraction_within_10_bp_if_uniform"] == 0.5  # bins at -5 and +5 of 4
    assert numbers["attention_peak"]["mean_abs_distance_bp_if_uniform"] == 10.0  # (15 + 5 + 5 + 15) / 4
    assert numbers["attention_uniformity"]["across_items_mean_pairwise_correlation"] == pytest.approx(-1.0)
    assert numbers["attention_uniformity"]["across_genes_mean_pairwise_correlation"] == pytest.approx(1.0)


def test_controls_beside_the_overlap_and_the_similarity_leave_pairs_of_one_window_out():
    summary = stats.Summary(k=2, n_positions=4)
    offsets = np.array([-15.0, -5.0, 5.0, 15.0])
    genes = np.array([[0.1, 0.2, 0.3, 0.4], [0.2, 0.4, 0.6, 0.8]])
    rising, falling = np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.4, 0.3, 0.2, 0.1])
    summary.add(rising, falling, offsets, genes, "a")  # attention top {3, 2}, gradient top {0, 1}
    summary.add(falling, np.array([0.9, 0.8, 0.0, 0.0]), offsets, genes, "b")  # {0, 1}, {0, 1}
    summary.add(rising, np.array([0.0, 0.0, 0.5, 0.9]), offsets, genes, "a")  # {3, 2}, {3, 2}
    numbers = summary.to_dict()
    # observed overlaps 0, 2, 2; other-window pairs (i's attention, j's gradient): a1-b 0, a3-b 0, b-a1 2, b-a3 0
    assert numbers["topk_overlap"]["mean"] == pytest.approx(4 / 3)
    assert numbers["topk_overlap"]["expected_if_windows_mismatched"] == pytest.approx(2 / 4)
    uniformity = numbers["attention_uniformity"]
    # rows a1 and a3 are one (correlation 1), b runs against both (-1): over all ordered pairs (2 - 4) / 6
    assert uniformity["across_items_mean_pairwise_correlation"] == pytest.approx(-1 / 3)
    assert uniformity["across_windows_mean_pairwise_correlation"] == pytest.approx(-1.0)


# ---- tracks -----------------------------------------------------------------------------------------------
def test_bedgraph_round_trip_skips_padding_bins(tmp_path):
    coords = bin_coordinates("chr2", 11, "+", GEOMETRY, chrom_size=25)
    track = tracks.window_track(coords, np.array([9.0, 0.5, 0.25, 0.125]))
    path = tracks.write_bedgraph(tmp_path / "a.bedGraph", track, "a", "test track")
    assert path.read_text().splitlines()[0].startswith("track type=bedGraph")
    back = tracks.read_bedgraph(path)
    assert back.values.tolist() == [["chr2", 0, 10, 0.5], ["chr2", 10, 20, 0.25], ["chr2", 20, 25, 0.125]]
    plain = pd.read_csv(path, sep="\t", skiprows=1, header=None)  # any tab reader opens it
    assert plain.shape == (3, 4)


def test_bigwig_written_back_reads_the_same_values(tmp_path):
    pyBigWig = pytest.importorskip("pyBigWig")
    coords = bin_coordinates("chr1", 101, "+", GEOMETRY, chrom_size=1000)
    track = tracks.window_track(coords, np.array([1.0, 2.0, 3.0, 4.0]))
    path = tracks.write_bigwig(tmp_path / "a.bw", track, {"chr1": 1000})
    reader = pyBigWig.open(str(path))
    try:
        assert reader.chroms() == {"chr1": 1000}
        assert [v for _, _, v in reader.intervals("chr1")] == [1.0, 2.0, 3.0, 4.0]
        assert reader.values("chr1", 95, 96) == [2.0]
    finally:
        reader.close()


def test_track_average_splits_overlapping_windows():
    average = tracks.TrackAverage()
    average.add(pd.DataFrame({"chrom": "chr1", "start": [0, 10], "end": [10, 20], "value": [1.0, 2.0]}))
    average.add(pd.DataFrame({"chrom": "chr1", "start": [5, 15], "end": [15, 25], "value": [3.0, 5.0]}))
    result = average.result()
    assert result["start"].tolist() == [0, 5, 10, 15, 20]
    assert result["end"].tolist() == [5, 10, 15, 20, 25]
    assert result["value"].tolist() == pytest.approx([1.0, 2.0, 2.5, 3.5, 5.0])


# ---- features ------------------------------------------------------------------------------------------
def test_feature_overlap_against_position_matched_background(tmp_path):
    pytest.importorskip("pyranges")
    from dogmacache.explain.features import FeatureOverlap, FeatureSet

    bed = tmp_path / "peaks.bed"
    bed.write_text("chr1\t95\t96\tpeak\nchr1\t1000\t1010\tfar\n")
    features = FeatureSet(bed, {"chr1"})
    one = bin_coordinates("chr1", 101, "+", GEOMETRY)  # bins [80,90) [90,100) [100,110) [110,120)
    two = bin_coordinates("chr1", 1011, "+", GEOMETRY)  # bins [990,1000) [1000,1010) ...
    assert features.bin_flags(one).tolist() == [False, True, False, False]
    assert features.bin_flags(two).tolist() == [False, True, False, False]
    three = bin_coordinates("chr1", 5001, "+", GEOMETRY)
    overlap = FeatureOverlap(features, ("attention",))
    overlap.add(one, {"attention": np.array([1, 0])}, "one")
    overlap.add(two, {"attention": np.array([2, 3])}, "two")
    overlap.add(three, {"attention": np.array([1, 2])}, "three")
    result = overlap.result()["attention"]
    assert (result["top_bins"], result["top_bins_on_feature"]) == (6, 1)
    # the same bins in the two other windows: item 1 bins {1, 0}: (1/2 + 0/2) / 2; item 2 bins {2, 3}: 0;
    # item 3 bins {1, 2}: (2/2 + 0/2) / 2
    assert result["background_fraction"] == pytest.approx((0.25 + 0 + 0.5) / 3)
    assert result["enrichment"] == pytest.approx((1 / 6) / 0.25)
    # the null deals the windows' flags to the top bins at random. Windows one and two share their flags (bin 1 on
    # the peak), three has none: item 1's bins {1, 0} score 1 unless dealt three's flags, and then item 3's {1, 2}
    # are dealt one's or two's and score 1. Every deal scores at least the observed 1: position alone explains it
    assert result["permutation_p_greater"] == 1.0 and result["permutations"] == 5000


def test_items_of_one_window_count_once_in_the_background_and_move_together_in_the_null(tmp_path):
    """Ten items of one window whose top bin is on a feature, beside windows without one there: as ten independent
    draws, a binomial test would call it significant; the windows are 4, and 1 in 4 windows' deals give the same."""
    pytest.importorskip("pyranges")
    from dogmacache.explain.features import FeatureOverlap, FeatureSet

    bed = tmp_path / "peaks.bed"
    bed.write_text("chr1\t95\t96\tpeak\n")
    features = FeatureSet(bed, {"chr1"})
    overlap = FeatureOverlap(features, ("attention",))
    hit = bin_coordinates("chr1", 101, "+", GEOMETRY)  # bin 1 on the peak
    for _ in range(10):
        overlap.add(hit, {"attention": np.array([1])}, "hit")
    for k, center in enumerate((5001, 9001, 13001)):
        overlap.add(bin_coordinates("chr1", center, "+", GEOMETRY), {"attention": np.array([0])}, f"w{k}")
    result = overlap.result()
    assert result["n_items"] == 13 and result["n_windows"] == 4
    attention = result["attention"]
    assert attention["top_bins_on_feature"] == 10
    # the hit window's bin 1 against the 3 other windows' bin 1 (no peak there): 0; the others' bin 0: 0
    assert attention["background_fraction"] == 0.0
    # under the null the ten items' bin 1 is scored in the window dealt to them: the hit window's own in 1 of 4
    assert attention["permutation_p_greater"] == pytest.approx(0.25, abs=0.02)


def test_bed_with_other_chromosome_names_is_read_as_the_tracks_name_them(tmp_path, capsys):
    """A BED naming chromosomes as Ensembl does (1, MT) over tracks named as UCSC does (chr1, chrM), or the other
    way: read by the one rule every stage resolves names with (`genome.chrom_alias`), and said."""
    pytest.importorskip("pyranges")
    from dogmacache.contracts.windows import BinCoordinates
    from dogmacache.explain.features import FeatureSet

    bed = tmp_path / "ensembl.bed"
    bed.write_text("1\t95\t96\nMT\t10\t20\n")
    features = FeatureSet(bed, {"chr1", "chrM"})
    assert "names 2 chromosome(s) as the tracks do not (e.g. '1', 'chr1' in the tracks)" in capsys.readouterr().out
    bins = BinCoordinates(
        chrom="chr1",
        start=np.array([90, 100]),
        end=np.array([100, 110]),
        inside=np.array([True, True]),
        offset_bp=np.array([0, 10]),
    )
    assert features.bin_flags(bins).tolist() == [True, False]
    other = tmp_path / "other.bed"
    other.write_text("chrX\t95\t96\n")
    with pytest.raises(InputError, match=r"shares no chromosome with the windows"):
        FeatureSet(other, {"chr1", "chr2"})


def test_bad_bed_lines_are_one_line_errors_naming_the_line(tmp_path):
    import gzip

    from dogmacache.explain.features import FeatureSet, read_bed

    bed = tmp_path / "peaks.bed"
    bed.write_text("# peaks\ntrack name=x\nchr1\t95\t96\tpeak\nchr1\t1010\t1000\tbackwards\n")
    with pytest.raises(InputError, match=r"peaks.bed line 4: start 1010 is not before end 1000") as err:
        FeatureSet(bed, {"chr1"})
    assert "\n" not in str(err.value)
    bed.write_text("chr1\t95\t96\nchr1\t1000\t1000\tempty\n")  # covers no base: pyranges counted it in one bin only
    with pytest.raises(InputError, match=r"peaks.bed line 2: start 1000 is not before end 1000"):
        read_bed(bed)
    bed.write_text("chr1\t95\t96\nchr1\t1,000\t1010\n")
    with pytest.raises(InputError, match=r"peaks.bed line 2 column 2 \(start\): '1,000' is not a non-negative") as err:
        read_bed(bed)
    assert "\n" not in str(err.value)
    bed.write_text("chr1\t95\t96\nchr1 100\n")
    with pytest.raises(InputError, match=r"peaks.bed line 2: 'chr1 100' has 2 field\(s\)"):
        read_bed(bed)
    packed = tmp_path / "peaks.bed.gz"
    packed.write_bytes(gzip.compress(b"chr1\t95\t96\tname with spaces\nchr2 0 5\n"))
    table = read_bed(packed)
    assert table.values.tolist() == [["chr1", 95, 96], ["chr2", 0, 5]]
    bed.write_bytes(b"chr1\t95\t96\n\xe0\xff\xfe binary\n")
    with pytest.raises(InputError, match=r"peaks.bed is not a text BED file \(bytes at offset \d+"):
        read_bed(bed)


def test_ctrl_c_is_one_line_on_what_was_kept_and_exit_130(tmp_path, monkeypatch, capsys):
    from dogmacache.cli import main
    from dogmacache.explain import run

    def interrupted(sources):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "explainer_for", interrupted)
    out = tmp_path / "o"
    assert main(["explain", "--checkpoint", "x.pt", "--split", "test", "--out", str(out)]) == 130
    message = capsys.readouterr().err.strip()
    assert message.startswith(f"dogmacache explain: interrupted; {out} keeps the items explained so far")
    assert "re-run the same command" in message and "\n" not in message


def test_the_windows_table_is_checked_against_a_cache_embed_wrote_and_not_against_an_imported_one():
    from types import SimpleNamespace

    import pandas as pd
    from dogmacache.embed.inputs import check_embedded_from, input_digest

    table = pd.DataFrame({"id": ["a", "b"], "chrom": ["chr1", "chr1"], "center": [100, 900], "strand": ["+", "-"]})
    genome = {"name": "g.fa", "sha256": "sha256:1"}
    embedded = SimpleNamespace(
        config={"input": {"name": "w.parquet"}, "genome": genome},
        input_digest=input_digest(table, "dna", "g.fa:sha256:1"),
    )
    assert check_embedded_from(table, "dna", embedded, "dna.zarr", "w.parquet", "fix") is True
    with pytest.raises(InputError, match=r"shifted.parquet is not the table dna.zarr was embedded from \(id, chrom"):
        check_embedded_from(table.assign(center=[101, 900]), "dna", embedded, "dna.zarr", "shifted.parquet", "fix")
    imported = SimpleNamespace(config={"source": "import-h5", "src": "e.h5"}, input_digest="sha256:0")
    assert check_embedded_from(table, "dna", imported, "dna.zarr", "w.parquet", "fix") is False


def test_an_earlier_runs_item_files_go_whatever_their_number_and_other_files_stay(tmp_path):
    from dogmacache.explain.run import _file_name, clear_previous

    items, figures = tmp_path / "tracks" / "items", tmp_path / "figures" / "items"
    items.mkdir(parents=True)
    figures.mkdir(parents=True)
    written = [items / f"{_file_name(n, 'e1|g2')}.attention.bedGraph" for n in (7, 9999, 10000, 123456)]
    written += [figures / f"{_file_name(10001, 'e1|g2')}.png", tmp_path / "summary.json"]
    kept = [items / "notes_1.bedGraph", items / "x10000_a.bw", tmp_path / "my.bed"]
    for path in written + kept:
        path.write_text("x")
    clear_previous(tmp_path)
    assert [p for p in written if p.exists()] == []
    assert all(p.exists() for p in kept)


def test_chrom_sizes_that_are_no_text_are_one_line(tmp_path):
    from dogmacache.explain.inputs import chrom_sizes

    binary = tmp_path / "labels.parquet"
    binary.write_bytes(b"PAR1\x15\x04\x15\xff\xfe\x00\x9c")
    with pytest.raises(InputError, match=r"--chrom-sizes .*labels\.parquet is not a text file"):
        chrom_sizes(str(binary))
    (tmp_path / "ok.sizes").write_text("chr1\t100\n\nchr2\t50\n\n")  # blank lines hold nothing
    assert chrom_sizes(str(tmp_path / "ok.sizes")) == {"chr1": 100, "chr2": 50}
