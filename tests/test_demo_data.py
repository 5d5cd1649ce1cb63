"""The bundled demo sources: reproducible from their generator, and internally consistent like real data."""

from pathlib import Path

import pandas as pd
from dogmacache.contracts.sequences import reverse_complement
from dogmacache.data_recipes.formats import read_ensembl_fasta, read_fasta, read_gtf
from dogmacache.data_recipes.gasperini import GasperiniConfig, build_gasperini
from dogmacache.data_recipes.make_demo_data import CODONS, GC_BOX, HERE, build


def test_bundled_files_are_what_the_generator_writes(tmp_path):
    build(tmp_path)
    bundled = sorted(p.name for p in HERE.iterdir())
    assert bundled == sorted(p.name for p in tmp_path.iterdir()) and len(bundled) == 9
    for name in bundled:
        assert (tmp_path / name).read_bytes() == (HERE / name).read_bytes(), name
    assert sum((HERE / n).stat().st_size for n in bundled) < 1_000_000


def test_cdna_and_peptides_follow_the_genome_and_the_gtf():
    genome = {name: seq.upper() for name, seq in read_fasta(HERE / "genome.fa.gz")}
    assert {k: len(v) for k, v in genome.items()} == {"chr1": 250_000, "chr2": 200_000, "chr3": 150_000}
    gtf = read_gtf(HERE / "Homo_sapiens.GRCh38.88.gtf.gz", ["exon", "CDS", "stop_codon"], ["transcript_id"])
    cdna = read_ensembl_fasta(HERE / "Homo_sapiens.GRCh38.cdna.all.fa.gz").set_index("transcript")["sequence"]
    pep = read_ensembl_fasta(HERE / "Homo_sapiens.GRCh38.pep.all.fa.gz").set_index("transcript")["sequence"]
    code = {codon: aa for aa, codon in CODONS.items()} | {"TAA": "*"}
    checked = 0
    for tx, rows in gtf.groupby("transcript_id"):
        chrom, minus = "chr" + rows["chrom"].iloc[0], rows["strand"].iloc[0] == "-"

        def spliced(features, chrom=chrom, minus=minus, rows=rows):
            part = rows[rows["feature"].isin(features)].sort_values("start")
            seq = "".join(genome[chrom][a - 1 : b] for a, b in zip(part["start"], part["end"], strict=True))
            return reverse_complement(seq) if minus else seq

        assert spliced(["exon"]) == cdna[f"{tx}.2"], tx
        coding = spliced(["CDS", "stop_codon"])
        protein = "".join(code[coding[i : i + 3]] for i in range(0, len(coding), 3))
        if f"{tx}.2" in pep.index:
            assert protein == pep[f"{tx}.2"] + "*", tx
            checked += 1
    assert checked == len(pep) == 69 and len(cdna) == 70  # one transcript has no peptide record, on purpose


def test_demo_crispri_labels_follow_the_hidden_rule(tmp_path):
    """Enhancers with more GC-box blocks carry larger negative effects; AT-rich decoy blocks do not matter."""
    files = {"results": HERE / "GSE120861_all_deg_results.at_scale.txt.gz",
             "chain": HERE / "hg19ToHg38.over.chain.gz", "uniprot": HERE / "uniprot_human_swissprot.fasta.gz"}  # fmt: skip
    build_gasperini(files, tmp_path, GasperiniConfig())
    dna = pd.read_parquet(tmp_path / "dna_windows.parquet").set_index("id")
    labels = pd.read_parquet(tmp_path / "labels.parquet")
    genome = {name: seq.upper() for name, seq in read_fasta(HERE / "genome.fa.gz")}

    def blocks(enhancer):  # GC-box blocks (64 bp = 10+ boxes) in the central 1,200 bp
        chrom, center = dna.loc[enhancer, "chrom"], int(dna.loc[enhancer, "center"])
        return genome[chrom][center - 600 : center + 600].count(GC_BOX * 10)

    active = labels["enhancer"].map({e: blocks(e) for e in labels["enhancer"].unique()})
    assert set(active.unique()) == {0, 1, 2, 3}
    means = labels.groupby(active)["beta"].mean()
    assert means[0] > means[1] > means[2] > means[3]  # each block lowers beta (by 0.25 x the gene's weight)
    assert labels["gene"].nunique() == 35 and labels["split"].nunique() == 3  # DEMO36 has no protein
    assert Path(tmp_path / "recipe.json").is_file()


def test_recipe_demo_command_runs_offline_without_leaks(tmp_path, capsys):
    from dogmacache.cli import main

    assert main(["recipe", "demo", "--out", str(tmp_path)]) == 0
    assert "recipe gasperini" in capsys.readouterr().out
    cdt = pd.read_parquet(tmp_path / "cdt" / "labels.parquet")
    iso = pd.read_parquet(tmp_path / "isoform" / "labels.parquet")
    for table, group in ((cdt, "enhancer"), (iso, "gene_id")):  # no enhancer or gene in two splits
        assert table.groupby(group)["split"].nunique().max() == 1
        assert set(table["split"]) == {"train", "validation", "test"}
    assert len(cdt) == 1060 and len(iso) == 69
    assert (tmp_path / "genome.fa").read_text().startswith(">chr1\n")
