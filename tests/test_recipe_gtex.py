"""The GTEx recipe on miniature files in the real formats: labels, TSS, coding masks and filters worked out by hand."""

import dataclasses
import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from dogmacache.cli import main
from dogmacache.data_recipes import gtex
from dogmacache.data_recipes.gtex_masks import coding_masks
from dogmacache.errors import InputError
from gtex_miniature import (
    CONFIG,
    JOIN_COLUMNS,
    KEPT_GENES,
    TISSUES,
    expected_means,
    gct_rows,
    read_outputs,
    shared_window_genes,
    tpm_of,
    write_sources,
)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("gtex")
    names = write_sources(root / "src")
    gtex.build_gtex(names, root / "out", CONFIG)
    return read_outputs(root / "out")


def test_labels_are_log1p_mean_tpm_standardised_with_train_statistics(built):
    tables, manifest = built
    raw, labels = tables["labels_log1p"], tables["labels"]
    assert list(raw.columns) == ["id", "gene_id", "split", *JOIN_COLUMNS, *TISSUES] == list(labels.columns)
    assert len(raw) == KEPT_GENES
    means = expected_means()
    for row in raw.itertuples(index=False):
        np.testing.assert_allclose(np.array(row[6:], dtype=float), np.log1p(means[row.id]), rtol=1e-12)
    alpha = raw.set_index("id").loc["ENST00000000101.3", list(TISSUES)].to_numpy(dtype=float)
    np.testing.assert_allclose(alpha, [np.log1p(2.0), np.log1p(5.0), 0.0])  # the Brain and unannotated samples ignored

    train = raw[raw["split"] == "train"]
    assert 0 < len(train) < len(raw)
    seen = ["Liver", "Muscle"]  # Lung is held out (CONFIG): its own scaling is tested below
    mean, std = train[seen].mean(), train[seen].std(ddof=0)
    expected = (raw[seen] - mean) / std
    np.testing.assert_allclose(labels[seen].to_numpy(), expected.to_numpy(), rtol=1e-10)
    keys = ["id", "gene_id", "split", *JOIN_COLUMNS]
    assert (labels[keys] == raw[keys]).all().all()
    info = tables["tissues"].set_index("tissue")
    np.testing.assert_allclose(info.loc[seen, "train_mean"], mean.to_numpy())
    np.testing.assert_allclose(info.loc[seen, "train_std"], std.to_numpy())
    assert info.loc[seen, "scaled_with"].tolist() == ["own_train", "own_train"]
    assert info["n_samples"].to_dict() == {"Liver": 2, "Lung": 1, "Muscle": 1}
    assert manifest["counts"]["samples_used"] == 4 and manifest["counts"]["samples_without_attributes"] == 1
    assert manifest["counts"]["samples_in_other_tissues"] == 1 and manifest["counts"]["gct_samples"] == 6


def test_windows_are_centred_on_the_tss_with_ucsc_names(built):
    tables = built[0]
    assert list(tables["dna_windows"].columns) == [
        "id",
        "chrom",
        "center",
        "strand",
        "gene_id",
        "gene_name",
        "split",
        "n_transcripts",
    ]
    windows = tables["dna_windows"].set_index("id")
    window_of = tables["labels"].set_index("id")["dna_id"]
    assert window_of["ENST00000000101.3"] == "chr1:1001:+"
    assert windows.loc["chr1:1001:+", ["chrom", "center", "strand"]].tolist() == ["chr1", 1001, "+"]
    assert windows.loc[window_of["ENST00000000102.1"], ["chrom", "center", "strand"]].tolist() == ["chrX", 9000, "-"]
    assert windows.loc[window_of["ENST00000000108.1"], "chrom"] == "chrM"
    assert tables["dna_windows"]["center"].dtype == np.int64
    assert windows.loc["chrX:9000:-", ["gene_id", "gene_name"]].tolist() == ["ENSG00000000102.2", "BETA"]
    for name in ("coding_masks", "rna_sequences"):  # one row per transcript, in the labels' order
        assert tables[name]["id"].tolist() == tables["labels"]["id"].tolist(), name
    assert tables["coding_masks"]["dna_id"].tolist() == tables["labels"]["dna_id"].tolist()


def test_mask_bins_by_hand():
    # 8 bins x 128 bp around TSS 1001 (0-based 1000): the window is 0-based [488, 1512), bin k = [488+128k, 616+128k).
    # CDS 1201-1255 (0-based [1200, 1255)) lies in bin 5; CDS 1490-1700 is clipped to [1489, 1512): bin 7.
    masks = coding_masks(
        np.array([1001]),
        np.array(["+"]),
        np.array([0, 0]),
        np.array([1201, 1490]),
        np.array([1255, 1700]),
        window_bins=8,
        bin_bp=128,
        orientation="reference",
    )
    assert masks.tolist() == [[0, 0, 0, 0, 0, 1, 0, 1]]
    # 1-based 616 is 0-based 615, the last base of bin 0; 617 is the first base of bin 1.
    edge = coding_masks(
        np.array([1001, 1001]),
        np.array(["+", "+"]),
        np.array([0, 1]),
        np.array([600, 617]),
        np.array([616, 617]),
        window_bins=8,
        bin_bp=128,
        orientation="reference",
    )
    assert edge.tolist() == [[1, 0, 0, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0, 0]]


def test_coding_masks_include_the_stop_codon_in_both_orientations(built, tmp_path):
    masks = built[0]["coding_masks"].set_index("id")["mask"]
    assert masks.loc["ENST00000000101.3"].tolist() == [0, 0, 0, 0, 0, 1, 0, 1]
    # BETA, minus strand, TSS 9000: window 0-based [8487, 9511). CDS 8616-8900 = [8615, 8900): bins 1-3;
    # the stop codon 8613-8615 = [8612, 8615) alone reaches bin 0.
    assert masks.loc["ENST00000000102.1"].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    mask_info = dict(built[1]["mask"])
    assert "stop_codon" in mask_info.pop("convention")
    assert mask_info == {"window_bins": 8, "bin_bp": 128, "orientation": "reference", "window_bp": 1024}

    config = gtex.GtexConfig(
        tissues=TISSUES,
        max_gene_length=20_000,
        window_bins=8,
        bin_bp=128,
        mask_orientation="transcript",
        chrom_style="ensembl",
    )
    gtex.build_gtex(write_sources(tmp_path / "src"), tmp_path / "out", config)
    tables, manifest = read_outputs(tmp_path / "out")
    flipped = tables["coding_masks"].set_index("id")["mask"]
    assert flipped.loc["ENST00000000101.3"].tolist() == [0, 0, 0, 0, 0, 1, 0, 1]  # plus strand unchanged
    assert flipped.loc["ENST00000000102.1"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]  # bin 0 = 5'-most
    assert manifest["mask"]["orientation"] == "transcript"
    window_of = tables["labels"].set_index("id")["dna_id"]
    assert window_of.loc[["ENST00000000101.3", "ENST00000000102.1", "ENST00000000108.1"]].tolist() == [
        "1:1001:+",
        "X:9000:-",
        "MT:3307:+",
    ]
    chroms = tables["dna_windows"].set_index("id")["chrom"]
    assert chroms.loc[["1:1001:+", "X:9000:-", "MT:3307:+"]].tolist() == ["1", "X", "MT"]


def test_filters_are_applied_and_counted(built):
    tables, manifest = built
    ids = set(tables["labels"]["id"])
    counts, missing = manifest["counts"], manifest["missing"]
    assert "ENST00000000104.1" not in ids  # retained_intron
    assert "ENST00000000105.1" not in ids  # gene of 30 kb > 20 kb
    assert "ENST00000000106.1" not in ids  # no peptide
    assert "ENST00000000107.3" in ids  # GTEx version kept as the id although the GTF says .4
    assert counts["gct_transcripts"] == 20 and counts["gct_par_y_rows"] == 1
    assert counts["gct_transcripts_not_in_gtf"] == 1 and counts["gct_transcripts_not_protein_coding"] == 1
    assert counts["protein_coding_matched"] == 17
    assert counts["long_genes_excluded"] == 1 and counts["long_gene_transcripts_excluded"] == 1
    assert counts["version_mismatches"] == 1
    assert manifest["version_mismatch_examples"] == ["GTEx ENST00000000107.3 / GTF ENST00000000107.4"]
    assert missing == {"cdna_sequence": 0, "peptide_sequence": 1, "ucsc_chrom_name": 0}
    assert counts["transcripts_without_protein"] == 0
    assert counts["transcripts_kept"] == KEPT_GENES
    proteins = tables["protein_sequences"].set_index("id")["sequence"]
    assert proteins.loc["ENSP00000000101.3"] == "MKTAYIAKQR" * 8  # the trailing '*' removed
    rna = tables["rna_sequences"].set_index("id")["sequence"]
    assert rna.loc["ENST00000000102.1"] == ("ACGT" * 40)[:102]  # wrapped lines joined, upper case


def test_split_by_gene_without_leak(built):
    tables, manifest = built
    labels = tables["labels"]
    for column in ("gene_id", "protein_id"):  # FILL 2k and 2k + 1 share a peptide
        assert labels.groupby(column)["split"].nunique().max() == 1, column
    genes = {s: labels.loc[labels["split"] == s, "gene_id"].nunique() for s in ("train", "validation", "test")}
    assert genes == {"train": 12, "validation": 2, "test": 1}
    assert {k: manifest["counts"][f"genes_{k}"] for k in genes} == genes
    groups = {k: manifest["counts"][k] for k in ("split_groups", "split_groups_merged", "genes_in_merged_groups")}
    assert groups == {"split_groups": 10, "split_groups_merged": 5, "genes_in_merged_groups": 10}


def _linked_splits(labels):
    """(column, the most splits any one value of it sits in) for the gene and the two shared item ids."""
    coding = labels[labels["protein_id"] != ""]
    return {c: (coding if c == "protein_id" else labels).groupby(c)["split"].nunique().max() for c in JOIN_COLUMNS}


def test_genes_sharing_a_window_or_a_peptide_fall_in_one_split(tmp_path):
    names = write_sources(tmp_path / "src", genes=shared_window_genes())  # BETA and VERS: one window
    for seed in range(6):
        gtex.build_gtex(names, tmp_path / f"seed{seed}", dataclasses.replace(CONFIG, seed=seed))
        tables, manifest = read_outputs(tmp_path / f"seed{seed}")
        labels = tables["labels"].set_index("id")
        assert labels.loc[["ENST00000000102.1", "ENST00000000107.3"], "dna_id"].tolist() == ["chrX:9000:-"] * 2
        assert _linked_splits(tables["labels"]) == {"dna_id": 1, "rna_id": 1, "protein_id": 1}, seed
        window_split = tables["dna_windows"].set_index("id")["split"]
        assert (window_split.loc[labels["dna_id"]].to_numpy() == labels["split"].to_numpy()).all()
        counts = manifest["counts"]
        assert (counts["split_groups"], counts["split_groups_merged"], counts["genes_in_merged_groups"]) == (9, 6, 12)
        assert counts["split_group_largest"] == 2 and counts["dna_windows_shared_by_genes"] == 1


def test_holdout_tissues_are_flagged_but_keep_their_labels(built):
    tables, manifest = built
    assert tables["tissues"].set_index("tissue")["held_out"].to_dict() == {
        "Liver": False,
        "Lung": True,
        "Muscle": False,
    }
    assert manifest["holdout_tissues"] == ["Lung"] and "Lung" in tables["labels"].columns


def test_a_held_out_tissue_is_scaled_with_the_seen_tissues_pooled_statistics(built, tmp_path):
    tables, manifest = built
    raw, labels = tables["labels_log1p"], tables["labels"]
    pooled = raw.loc[raw["split"] == "train", ["Liver", "Muscle"]].to_numpy().ravel()  # seen tissues, train split
    mean, std = pooled.mean(), pooled.std()
    np.testing.assert_allclose(labels["Lung"], (raw["Lung"] - mean) / std, rtol=1e-10)
    lung = tables["tissues"].set_index("tissue").loc["Lung"]
    assert lung["held_out"] and lung["scaled_with"] == "seen_pooled_train"
    np.testing.assert_allclose([lung["train_mean"], lung["train_std"]], [mean, std])
    scaling = manifest["holdout_scaling"]
    np.testing.assert_allclose([scaling["mean"], scaling["std"]], [mean, std])
    assert scaling["pooled_over"] == ["Liver", "Muscle"] and scaling["applied_to"] == ["Lung"]

    # The Lung sample (GCT column 2) ten times higher and shifted: Lung's scaling must not move, nor anything seen.
    def lung_changed(row):
        values = tpm_of(row)
        return [*values[:2], 10 * values[2] + 3, *values[3:]]

    gtex.build_gtex(write_sources(tmp_path / "src", tpm=lung_changed), tmp_path / "out", CONFIG)
    changed, _ = read_outputs(tmp_path / "out")
    assert not np.allclose(changed["labels_log1p"]["Lung"], raw["Lung"])
    columns = ["train_mean", "train_std", "scaled_with"]
    pd.testing.assert_frame_equal(changed["tissues"][columns], tables["tissues"][columns])
    np.testing.assert_allclose(changed["labels"][["Liver", "Muscle"]], labels[["Liver", "Muscle"]])


def test_holding_out_every_tissue_is_refused(tmp_path):
    config = gtex.GtexConfig(tissues=TISSUES, max_gene_length=20_000, window_bins=8, holdout_tissues=TISSUES)
    with pytest.raises(InputError, match=r"all 3 tissues are held out; .*leave at least one tissue out"):
        gtex.build_gtex(write_sources(tmp_path / "src"), tmp_path / "out", config)


def test_tissue_profiles_hold_train_genes_only(built):
    tables, _ = built
    windows, profiles = (
        tables["labels"].merge(
            tables["dna_windows"][["id", "gene_name"]].rename(columns={"id": "dna_id"}), on="dna_id"
        ),
        tables["tissue_profiles"],
    )
    train = windows[windows["split"] == "train"].drop_duplicates("gene_id").sort_values("gene_id")
    assert profiles["id"].tolist() == list(TISSUES)
    assert list(profiles.columns[1:]) == train["gene_name"].tolist()
    held = set(windows.loc[windows["split"] != "train", "gene_name"])
    assert held and not held & set(profiles.columns)
    # gene TPM = sum over all the gene's GTEx transcripts (GAMMA's retained intron included)
    means = expected_means()
    gene_of = dict(gct_rows())
    for gene_id, name in zip(train["gene_id"], train["gene_name"], strict=True):
        total = sum(m for t, m in means.items() if gene_of[t] == gene_id)
        np.testing.assert_allclose(profiles[name].to_numpy(), np.log1p(total), rtol=1e-12)


def test_detailed_tissue_column_with_every_tissue(tmp_path):
    config = gtex.GtexConfig(tissues=(), tissue_column="SMTSD", max_gene_length=20_000, window_bins=8)
    gtex.build_gtex(write_sources(tmp_path / "src"), tmp_path / "out", config)
    tables, _ = read_outputs(tmp_path / "out")
    assert tables["tissues"]["tissue"].tolist() == ["Brain - Cortex", "Liver", "Lung", "Muscle - Skeletal"]
    brain = tables["labels_log1p"].set_index("id").loc["ENST00000000101.3", "Brain - Cortex"]
    assert brain == pytest.approx(np.log1p(100.0))


def test_gct_without_version_line_is_rejected(tmp_path):
    names = write_sources(tmp_path, first_gct_line="#1.3")
    with pytest.raises(InputError, match=r"transcript_tpm\.gct\.gz is not GCT 1\.2.*'#1\.2'"):
        gtex.build_gtex(names, tmp_path / "out", CONFIG)


def test_attributes_without_tissue_column_are_rejected(tmp_path):
    names = write_sources(tmp_path, tissue_column="TISSUE")
    with pytest.raises(InputError, match=r"SampleAttributesDS\.txt has no column 'SMTS'"):
        gtex.build_gtex(names, tmp_path / "out", CONFIG)


@pytest.mark.parametrize("key", ["tpm", "gtf", "cdna"])
def test_truncated_gzip_is_rejected_naming_the_file(tmp_path, key):
    names = write_sources(tmp_path)
    data = names[key].read_bytes()
    names[key].write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputError, match=rf"{names[key].name} is truncated or not valid gzip"):
        gtex.build_gtex(names, tmp_path / "out", CONFIG)


def test_unknown_or_inconsistent_tissues_are_rejected(tmp_path):
    names = write_sources(tmp_path)
    with pytest.raises(InputError, match=r"tissue 'Kidney' has no GCT sample in column SMTS"):
        gtex.build_gtex(names, tmp_path / "out", gtex.GtexConfig(tissues=("Liver", "Kidney")))
    with pytest.raises(InputError, match=r"held-out tissue 'Brain' is not among the tissues"):
        gtex.GtexConfig(tissues=TISSUES, holdout_tissues=("Brain",))
    with pytest.raises(InputError, match=r"mask_orientation 'sideways'"):
        gtex.GtexConfig(mask_orientation="sideways")


def test_a_held_out_tissue_of_no_sample_is_refused_with_every_tissue_selected(tmp_path):
    """With no --tissues the config cannot check the held-out names; the recipe must, or a name of the other
    column ("Brain" under SMTSD, whose name is "Brain - Cortex") would hold nothing out and say it did."""
    names = write_sources(tmp_path / "src")
    config = gtex.GtexConfig(tissues=(), tissue_column="SMTSD", max_gene_length=20_000, window_bins=8)
    with pytest.raises(
        InputError, match=r"held-out tissue 'Brain' has no GCT sample in column SMTSD.*'Brain - Cortex'"
    ):
        gtex.build_gtex(names, tmp_path / "out", dataclasses.replace(config, holdout_tissues=("Brain",)))
    assert not (tmp_path / "out").exists()
    gtex.build_gtex(names, tmp_path / "out", dataclasses.replace(config, holdout_tissues=("Brain - Cortex",)))
    tissues = pd.read_parquet(tmp_path / "out" / "tissues.parquet")
    assert tissues.set_index("tissue")["held_out"].to_dict() == {
        "Brain - Cortex": True,
        "Liver": False,
        "Lung": False,
        "Muscle - Skeletal": False,
    }


def test_a_sample_attributes_row_cut_short_is_refused(tmp_path):
    """A row ending before its tissue column would drop its sample without a word."""
    names = write_sources(tmp_path)
    lines = names["attributes"].read_text().splitlines()
    lines[2] = "\t".join(lines[2].split("\t")[:4])  # ends after SAMPID, before SMRIN and SMTS
    names["attributes"].write_text("\n".join(lines) + "\n")
    with pytest.raises(
        InputError, match=r"SampleAttributesDS\.txt line 3 column 5 .*ends early, with 4 of the header's 7"
    ):
        gtex.build_gtex(names, tmp_path / "out", CONFIG)


def test_cli_runs_from_a_source_folder(tmp_path):
    names = write_sources(tmp_path / "src")
    code = main(
        [
            "recipe",
            "gtex",
            "--out",
            str(tmp_path / "out"),
            "--source-dir",
            str(tmp_path / "src"),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--tissues",
            "Liver,Lung,Muscle",
            "--holdout-tissues",
            "Liver",
            "--max-gene-length",
            "20000",
            "--window-bins",
            "8",
            "--seed",
            "3",
        ]
    )
    assert code == 0
    manifest = json.loads((tmp_path / "out" / "recipe.json").read_text())
    assert manifest["params"]["seed"] == 3 and manifest["params"]["holdout_tissues"] == ["Liver"]
    assert manifest["sources"]["tpm"]["sha256"] == hashlib.sha256(names["tpm"].read_bytes()).hexdigest()
    written = json.loads((tmp_path / "out" / "recipe.json").read_text())
    assert written["counts"]["transcripts_kept"] == KEPT_GENES
    tissues = pd.read_parquet(tmp_path / "out" / "tissues.parquet")
    assert tissues.loc[tissues["held_out"], "tissue"].tolist() == ["Liver"]
    assert not (tmp_path / "cache").exists()  # everything came from --source-dir
