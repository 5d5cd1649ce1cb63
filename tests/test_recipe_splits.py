"""Split units that cannot leak: genes linked by a shared input item form one group, and the gene_tss recipe
keeps symbols whose windows are one DNA input in one split."""

import gzip

import pandas as pd
from dogmacache.data_recipes import tables
from dogmacache.data_recipes.gene_tss import build_gene_tss


def test_linked_groups_follow_shared_items_transitively():
    table = pd.DataFrame(
        {
            "gene": ["g5", "g2", "g2", "g9", "g7", "g1", "g3"],
            "window": ["w1", "w1", "w2", "w3", "w4", "w5", "w5"],
            "protein": ["p1", "", "p2", "p2", None, "", ""],
        }
    )
    # g5 -w1- g2 -p2- g9: one group named by its smallest gene; g1 -w5- g3; g7 alone; "" and None link nothing
    group = tables.linked_groups(table, "gene", ["window", "protein"])
    assert group == {"g5": "g2", "g2": "g2", "g9": "g2", "g7": "g7", "g1": "g1", "g3": "g1"}
    split, counts = tables.split_linked(table, "gene", ["window", "protein"], (0.4, 0.3, 0.3), seed=1, what="genes")
    assert split["g5"] == split["g2"] == split["g9"] and split["g1"] == split["g3"]
    assert counts == {
        "split_groups": 3,
        "split_groups_merged": 2,
        "genes_in_merged_groups": 5,
        "split_group_largest": 3,
    }


def test_without_shared_items_the_groups_are_the_genes_and_the_split_is_unchanged():
    genes = [f"G{i:02d}" for i in range(30)]
    table = pd.DataFrame({"gene": genes, "window": [f"w{i}" for i in range(30)]})
    split, counts = tables.split_linked(table, "gene", ["window"], (0.8, 0.1, 0.1), seed=4)
    assert split == tables.split_groups(genes, (0.8, 0.1, 0.1), 4) and counts["split_groups_merged"] == 0


def _gtf(tmp_path):
    """20 one-gene symbols on chr1 +, and TWIN, which starts where S07 starts: one window for two symbols."""
    lines = [
        f'1\tt\tgene\t{1000 * i + 1}\t{1000 * i + 500}\t.\t+\t.\tgene_id "G{i:02d}"; gene_name "S{i:02d}";'
        for i in range(20)
    ]
    lines.append('1\tt\tgene\t7001\t7900\t.\t+\t.\tgene_id "G99"; gene_name "TWIN";')
    path = tmp_path / "genes.gtf.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def test_gene_tss_symbols_sharing_a_window_share_a_split(tmp_path):
    gtf, symbols = _gtf(tmp_path), [*(f"S{i:02d}" for i in range(20)), "TWIN"]
    for seed in range(8):
        manifest = build_gene_tss(gtf, symbols, tmp_path / f"seed{seed}", seed=seed)
        genes = pd.read_parquet(tmp_path / f"seed{seed}" / "genes.parquet").set_index("id")
        assert genes.loc[["S07", "TWIN"], "center"].tolist() == [7001, 7001]
        assert genes.loc["S07", "split"] == genes.loc["TWIN", "split"], seed
        assert genes.groupby(["chrom", "center", "strand"])["split"].nunique().max() == 1
    counts = manifest["counts"]
    assert [counts[k] for k in ("dna_windows_shared_by_genes", "split_groups", "split_groups_merged")] == [1, 20, 1]
