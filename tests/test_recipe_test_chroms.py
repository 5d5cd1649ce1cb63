"""--test-chroms: the items on the named chromosomes form the test split, the rest train and validation, in every
recipe that draws a split; a name no item's chromosome has is one line."""

from __future__ import annotations

import pandas as pd
import pytest
from dogmacache.cli import main
from dogmacache.data_recipes import gasperini
from dogmacache.data_recipes.demo import DEMO_DATA, _bundled
from dogmacache.data_recipes.gene_tss import build_gene_tss
from dogmacache.errors import InputError


def _by_chrom(table: pd.DataFrame) -> dict[str, set[str]]:
    return {c: set(part["split"]) for c, part in table.groupby("chrom")}


def test_gasperini_holds_out_whole_chromosomes(tmp_path):
    manifest = gasperini.build_gasperini(
        _bundled(gasperini.SOURCES, DEMO_DATA), tmp_path / "g", gasperini.GasperiniConfig(test_chroms=("chr2",))
    )
    splits = _by_chrom(pd.read_parquet(tmp_path / "g" / "dna_windows.parquet"))
    assert splits["chr2"] == {"test"} and all(s <= {"train", "validation"} for c, s in splits.items() if c != "chr2")
    assert set().union(*(s for c, s in splits.items() if c != "chr2")) == {"train", "validation"}
    assert manifest["params"]["test_chroms"] == ["chr2"]
    with pytest.raises(InputError, match=r"--test-chroms '2' is no chromosome of the recipe's items .*chr1"):
        gasperini.build_gasperini(
            _bundled(gasperini.SOURCES, DEMO_DATA), tmp_path / "x", gasperini.GasperiniConfig(test_chroms=("2",))
        )
    with pytest.raises(InputError, match=r"every group lies on the held-out chromosomes"):
        gasperini.build_gasperini(
            _bundled(gasperini.SOURCES, DEMO_DATA),
            tmp_path / "y",
            gasperini.GasperiniConfig(test_chroms=("chr1", "chr2", "chr3")),
        )


def test_gtex_holds_out_whole_chromosomes_through_the_cli(tmp_path):
    args = ["recipe", "gtex", "--out", str(tmp_path / "x"), "--source-dir", str(DEMO_DATA), "--window-bins", "8"]
    assert main([*args, "--transcripts", "all", "--test-chroms", "chr3"]) == 0
    windows = pd.read_parquet(tmp_path / "x" / "dna_windows.parquet")
    splits = _by_chrom(windows)
    assert splits["chr3"] == {"test"} and "test" not in set().union(*(s for c, s in splits.items() if c != "chr3"))
    labels = pd.read_parquet(tmp_path / "x" / "labels.parquet")
    assert set(labels.loc[labels["split"] == "test", "dna_id"]) <= set(windows.loc[windows["chrom"] == "chr3", "id"])


def test_gene_tss_holds_out_whole_chromosomes(tmp_path):
    gtf = tmp_path / "g.gtf"
    lines = []
    for k, chrom in enumerate(["1", "1", "2", "2", "3", "3"]):
        start = 10_000 * (k + 1)
        attrs = f'gene_id "ENSG{k:011d}"; gene_name "G{k}"; gene_biotype "protein_coding";'
        lines.append(f"{chrom}\tensembl\tgene\t{start}\t{start + 500}\t.\t+\t.\t{attrs}")
    gtf.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        InputError, match=r"'chr2' is no chromosome of the recipe's items \(they lie on \['1', '2', '3'\]"
    ):
        build_gene_tss(gtf, [f"G{k}" for k in range(6)], tmp_path / "out", test_chroms=("chr2",))
    build_gene_tss(gtf, [f"G{k}" for k in range(6)], tmp_path / "out", test_chroms=("2",))  # the GTF's names
    splits = _by_chrom(pd.read_parquet(tmp_path / "out" / "genes.parquet"))
    assert splits["2"] == {"test"} and "test" not in splits["1"] | splits["3"]


def test_a_group_on_both_sides_of_the_hold_out_is_left_out_and_counted():
    """Genes sharing a peptide across chromosomes (histone H4: chr1, chr6, chr12) are one group: in test, its chr6
    gene's neighbours in train would share its window's sequence; in train, the chr1 gene would. It is dropped."""
    from dogmacache.data_recipes import tables

    genes = pd.DataFrame(
        {
            "gene_id": ["A", "B", "C", "D"],
            "chrom": ["chr1", "chr6", "chr6", "chr2"],
            "dna_id": ["w1", "w6a", "w6b", "w2"],
            "protein_id": ["p", "p", "q", "r"],  # A and B: one peptide
        }
    )
    split, counts = tables.split_linked(
        genes, "gene_id", ["dna_id", "protein_id"], (0.8, 0.1, 0.1), 0, "genes", ("chr1",)
    )
    assert "A" not in split and "B" not in split and split["C"] in ("train", "validation")
    assert counts["split_groups_across_test_chroms_dropped"] == 1 and counts["genes_across_test_chroms_dropped"] == 2
    with pytest.raises(InputError, match=r"leave nothing for train and validation"):
        tables.split_holding_out(["a", "b", "c"], (0.0, 0.0, 1.0), 0, test={"c"})
    with pytest.raises(InputError, match=r"must be three non-negative numbers summing to 1"):
        tables.split_holding_out(["a", "b", "c"], (0.5, 0.5, 0.5), 0, test={"c"})
