"""The GTEx recipe's item tables: shared TSS windows and peptides are one row each and every labels row names its
rows; non-coding transcripts are kept without a protein; a transcript in two GCT rows is refused; the stated cache
sizes worked out by hand."""

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dogmacache.cli import main
from dogmacache.data_recipes import gtex
from dogmacache.data_recipes.gtex_items import join_ids
from dogmacache.data_recipes.gtex_sizes import CacheSizeConfig, esm_tokens, expected_cache_bytes, nt_tokens
from dogmacache.errors import InputError
from gtex_miniature import CONFIG, TISSUES, peptide_of, read_outputs, write_sources

ALL = gtex.GtexConfig(tissues=TISSUES, max_gene_length=20_000, window_bins=8, bin_bp=128, transcripts="all")
README = Path(__file__).resolve().parents[1] / "data_recipes" / "README.md"


@pytest.fixture(scope="module")
def every_biotype(tmp_path_factory):
    root = tmp_path_factory.mktemp("gtex_all")
    gtex.build_gtex(write_sources(root / "src"), root / "out", ALL)
    return read_outputs(root / "out")


def test_shared_windows_and_peptides_are_one_row_each(every_biotype):
    tables, manifest = every_biotype
    labels, windows, proteins = tables["labels"], tables["dna_windows"], tables["protein_sequences"]
    # GAMMA's coding transcript and its retained intron start at the same TSS: one window, two transcripts
    gamma = labels.set_index("id").loc[["ENST00000000103.1", "ENST00000000104.1"], "dna_id"]
    assert gamma.tolist() == ["chr2:20001:+", "chr2:20001:+"]
    assert windows.set_index("id").loc["chr2:20001:+", "n_transcripts"] == 2
    assert len(windows) == len(labels) - 1 == 15 and windows["id"].is_unique
    # FILL0-9 carry five peptides, each on two genes (named by the smaller protein id); the other five genes one
    # each: 10 rows for 15 coding transcripts
    shared = {f"ENSP0000000020{n}.1": 2 for n in (0, 2, 4, 6, 8)}
    own = {f"ENSP00000000{n}": 1 for n in ("101.3", "102.1", "103.1", "107.4", "108.1")}
    assert proteins.set_index("id")["n_transcripts"].to_dict() == own | shared
    counts = manifest["counts"]
    assert (counts["dna_windows_distinct"], counts["proteins_distinct"]) == (15, 10)


def test_every_labels_row_joins_its_own_window_cdna_and_peptide(every_biotype):
    tables, _ = every_biotype
    labels = tables["labels"]
    windows = tables["dna_windows"].set_index("id")
    rna = tables["rna_sequences"].set_index("id")["sequence"]
    proteins = tables["protein_sequences"].set_index("id")["sequence"]
    assert (labels["rna_id"] == labels["id"]).all() and set(labels["rna_id"]) == set(rna.index)
    assert set(labels["dna_id"]) == set(windows.index)  # every window used, every id resolves
    coding = labels[labels["protein_id"] != ""]
    assert set(coding["protein_id"]) == set(proteins.index) and len(coding) == 15
    for row in coding.itertuples(index=False):
        assert proteins[row.protein_id] == peptide_of(row.id.split(".")[0]), row.id
    alpha = windows.loc[labels.set_index("id").loc["ENST00000000101.3", "dna_id"]]
    assert [alpha["chrom"], alpha["center"], alpha["strand"]] == ["chr1", 1001, "+"]
    assert tables["labels_log1p"][["id", "dna_id", "rna_id", "protein_id"]].equals(
        labels[["id", "dna_id", "rna_id", "protein_id"]]
    )


def test_a_non_coding_transcript_is_kept_with_an_empty_protein_id(every_biotype, tmp_path):
    tables, manifest = every_biotype
    labels = tables["labels"].set_index("id")
    assert labels.loc["ENST00000000104.1", "protein_id"] == ""  # retained intron: no peptide record
    assert tables["coding_masks"].set_index("id").loc["ENST00000000104.1", "mask"].tolist() == [0] * 8
    assert "ENST00000000104.1" in set(tables["rna_sequences"]["id"])
    assert "ENST00000000106.1" not in labels.index  # a protein-coding transcript without its peptide: dropped
    assert manifest["counts"]["transcripts_without_protein"] == 1 and manifest["missing"]["peptide_sequence"] == 1
    gtex.build_gtex(write_sources(tmp_path / "src"), tmp_path / "out", CONFIG)  # the default: protein-coding only
    default, _ = read_outputs(tmp_path / "out")
    assert "ENST00000000104.1" not in set(default["labels"]["id"]) and (default["labels"]["protein_id"] != "").all()


@pytest.mark.parametrize("version", ["3", "4"], ids=["same-row-twice", "two-versions"])
def test_a_transcript_in_two_gct_rows_is_one_line_naming_the_file_and_the_transcript(tmp_path, version):
    paths = write_sources(tmp_path / "src")
    with gzip.open(paths["tpm"], "rt") as fh:
        lines = fh.read().splitlines()
    first = lines[3].split("\t")
    assert first[0] == "ENST00000000101.3"
    lines.insert(4, "\t".join([f"ENST00000000101.{version}", *first[1:]]))
    lines[1] = f"{len(lines) - 3}\t{lines[1].split()[1]}"
    with gzip.open(paths["tpm"], "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    named = rf"transcript ENST00000000101 has 2 rows \(ENST00000000101.3, ENST00000000101.{version};"
    with pytest.raises(InputError, match=rf"transcript_tpm.gct.gz: {named}.*lists each transcript once") as err:
        gtex.build_gtex(paths, tmp_path / "out", CONFIG)
    assert "\n" not in str(err.value)


def test_windows_at_one_tss_on_both_strands_share_a_site():
    """A window is cut from the reference strand: a bidirectional promoter's '+' and '-' windows are two DNA items
    (dna_id) that read the same bases (dna_site), for linking split groups."""
    kept = pd.DataFrame(
        {
            "id": ["T1", "T2", "T3"],
            "chrom": ["chr1", "chr1", "chr1"],
            "center": [10_000, 10_000, 10_001],
            "strand": ["+", "-", "+"],
            "peptide": ["", "", ""],
            "peptide_id": ["", "", ""],
        }
    )
    ids = join_ids(kept)
    assert ids["dna_id"].tolist() == ["chr1:10000:+", "chr1:10000:-", "chr1:10001:+"]
    assert ids["dna_site"].tolist() == ["chr1:10000", "chr1:10000", "chr1:10001"]


def test_token_counts_by_hand():
    # NT: <cls> + 6-mers + leftover bases: 13 bp = 1 + 2 + 1; 20 bp = 1 + 3 + 2 = 6, capped at 5; 1 bp = 1 + 0 + 1
    assert nt_tokens([13, 20, 1], max_tokens=5).tolist() == [4, 5, 2]
    assert nt_tokens([12_282, 50_000], max_tokens=2048).tolist() == [
        2048,
        2048,
    ]  # 12 kb = 2,047 6-mers + <cls>
    assert esm_tokens([3, 1022, 5000], max_tokens=1024).tolist() == [
        5,
        1024,
        1024,
    ]  # <cls> + residues + <eos>


def test_expected_cache_bytes_by_hand():
    config = CacheSizeConfig(
        dna_width=3,
        rna_width=2,
        rna_max_tokens=5,
        protein_width=4,
        protein_max_tokens=4,
        bytes_per_value=2,
        max_positions=3,
    )
    sizes = expected_cache_bytes(2, 4, [13, 20, 1], [3], config)
    # DNA: 2 windows x 4 bins x 3 wide x 2 B = 48; at K=3: 2 x 3 x 3 x 2 = 36
    assert {k: sizes["dna"][k] for k in ("full", "full_real", "max_positions_3", "max_positions_3_real")} == {
        "full": 48,
        "full_real": 48,
        "max_positions_3": 36,
        "max_positions_3_real": 36,
    }
    # RNA: tokens 4, 5, 2 (cap 5) x 2 wide x 2 B: padded 3 x 5 x 4 = 60, real 11 x 4 = 44; K=3: 3 x 3 x 4 = 36,
    # real (3 + 3 + 2) x 4 = 32
    assert {k: sizes["rna"][k] for k in ("full", "full_real", "max_positions_3", "max_positions_3_real")} == {
        "full": 60,
        "full_real": 44,
        "max_positions_3": 36,
        "max_positions_3_real": 32,
    }
    assert sizes["rna"]["positions_real"] == 11 and sizes["rna"]["items"] == 3
    # protein: 3 residues + 2 = 5 tokens, capped at 4, x 4 wide x 2 B = 32; at K=3: 24
    assert (sizes["protein"]["full"], sizes["protein"]["max_positions_3"]) == (32, 24)
    assert sizes["total"]["full"] == 48 + 60 + 32 and sizes["total"]["max_positions_3_real"] == 36 + 32 + 24


def test_recipe_json_states_the_sizes_of_its_own_tables(every_biotype, capsys):
    tables, manifest = every_biotype
    stated = manifest["expected_cache_bytes"]
    again = expected_cache_bytes(
        len(tables["dna_windows"]),
        8,
        tables["rna_sequences"]["sequence"].str.len(),
        tables["protein_sequences"]["sequence"].str.len(),
        CacheSizeConfig(),
    )
    assert stated == json.loads(json.dumps(again))
    assert stated["dna"]["full"] == 15 * 8 * 3072 * 2 and stated["protein"]["items"] == 10
    assert stated["rna"]["max_positions_128"] == 16 * 128 * 1024 * 2


def test_cli_options_reach_the_stated_sizes(tmp_path, capsys):
    write_sources(tmp_path / "src")
    assert (
        main(
            [
                "recipe",
                "gtex",
                "--out",
                str(tmp_path / "out"),
                "--source-dir",
                str(tmp_path / "src"),
                "--tissues",
                "Liver,Lung,Muscle",
                "--max-gene-length",
                "20000",
                "--window-bins",
                "8",
                "--transcripts",
                "all",
                "--max-positions",
                "64",
                "--rna-width",
                "512",
                "--rna-max-tokens",
                "1000",
            ]
        )
        == 0
    )
    assert re.search(r"expected cache bytes .*dna 15 items .*K=64", capsys.readouterr().out)
    manifest = json.loads((tmp_path / "out" / "recipe.json").read_text())
    rna = manifest["expected_cache_bytes"]["rna"]
    assert (rna["width"], rna["positions_cap"], rna["max_positions_64"]) == (512, 1000, 16 * 64 * 512 * 2)
    assert manifest["params"]["transcripts"] == "all" and manifest["params"]["cache_sizes"]["max_positions"] == 64


def test_bad_size_settings_and_transcript_sets_are_refused():
    with pytest.raises(InputError, match=r"cache size setting max_positions is 0; expected a positive whole number"):
        CacheSizeConfig(max_positions=0)
    with pytest.raises(InputError, match=r"GTEx transcripts 'coding' is not one of \('protein_coding', 'all'\)"):
        gtex.GtexConfig(transcripts="coding")


def test_readme_real_scale_estimates_are_what_the_function_computes():
    """README's real-GTEx table: 90,000 transcripts (IsoFormer's protein-coding count), no window or peptide shared
    and every cDNA and peptide at its cap, so each figure is an upper bound."""
    n = 90_000
    sizes = expected_cache_bytes(n, 896, [12_282] * n, [1_022] * n, CacheSizeConfig())
    text = README.read_text()
    for modality in ("dna", "rna", "protein", "total"):
        for key in ("full", "max_positions_128"):
            shown = f"{sizes[modality][key] / 1e9:,.1f} GB"
            assert shown in text, (modality, key, shown)
    assert np.isclose(sizes["dna"]["full"], n * 896 * 3072 * 2)
