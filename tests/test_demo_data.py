"""The bundled demo sources: reproducible from their generator, and internally consistent like real data."""

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from dogmacache.contracts.sequences import reverse_complement
from dogmacache.data_recipes.formats import read_ensembl_fasta, read_fasta, read_gtf
from dogmacache.data_recipes.gasperini import GasperiniConfig, build_gasperini
from dogmacache.data_recipes.make_demo_data import ARE_BLOCK, CODONS, GC_BOX, HERE, build

# The screen's files and chr1-chr3 as the CDT demo's numbers were measured on (sha256, first 16 hex digits):
# the isoform genes on chr4 must never change them.
SCREEN_FILES = {
    "GSE120861_all_deg_results.at_scale.txt.gz": "073ac439bc32730e",
    "hg19ToHg38.over.chain.gz": "41c6dd1980ee0f68",
    "uniprot_human_swissprot.fasta.gz": "03e1a1e4f5d4a3ca",
}
CHR1_TO_3 = "f2f765f2939a07c0"  # sha256 of name + sequence of chr1, chr2, chr3 in order


def test_bundled_files_are_what_the_generator_writes(tmp_path):
    build(tmp_path)
    bundled = sorted(p.name for p in HERE.iterdir())
    assert bundled == sorted(p.name for p in tmp_path.iterdir()) and len(bundled) == 9
    for name in bundled:
        assert (tmp_path / name).read_bytes() == (HERE / name).read_bytes(), name
    assert sum((HERE / n).stat().st_size for n in bundled) < 1_000_000


def test_cdna_and_peptides_follow_the_genome_and_the_gtf():
    genome = {name: seq.upper() for name, seq in read_fasta(HERE / "genome.fa.gz")}
    assert {k: len(v) for k, v in genome.items()} == {
        "chr1": 250_000,
        "chr2": 200_000,
        "chr3": 150_000,
        "chr4": 619_067,
    }
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
    # 366 transcripts: 29 non-coding (no CDS, no peptide) and one coding transcript without its peptide, on purpose
    assert checked == len(pep) == 336 and len(cdna) == 366


def test_demo_crispri_labels_follow_the_hidden_rule(tmp_path):
    """Enhancers with more GC-box blocks carry larger negative effects; AT-rich decoy blocks do not matter."""
    files = {
        "results": HERE / "GSE120861_all_deg_results.at_scale.txt.gz",
        "chain": HERE / "hg19ToHg38.over.chain.gz",
        "uniprot": HERE / "uniprot_human_swissprot.fasta.gz",
    }
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
    assert len(cdt) == 1060 and len(iso) == 365
    assert (tmp_path / "genome.fa").read_text().startswith(">chr1\n")


def test_the_screen_files_and_chr1_to_chr3_are_unchanged():
    for name, digest in SCREEN_FILES.items():
        assert hashlib.sha256((HERE / name).read_bytes()).hexdigest()[:16] == digest, name
    h = hashlib.sha256()
    names = []
    for name, seq in read_fasta(HERE / "genome.fa.gz"):
        if name != "chr4":
            h.update(name.encode() + seq.encode())
            names.append(name)
    assert names == ["chr1", "chr2", "chr3"] and h.hexdigest()[:16] == CHR1_TO_3


def test_demo_isoform_sizes(tmp_path):
    from dogmacache.data_recipes.demo import build_demo

    manifest = build_demo(tmp_path)["isoform"]
    counts = manifest["counts"]
    assert counts["transcripts_kept"] == 365 and counts["transcripts_without_protein"] == 29
    assert (counts["dna_windows_distinct"], counts["proteins_distinct"]) == (336, 116)
    assert [counts[f"transcripts_{s}"] for s in ("train", "validation", "test")] == [287, 34, 44]
    assert [counts[f"genes_{s}"] for s in ("train", "validation", "test")] == [93, 12, 11]
    rna = pd.read_parquet(tmp_path / "isoform" / "rna_sequences.parquet")["sequence"].str.len()
    assert rna.max() <= 876  # short cDNAs: <= 147 NT tokens, so the demo's per-token caches stay small
    sizes = manifest["expected_cache_bytes"]
    assert (sizes["dna"]["items"], sizes["rna"]["items"], sizes["protein"]["items"]) == (336, 365, 116)


def test_demo_expression_follows_the_hidden_rule(tmp_path):
    """Transcripts with more GC-box blocks upstream of their TSS vary more across tissues (u_tissue scales them);
    AU-rich blocks in the cDNA lower expression in every tissue."""
    from dogmacache.data_recipes.demo import build_demo

    build_demo(tmp_path)
    labels = pd.read_parquet(tmp_path / "isoform" / "labels_log1p.parquet")
    windows = pd.read_parquet(tmp_path / "isoform" / "dna_windows.parquet").set_index("id")
    cdna = pd.read_parquet(tmp_path / "isoform" / "rna_sequences.parquet").set_index("id")["sequence"]
    genome = {name: seq.upper() for name, seq in read_fasta(HERE / "genome.fa.gz")}

    def gc_blocks(window_id):
        chrom, center, strand = windows.loc[window_id, ["chrom", "center", "strand"]]
        upstream = genome[chrom][center - 513 : center - 1] if strand == "+" else genome[chrom][center : center + 512]
        return upstream.count(GC_BOX * 10) + upstream.count(reverse_complement(GC_BOX * 10))

    tissues = [c for c in labels.columns if c not in ("id", "gene_id", "split", "dna_id", "rna_id", "protein_id")]
    blocks = labels["dna_id"].map(gc_blocks)
    spread = labels[tissues].std(axis=1)
    assert set(blocks) == {0, 1, 2, 3}
    by_blocks = spread.groupby(blocks).mean()
    assert by_blocks[0] < by_blocks[1] < by_blocks[2] < by_blocks[3]
    are = labels["id"].map(lambda t: cdna[t].count(ARE_BLOCK))
    assert set(are) == {0, 1, 2, 3}
    level = labels[tissues].mean(axis=1).groupby(are).mean()
    assert level[0] > level[1] > level[2] > level[3]
    assert np.isfinite(labels[tissues].to_numpy()).all()
