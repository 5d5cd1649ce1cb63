"""The bundled demo sources: reproducible from their generator, internally consistent like real data, and following
the hidden rules they state."""

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
from dogmacache.contracts.sequences import reverse_complement
from dogmacache.data_recipes.formats import read_ensembl_fasta, read_fasta, read_gtf
from dogmacache.data_recipes.gasperini import GasperiniConfig, build_gasperini
from dogmacache.data_recipes.make_demo_data import ARE_BLOCK, CODONS, GC_BOX, HERE, write_demo_data

# The screen's files and chr1-chr3 as the CDT demo's numbers were measured on (sha256, first 16 hex digits):
# the genes added on chr4 and chr5 must never change them.
SCREEN_FILES = {
    "GSE120861_all_deg_results.at_scale.txt.gz": "073ac439bc32730e",
    "hg19ToHg38.over.chain.gz": "41c6dd1980ee0f68",
    "uniprot_human_swissprot.fasta.gz": "03e1a1e4f5d4a3ca",
}
CHR1_TO_3 = "f2f765f2939a07c0"  # sha256 of name + sequence of chr1, chr2, chr3 in order


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _genome(folder: Path = HERE) -> dict[str, str]:
    return {name: seq.upper() for name, seq in read_fasta(folder / "genome.fa.gz")}


def test_bundled_files_are_what_the_generator_writes(tmp_path):
    assert write_demo_data(tmp_path) == tmp_path
    bundled = _files(HERE)
    assert bundled == _files(tmp_path) and len(bundled) == 13
    for name in bundled:
        assert (tmp_path / name).read_bytes() == (HERE / name).read_bytes(), name
    assert sum((HERE / n).stat().st_size for n in bundled) < 1_500_000


def test_cdna_and_peptides_follow_the_genome_and_the_gtf():
    genome = _genome()
    assert {k: len(v) for k, v in genome.items()} == {
        "chr1": 250_000,
        "chr2": 200_000,
        "chr3": 150_000,
        "chr4": 641_016,
        "chr5": 834_500,
    }
    gtf = read_gtf(HERE / "Homo_sapiens.GRCh38.88.gtf.gz", ["exon", "CDS", "stop_codon"], ["transcript_id"])
    cdna = read_ensembl_fasta(HERE / "Homo_sapiens.GRCh38.cdna.all.fa.gz").set_index("transcript")["sequence"]
    pep = read_ensembl_fasta(HERE / "Homo_sapiens.GRCh38.pep.all.fa.gz").set_index("transcript")["sequence"]
    code = {codon: aa for aa, codon in CODONS.items()} | {"TAA": "*"}
    checked = kozak = 0
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
        if chrom == "chr4" and coding:  # the isoform genes' CDS starts at the cDNA's first Kozak-context ATG
            assert cdna[f"{tx}.2"].find(coding) == re.search("[AG]CCATGG", cdna[f"{tx}.2"]).start() + 3, tx
            kozak += 1
    # every GTF transcript has its cDNA; the non-coding ones and one coding transcript have no peptide, on purpose
    assert (checked, len(pep), kozak, len(cdna)) == (346, 346, 277, 692)


def test_demo_crispri_labels_follow_the_hidden_rule(tmp_path):
    """Enhancers with more GC-box blocks carry larger negative effects; AT-rich decoy blocks do not matter."""
    labels, active = _screen(HERE, tmp_path)
    assert set(active.unique()) == {0, 1, 2, 3}
    means = labels.groupby(active)["beta"].mean()
    assert means[0] > means[1] > means[2] > means[3]  # each block lowers beta (by 0.25 x the gene's weight)
    assert labels["gene"].nunique() == 35 and labels["split"].nunique() == 3  # DEMO36 has no protein
    assert Path(tmp_path / "recipe.json").is_file()


def _screen(data: Path, out: Path) -> tuple[pd.DataFrame, pd.Series]:
    """The screen's labels through the recipe, and each row's GC-box block count read off the genome."""
    files = {
        "results": data / "GSE120861_all_deg_results.at_scale.txt.gz",
        "chain": data / "hg19ToHg38.over.chain.gz",
        "uniprot": data / "uniprot_human_swissprot.fasta.gz",
    }
    build_gasperini(files, out, GasperiniConfig())
    dna = pd.read_parquet(out / "dna_windows.parquet").set_index("id")
    labels = pd.read_parquet(out / "labels.parquet")
    genome = _genome(data)

    def blocks(enhancer):  # GC-box blocks (64 bp = 10+ boxes) in the central 1,200 bp
        chrom, center = dna.loc[enhancer, "chrom"], int(dna.loc[enhancer, "center"])
        return genome[chrom][center - 600 : center + 600].count(GC_BOX * 10)

    return labels, labels["enhancer"].map({e: blocks(e) for e in labels["enhancer"].unique()})


def test_recipe_demo_command_runs_offline_without_leaks(tmp_path, capsys):
    from dogmacache.cli import main

    assert main(["recipe", "demo", "--out", str(tmp_path)]) == 0
    assert "recipe gasperini" in capsys.readouterr().out
    cdt = pd.read_parquet(tmp_path / "cdt" / "labels.parquet")
    iso = pd.read_parquet(tmp_path / "isoform" / "labels.parquet")
    for table, group in ((cdt, "enhancer"), (iso, "gene_id")):  # no enhancer or gene in two splits
        assert table.groupby(group)["split"].nunique().max() == 1
        assert set(table["split"]) == {"train", "validation", "test"}
    assert len(cdt) == 1060 and len(iso) == 371
    assert (tmp_path / "genome.fa").read_text().startswith(">chr1\n")


def test_the_screen_files_and_chr1_to_chr3_are_unchanged():
    for name, digest in SCREEN_FILES.items():
        assert hashlib.sha256((HERE / name).read_bytes()).hexdigest()[:16] == digest, name
    h = hashlib.sha256()
    names = []
    for name, seq in read_fasta(HERE / "genome.fa.gz"):
        if name not in ("chr4", "chr5"):
            h.update(name.encode() + seq.encode())
            names.append(name)
    assert names == ["chr1", "chr2", "chr3"] and h.hexdigest()[:16] == CHR1_TO_3


def test_demo_isoform_sizes(tmp_path):
    from dogmacache.data_recipes.demo import HOLDOUT_FOLDS, HOLDOUT_TISSUES, build_demo

    manifest = build_demo(tmp_path)["isoform"]
    counts = manifest["counts"]
    assert counts["transcripts_kept"] == 371 and counts["transcripts_without_protein"] == 25
    assert (counts["dna_windows_distinct"], counts["proteins_distinct"]) == (346, 256)
    assert [counts[f"transcripts_{s}"] for s in ("train", "validation", "test")] == [300, 39, 32]
    assert [counts[f"genes_{s}"] for s in ("train", "validation", "test")] == [93, 12, 11]
    rna = pd.read_parquet(tmp_path / "isoform" / "rna_sequences.parquet")["sequence"].str.len()
    assert rna.max() <= 900  # short cDNAs: <= 151 NT tokens, under the demo's cap of 160
    protein = pd.read_parquet(tmp_path / "isoform" / "protein_sequences.parquet")["sequence"].str.len()
    assert protein.max() <= 166  # under the demo's ESM-2 cap of 168 tokens
    assert HOLDOUT_TISSUES == HOLDOUT_FOLDS[0] and manifest["holdout_tissues"] == list(HOLDOUT_FOLDS[0])
    assert len({t for fold in HOLDOUT_FOLDS for t in fold}) == 9


def test_demo_expression_follows_the_hidden_rule(tmp_path):
    """GC-box blocks upstream of a TSS raise expression in every tissue (the shared effect) and more so where u is
    positive (the tissue-specific one); AU-rich blocks in the cDNA lower it everywhere."""
    import json

    from dogmacache.data_recipes.demo import build_demo

    build_demo(tmp_path)
    labels = pd.read_parquet(tmp_path / "isoform" / "labels_log1p.parquet")
    cdna = pd.read_parquet(tmp_path / "isoform" / "rna_sequences.parquet").set_index("id")["sequence"]
    weights = json.loads((HERE / "truth" / "truth.json").read_text())["expression"]["tissues"]
    blocks = labels["dna_id"].map(_gc_blocks(tmp_path))
    assert set(blocks) == {0, 1, 2, 3}
    for tissue in weights:  # the shared effect: more blocks, higher expression, whatever the tissue's sign
        level = labels[tissue].groupby(blocks).mean()
        assert level[3] > level[0], tissue
    up = [t for t in weights if weights[t]["u"] > 0.5]
    down = [t for t in weights if weights[t]["u"] < -0.5]
    slope = {name: labels[group].mean(axis=1).groupby(blocks).mean() for name, group in (("up", up), ("down", down))}
    assert slope["up"][3] - slope["up"][0] > slope["down"][3] - slope["down"][0] + 0.5
    are = labels["id"].map(lambda t: cdna[t].count(ARE_BLOCK))
    assert set(are) == {0, 1, 2, 3}
    level = labels[list(weights)].mean(axis=1).groupby(are).mean()
    assert level[0] > level[1] > level[2] > level[3]
    assert np.isfinite(labels[list(weights)].to_numpy()).all()


def _gc_blocks(recipe: Path):
    genome = _genome()
    windows = pd.read_parquet(recipe / "isoform" / "dna_windows.parquet").set_index("id")

    def count(window_id):  # GC-box blocks in the 512 bp upstream of the window's TSS
        chrom, center, strand = windows.loc[window_id, ["chrom", "center", "strand"]]
        upstream = genome[chrom][center - 513 : center - 1] if strand == "+" else genome[chrom][center : center + 512]
        return upstream.count(GC_BOX * 10) + upstream.count(reverse_complement(GC_BOX * 10))

    return count


def test_a_recipe_stopped_midway_leaves_the_earlier_recipe_whole_or_no_recipe_json(tmp_path, monkeypatch):
    """A rerun (another seed) stopped while it writes its tables leaves the earlier recipe as it was: recipe.json
    and every table of seed 0. Stopped among the renames into place, it leaves no recipe.json, so nothing says the
    folder holds one run's tables. The same command again writes them all."""
    import hashlib
    import json
    import os

    import pytest
    from conftest import interrupt_on_call
    from dogmacache.data_recipes import demo, tables

    def digests():
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "cdt").iterdir() if p.is_file()}

    demo.build_demo(tmp_path)
    recipe = tmp_path / "cdt" / "recipe.json"
    assert json.loads(recipe.read_text())["params"]["seed"] == 0
    before = digests()
    real = interrupt_on_call(monkeypatch, pd.DataFrame, "to_parquet", 2)  # Ctrl-C at the CDT recipe's second table
    with pytest.raises(KeyboardInterrupt):
        demo.build_demo(tmp_path, seed=1)
    assert digests() == before and (tmp_path / "cdt" / tables.STAGING).is_dir()  # seed 0's recipe, whole
    monkeypatch.setattr(pd.DataFrame, "to_parquet", real)
    real_replace = interrupt_on_call(monkeypatch, tables.os, "replace", 2)  # Ctrl-C among the renames
    with pytest.raises(KeyboardInterrupt):
        demo.build_demo(tmp_path, seed=1)
    assert not recipe.exists()
    monkeypatch.setattr(tables.os, "replace", real_replace)
    demo.build_demo(tmp_path, seed=1)
    assert json.loads(recipe.read_text())["params"]["seed"] == 1
    assert not (tmp_path / "cdt" / tables.STAGING).exists() and os.listdir(tmp_path / "cdt")
