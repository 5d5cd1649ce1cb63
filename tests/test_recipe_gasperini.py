"""The Gasperini CRISPRi recipe on miniature files in the real formats, values worked out by hand."""

import gzip
import json

import pandas as pd
import pytest
from dogmacache.contracts import check_gene_alignment
from dogmacache.data_recipes.gasperini import GasperiniConfig, build_gasperini
from dogmacache.errors import InputError

HEADER = (
    "pairs4merge gRNA_group ENSG gene_short_name target_gene.chr target_gene.start target_gene.stop strand "
    "target_site.chr target_site.start target_site.stop site_type quality_rank_grna beta intercept "
    "fold_change.transcript_remaining pvalue.raw pvalue.empirical pvalue.empirical.adjusted outlier_gene"
).split()


def _row(group, gene, chrom, start, stop, beta, padj, site_type="DHS", gene_start=50_000, strand="+", gene_stop=None):
    values = dict(
        zip(
            HEADER,
            [
                f"{gene}:{group}",
                group,
                f"ENSG_{gene}",
                gene,
                chrom,
                gene_start,
                gene_start + 900 if gene_stop is None else gene_stop,
                strand,
                chrom,
                start,
                stop,
                site_type,
                "top_two",
                beta,
                "-2.1",
                "0.9",
                "0.001",
                "0.002",
                padj,
                "FALSE",
            ],
            strict=True,
        )
    )
    return "\t".join(str(values[h]) for h in HEADER)


def _sources(tmp_path, rows, uniprot_extra=""):
    results = tmp_path / "GSE120861_all_deg_results.at_scale.txt.gz"
    with gzip.open(results, "wt") as fh:
        fh.write("\t".join(HEADER) + "\n" + "\n".join(rows) + "\n")
    chain = tmp_path / "hg19ToHg38.over.chain.gz"  # hg19 chr1 [0, 200000) -> hg38 chr1 [1000, 201000)
    with gzip.open(chain, "wt") as fh:
        fh.write("chain 1000 chr1 200000 + 0 200000 chr1 201000 + 1000 201000 1\n200000\n\n")
    uniprot = tmp_path / "uniprot_human_swissprot.fasta.gz"
    with gzip.open(uniprot, "wt") as fh:
        fh.write(
            ">sp|P00001|GENA_HUMAN Gene A OS=Homo sapiens OX=9606 GN=GENEA PE=1 SV=1\nMKV\nLLA\n"
            ">sp|P00002|GENB_HUMAN Gene B OS=Homo sapiens OX=9606 GN=GENEB PE=1 SV=2\nMEEK\n"
            ">sp|P00009|GENA2_HUMAN Gene A paralog OS=Homo sapiens OX=9606 GN=GENEA PE=2 SV=1\nMWWW\n"
            ">sp|P00003|NOGN_HUMAN Uncharacterised OS=Homo sapiens OX=9606 PE=4 SV=1\nMAAA\n" + uniprot_extra
        )
    return {"results": results, "chain": chain, "uniprot": uniprot}


def _rows():
    rows = []
    for i in range(20):  # 20 enhancers on chr1, 6 of them with a significant effect on GENEA
        start = 10_000 + 5_000 * i
        sig = i < 6
        rows.append(
            _row(
                f"chr1.e{i}_top_two",
                "GENEA",
                "chr1",
                start,
                start + 401,
                -0.5 if sig else 0.02,
                "0.001" if sig else "0.4",
            )
        )
        rows.append(_row(f"chr1.e{i}_top_two", "GENEB", "chr1", start, start + 401, 0.1, "not_applicable"))
    rows.append(_row("chr1.e0_top_two", "GENEC", "chr1", 10_000, 10_401, -0.3, "0.01"))  # GENEC: no protein
    rows.append(_row("chr1.e1_top_two", "GENEB", "chr1", 15_000, 15_401, "NA", "0.9"))  # duplicate pair, NA beta
    rows.append(_row("GENEA_TSS", "GENEA", "chr1", 49_900, 50_100, -1.5, "0.0001", site_type="TSS"))
    rows.append(_row("NTC_1", "GENEA", "NTC", "NA", "NA", 0.0, "not_applicable", site_type="NTC"))
    rows.append(_row("chr7.e99_top_two", "GENEA", "chr7", 1_000, 1_401, -0.1, "0.5"))  # no chain for chr7
    return rows


def test_gasperini_recipe_by_hand(tmp_path):
    manifest = build_gasperini(_sources(tmp_path, _rows()), tmp_path / "out", GasperiniConfig(seed=3))
    out = tmp_path / "out"
    dna = pd.read_parquet(out / "dna_windows.parquet").set_index("id")
    labels = pd.read_parquet(out / "labels.parquet")
    genes = pd.read_parquet(out / "genes.parquet")
    proteins = pd.read_parquet(out / "proteins.parquet")

    assert len(dna) == 20  # chr7 site could not be lifted
    # 402 bases, 1-based 25,000-25,401: the right of the two middle bases (as a BED interval's), + the chain shift
    assert dna.loc["chr1.e3_top_two", "center"] == 25_201 + 1_000
    assert dna.loc["chr1.e3_top_two", "chrom"] == "chr1" and set(dna["strand"]) == {"+"}
    assert genes["id"].tolist() == ["GENEA", "GENEB"] and proteins["id"].tolist() == ["GENEA", "GENEB"]
    assert proteins["sequence"].tolist() == ["MKVLLA", "MEEK"]  # the first GENEA entry, lines joined
    assert len(labels) == 40  # 20 enhancers x 2 aligned genes; GENEC, TSS, NTC, NA beta, duplicate gone
    assert labels.loc[labels.gene == "GENEB", "significant"].sum() == 0  # not_applicable is not significant
    assert labels["significant"].sum() == 6
    assert (labels["gene_index"] == labels["gene"].map({"GENEA": 0, "GENEB": 1})).all()
    assert labels.groupby("enhancer")["split"].nunique().max() == 1  # split by enhancer
    per_split = labels.drop_duplicates("enhancer").groupby("split").size().to_dict()
    assert per_split == {"train": 14, "validation": 3, "test": 3}  # 70/15/15 of 6 + 14, stratified and rounded
    sig_enh = labels[labels.significant].drop_duplicates("enhancer").groupby("split").size().to_dict()
    assert sig_enh == {"train": 4, "validation": 1, "test": 1}  # round(0.7*6)=4, round(0.15*6)=1, rest 1
    assert (dna.loc[labels.enhancer, "split"].values == labels.split.values).all()

    written = json.loads((out / "recipe.json").read_text())
    assert written == manifest
    assert manifest["missing"]["symbols_not_in_uniprot"] == 1  # GENEC
    assert manifest["missing"]["enhancers_unmapped_by_liftover"] == 1  # chr7
    assert manifest["missing"]["beta"] == 1 and manifest["counts"]["ntc_rows_dropped"] == 1
    assert manifest["counts"]["uniprot_duplicate_symbols"] == 1 and manifest["counts"]["genes"] == 2


def _write_chain(path, text):
    with gzip.open(path, "wt") as fh:
        fh.write(text)


def test_midpoints_are_lifted_one_based_at_block_edges_and_on_inverted_blocks(tmp_path):
    # Two chains on hg19 chr1 (0-based half-open, as chain files are):
    #   + [0, 10000) -> hg38 chr1 + [1000, 11000), a 500 bp hg38 gap, then [10000, 20000) -> [11500, 21500)
    #   + [30000, 40000) -> hg38 chr1 '-' [100000, 110000) of 300000 bases = forward [190000, 200000), reversed
    chains = (
        "chain 1000 chr1 200000 + 0 20000 chr1 300000 + 1000 21500 1\n10000 0 500\n10000\n\n"
        "chain 900 chr1 200000 + 30000 40000 chr1 300000 - 100000 110000 2\n10000\n\n"
    )
    rows = [
        _row("edge_top_two", "GENEA", "chr1", 9_800, 10_200, -0.5, "0.001"),  # mid 10000: block 1's last base
        _row("end_top_two", "GENEA", "chr1", 19_900, 20_100, 0.1, "0.4"),  # mid 20000: the chain's last base
        _row("gap_top_two", "GENEA", "chr1", 10_001, 10_001, 0.1, "0.4"),  # mid 10001: block 2's first base
        _row("inverted_top_two", "GENEA", "chr1", 34_900, 35_100, 0.2, "0.4"),  # mid 35000, inverted block
    ]
    paths = _sources(tmp_path, rows)
    _write_chain(paths["chain"], chains)
    manifest = build_gasperini(paths, tmp_path / "out", GasperiniConfig())
    center = pd.read_parquet(tmp_path / "out" / "dna_windows.parquet").set_index("id")["center"]
    # 1-based 10000 = 0-based 9999, offset 9999 in block 1 -> 0-based 10999 -> 1-based 11000
    assert center["edge_top_two"] == 11_000
    assert center["end_top_two"] == 21_500  # 0-based 19999 -> 21499; read 0-based, 20000 would fall off the chain
    assert center["gap_top_two"] == 11_501  # 0-based 10000 -> 11500, past the 500 bp gap
    # 0-based 34999, offset 4999 -> reverse strand 104999 -> forward 0-based 300000 - 1 - 104999 = 195000
    assert center["inverted_top_two"] == 195_001
    assert manifest["missing"]["enhancers_unmapped_by_liftover"] == 0


def test_a_chain_lifting_hg38_to_hg19_is_refused(tmp_path):
    # UCSC's hg38ToHg19 chain opens with chr1 of hg38 (248,956,422 bp) as its reference and hg19's as its query
    paths = _sources(tmp_path, _rows())
    _write_chain(paths["chain"], "chain 1000 chr1 248956422 + 0 20000 chr1 249250621 + 0 20000 1\n20000\n\n")
    with pytest.raises(InputError, match=r"lifts hg38 to hg19 .*use hg19ToHg38.over.chain.gz"):
        build_gasperini(paths, tmp_path / "out", GasperiniConfig())
    _write_chain(paths["chain"], "chain 1000 chr1 249250621 + 0 20000 chr1 248956422 + 0 20000 1\n20000\n\n")
    build_gasperini(paths, tmp_path / "ok", GasperiniConfig())  # the right direction: lifted
    plain = tmp_path / "hg38ToHg19.over.chain"  # liftover also reads a chain file that is not gzipped
    plain.write_text("chain 1000 chr1 248956422 + 0 20000 chr1 249250621 + 0 20000 1\n20000\n\n")
    with pytest.raises(InputError, match=r"lifts hg38 to hg19"):
        build_gasperini({**paths, "chain": plain}, tmp_path / "plain", GasperiniConfig())


def test_same_seed_same_split_other_seed_other_split(tmp_path):
    paths = _sources(tmp_path, _rows())
    a = build_gasperini(paths, tmp_path / "a", GasperiniConfig(seed=1))
    b = build_gasperini(paths, tmp_path / "b", GasperiniConfig(seed=1))
    c = build_gasperini(paths, tmp_path / "c", GasperiniConfig(seed=2))
    split = {k: pd.read_parquet(tmp_path / k / "labels.parquet")["split"].tolist() for k in "abc"}
    assert a["counts"] == b["counts"] == c["counts"]
    assert split["a"] == split["b"] and split["a"] != split["c"]


def test_grna_groups_targeting_one_site_fall_in_one_split(tmp_path):
    """The screen targets a candidate with two gRNA pairs (top_two, second_two): one site, one window. Split
    apart, its window would be trained on and scored."""
    rows = _rows()
    for i in range(20):
        start = 10_000 + 5_000 * i
        rows.append(_row(f"chr1.e{i}_second_two", "GENEA", "chr1", start, start + 401, 0.01, "0.5"))
    for seed in range(4):
        manifest = build_gasperini(_sources(tmp_path, rows), tmp_path / f"out{seed}", GasperiniConfig(seed=seed))
        dna = pd.read_parquet(tmp_path / f"out{seed}" / "dna_windows.parquet")
        assert len(dna) == 40 and (dna.groupby(["chrom", "center"])["split"].nunique() == 1).all()
        assert manifest["counts"]["enhancers_sharing_a_site"] == 40
    plain = build_gasperini(_sources(tmp_path, _rows()), tmp_path / "plain", GasperiniConfig(seed=3))
    assert plain["counts"]["enhancers_sharing_a_site"] == 0


def test_rna_vocabulary_restricts_the_genes(tmp_path):
    manifest = build_gasperini(_sources(tmp_path, _rows()), tmp_path / "out", GasperiniConfig(), rna_vocab={"GENEB"})
    assert pd.read_parquet(tmp_path / "out" / "genes.parquet")["id"].tolist() == ["GENEB"]
    assert manifest["missing"]["symbols_not_in_rna_vocab"] == 1


def test_gene_alignment_check_names_the_index():
    check_gene_alignment(["A", "B"], ["A", "B"])
    with pytest.raises(InputError, match=r"differs at index 1: RNA 'B' vs protein 'C'"):
        check_gene_alignment(["A", "B"], ["A", "C"])


def test_missing_column_is_named(tmp_path):
    paths = _sources(tmp_path, _rows())
    table = pd.read_csv(paths["results"], sep="\t").drop(columns=["beta"])
    with gzip.open(paths["results"], "wt") as fh:
        table.to_csv(fh, sep="\t", index=False)
    with pytest.raises(InputError, match=r"GSE120861_all_deg_results.at_scale.txt.gz has no column 'beta'"):
        build_gasperini(paths, tmp_path / "out", GasperiniConfig())


def test_truncated_gzip_is_named(tmp_path):
    paths = _sources(tmp_path, _rows() * 20)
    raw = paths["results"].read_bytes()
    paths["results"].write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=r"at_scale.txt.gz is truncated or not valid gzip"):
        build_gasperini(paths, tmp_path / "out", GasperiniConfig())
    assert not (tmp_path / "out").exists()


def test_no_protein_for_any_gene(tmp_path):
    rows = [_row("chr1.e0_top_two", "GENEZ", "chr1", 10_000, 10_401, -0.2, "0.5")]
    with pytest.raises(InputError, match="no target gene of .* is in the protein set"):
        build_gasperini(_sources(tmp_path, rows), tmp_path / "out", GasperiniConfig())
    assert not (tmp_path / "out").exists()


def test_max_distance_measures_from_each_gene_tss_on_its_strand(tmp_path):
    """The results file gives a gene's lowest and highest coordinate: the TSS is target_gene.start on +, and
    target_gene.stop on -. Sites 5 kb from each TSS are kept; a site far from the - gene's TSS but 5 kb from its
    other end is not."""
    rows = [
        _row("chr1.a_top_two", "GENEA", "chr1", 54_800, 55_201, -0.5, "0.001", gene_start=50_000),  # 5 kb from TSS
        _row(
            "chr1.b_top_two",
            "GENEB",
            "chr1",
            144_800,
            145_201,
            -0.5,
            "0.001",
            gene_start=60_000,
            strand="-",
            gene_stop=150_000,
        ),  # 5 kb from the - gene's TSS (its stop), 85 kb from its start
        _row(
            "chr1.c_top_two",
            "GENEB",
            "chr1",
            64_800,
            65_201,
            -0.5,
            "0.001",
            gene_start=60_000,
            strand="-",
            gene_stop=150_000,
        ),  # 5 kb from the - gene's start, 85 kb from its TSS
    ]
    manifest = build_gasperini(_sources(tmp_path, rows), tmp_path / "out", GasperiniConfig(max_distance_kb=50))
    labels = pd.read_parquet(tmp_path / "out" / "labels.parquet")
    assert sorted(labels["enhancer"]) == ["chr1.a_top_two", "chr1.b_top_two"]
    assert manifest["counts"]["pairs_beyond_max_distance"] == 1
    bad = [_row("chr1.a_top_two", "GENEA", "chr1", 54_800, 55_201, -0.5, "0.001", strand="1")]
    with pytest.raises(InputError, match=r"line 2 column 8 \('strand'\) has '1'; expected \+ or -"):
        build_gasperini(_sources(tmp_path, bad), tmp_path / "out2", GasperiniConfig(max_distance_kb=50))
