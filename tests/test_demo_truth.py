"""The demo's planted truth (truth/): motifs where the genome has them, the null twin's labels independent of the
inputs, coding masks a position prior cannot match, Bio-DTA's genes and tokens, matched held-out folds."""

import json
import time

import numpy as np
import pandas as pd
import pytest
from dogmacache.contracts.sequences import reverse_complement
from dogmacache.data_recipes.demo_layout import DECOY_ATG, GC_BLOCK, KOZAK_PATTERN, PROMOTER_MOTIF
from dogmacache.data_recipes.formats import read_fasta
from dogmacache.data_recipes.make_demo_data import ARE_BLOCK, HERE, write_demo_data
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

MOTIFS = {"gc_box": GC_BLOCK, "tata": PROMOTER_MOTIF, "are": ARE_BLOCK, "decoy_atg": DECOY_ATG}


@pytest.fixture(scope="module")
def null(tmp_path_factory):
    folder = tmp_path_factory.mktemp("null")
    start = time.perf_counter()
    write_demo_data(folder, null=True)
    assert time.perf_counter() - start < 20  # a few seconds on a quiet core
    return folder


def _truth(folder=HERE) -> dict:
    return json.loads((folder / "truth" / "truth.json").read_text())


def test_truth_bed_rows_lie_on_the_planted_motifs():
    genome = {name: seq.upper() for name, seq in read_fasta(HERE / "genome.fa.gz")}
    bed = pd.read_csv(HERE / "truth" / "truth.bed", sep="\t", header=None, names=["c", "a", "b", "kind", "s", "st"])
    assert set(bed["kind"]) == {"gc_box", "tata", "are", "kozak_atg", "decoy_atg", "at_decoy"}
    assert ((bed["a"] >= 0) & (bed["a"] < bed["b"])).all()
    assert (bed["b"] <= bed["c"].map({c: len(s) for c, s in genome.items()})).all()
    for c, a, b, kind, score, strand in bed.itertuples(index=False):
        bases = genome[c][a:b]
        sense = bases if strand == "+" else reverse_complement(bases)
        if kind in MOTIFS:
            assert sense == MOTIFS[kind], (c, a, kind)
        elif kind == "kozak_atg":
            assert KOZAK_PATTERN.fullmatch(sense[3:]) and sense.startswith("GCC"), (c, a)
        else:
            assert set(bases) <= {"A", "T"}, (c, a)
        assert score == (0 if kind in ("decoy_atg", "at_decoy") else 1000)
    counts = bed["kind"].value_counts()
    assert counts["gc_box"] > 500 and counts["tata"] > 500 and counts["kozak_atg"] > 200


def test_the_null_twin_keeps_the_inputs_and_unties_the_labels(null, tmp_path):
    from test_demo_data import _screen

    for name in ("genome.fa.gz", "Homo_sapiens.GRCh38.88.gtf.gz", "Homo_sapiens.GRCh38.cdna.all.fa.gz"):
        assert (null / name).read_bytes() == (HERE / name).read_bytes(), name
    assert _truth(null)["null"] is True and _truth()["null"] is False
    for folder, low, high in ((HERE, 0.5, 1.0), (null, 0.0, 0.15)):
        labels, active = _screen(folder, tmp_path / folder.name)
        rho = abs(spearmanr(labels["beta"], active).statistic)
        assert low <= rho <= high, (folder, rho)


def test_the_null_twins_expression_and_tokens_ignore_the_sequence(null, tmp_path):
    from dogmacache.data_recipes.demo import build_demo

    for folder, low, high in ((HERE, 0.5, 1.0), (null, 0.0, 0.15)):
        build_demo(tmp_path / folder.name, data=folder)
        labels = pd.read_parquet(tmp_path / folder.name / "isoform" / "labels_log1p.parquet")
        tissues = list(_truth()["expression"]["tissues"])
        cdna = pd.read_parquet(tmp_path / folder.name / "isoform" / "rna_sequences.parquet").set_index("id")
        are = labels["id"].map(lambda t, cdna=cdna: cdna.loc[t, "sequence"].count(ARE_BLOCK))
        rho = abs(spearmanr(labels[tissues].mean(axis=1), are).statistic)
        assert low * 0.6 <= rho <= high, (folder, rho)  # the AU-rich effect is the weaker one
        tokens = pd.read_csv(folder / "truth" / "gene_tokens.tsv", sep="\t", index_col="symbol")
        features = pd.DataFrame(_truth(folder)["biodta"]["genes"], index=["gc", "tata"]).T.loc[tokens.index]
        projection = np.array(_truth()["biodta"]["projection"])
        fitted = (features.to_numpy() - 1.5) @ projection.T
        r = abs(np.corrcoef(fitted.ravel(), tokens.to_numpy().ravel())[0, 1])
        assert low <= r <= high, (folder, r)


def test_coding_masks_are_not_predictable_from_position_alone(tmp_path):
    """The position prior (each bin's coding frequency per strand over the training transcripts) on the test
    transcripts: far below a model that reads the Kozak start and the codons."""
    from dogmacache.data_recipes.demo import build_demo

    build_demo(tmp_path)
    masks = pd.read_parquet(tmp_path / "isoform" / "coding_masks.parquet")
    masks = masks.merge(pd.read_parquet(tmp_path / "isoform" / "labels.parquet")[["id", "split"]], on="id")
    strand = masks["dna_id"].str[-1].to_numpy()
    flags = np.stack(masks["mask"].to_list()).astype(float)
    train = (masks["split"] == "train").to_numpy()
    prior = np.stack([flags[train & (strand == s)].mean(0) for s in strand])
    auroc = {
        s: roc_auc_score(flags[k].ravel(), prior[k].ravel()) for s in ("train", "test") for k in [masks.split == s]
    }
    assert auroc["test"] < 0.85 and auroc["train"] < 0.85, auroc
    assert 0.05 < flags.mean() < 0.2 and (flags[:, :4].any(1) | flags[:, 4:].any(1)).mean() > 0.3


def test_biodta_has_its_genes_tokens_and_test_split(tmp_path):
    from dogmacache.data_recipes.gene_tss import build_gene_tss

    tokens = pd.read_csv(HERE / "truth" / "gene_tokens.tsv", sep="\t", index_col="symbol")
    assert tokens.shape[1] == 32 and len(tokens) == 436 and tokens.index.str.startswith("REG").sum() == 320
    manifest = build_gene_tss(HERE / "Homo_sapiens.GRCh38.88.gtf.gz", list(tokens.index), tmp_path)
    assert manifest["counts"]["genes_kept"] == 436 and manifest["counts"]["genes_test"] >= 40
    targets = (HERE / "truth" / "targets.txt").read_text().split()
    truth = _truth()["targets"]
    assert targets == truth["genes"] and len(targets) == 10 and truth["perturbed_gene"] not in targets
    assert all(t.startswith(("DEMO", "ISO")) for t in targets)  # genes the tissue profiles measure


def test_held_out_folds_are_not_easier_than_the_seen_tissues():
    folds = _truth()["folds"]["folds"]
    assert [f["held_out"] for f in folds][0][0] == "Heart" and len(folds) == 3
    for fold in folds:
        for name in ("u", "v"):
            assert fold[f"{name}_mean_held_out"] >= fold[f"{name}_mean_seen"], fold
            assert fold[f"{name}_mean_held_out"] <= fold[f"{name}_mean_seen"] + 0.15, fold


def test_the_biodta_scgpt_carries_the_planted_rows_and_keeps_the_rest(tmp_path):
    import torch
    from dogmacache.demo.biodta import write_biodta_scgpt
    from dogmacache.embed.adapters.scgpt_model import load_checkpoint
    from dogmacache.embed.tiny import make_tiny

    make_tiny(tmp_path / "models", names=("scgpt",))
    folder = write_biodta_scgpt(tmp_path)
    tokens = pd.read_csv(HERE / "truth" / "gene_tokens.tsv", sep="\t", index_col="symbol")
    planted = load_checkpoint(str(folder), torch.device("cpu"))
    tiny = load_checkpoint(str(tmp_path / "models" / "scgpt"), torch.device("cpu"))
    assert list(planted.vocab)[: len(tokens)] == list(tokens.index) and len(planted.vocab) == len(tokens) + 3
    rows = planted.model.encoder.embedding.weight.detach().numpy()
    np.testing.assert_allclose(rows[: len(tokens)], tokens.to_numpy(), atol=1e-6)
    np.testing.assert_array_equal(rows[-1], tiny.model.encoder.embedding.weight.detach().numpy()[-1])  # <eoc>
    for name, weight in tiny.model.state_dict().items():
        if name != "encoder.embedding.weight":
            assert torch.equal(weight, planted.model.state_dict()[name]), name
