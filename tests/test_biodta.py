"""Bio-DTA: the gene_tss recipe on a hand-written GTF, retrieval ranks by hand, pooling, and a tiny run on caches
where the token is a linear function of the DNA (the adapter must beat the mean-token baseline)."""

import dataclasses
import gzip

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import write_cache
from dogmacache.data_recipes.gene_tss import build_gene_tss
from dogmacache.errors import DogmaError, InputError
from dogmacache.train.config import OutputConfig
from dogmacache.train.registry import default_config
from dogmacache.train.run import run_training
from dogmacache.train.tasks.biodta import TokenAdapter, retrieval

GTF_LINES = [
    "#!genome-build test",
    '1\tt\tgene\t100\t900\t.\t+\t.\tgene_id "G1"; gene_name "AAA";',
    '1\tt\ttranscript\t150\t900\t.\t+\t.\tgene_id "G1"; transcript_id "T1"; gene_name "AAA";',
    '2\tt\tgene\t1000\t5000\t.\t-\t.\tgene_id "G2"; gene_name "BBB";',
    'X\tt\tgene\t10\t20\t.\t+\t.\tgene_id "G4"; gene_name "BBB";',  # a second gene with the symbol: chr2 wins
    '3\tt\tgene\t300\t400\t.\t-\t.\tgene_id "G3"; gene_name "CCC";',
]


def _gtf(tmp_path, lines=GTF_LINES):
    path = tmp_path / "genes.gtf.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def test_gene_tss_windows_at_each_genes_tss(tmp_path):
    genes = tmp_path / "genes.txt"
    genes.write_text("BBB\nAAA\n# comment\nZZZ\n")
    manifest = build_gene_tss(_gtf(tmp_path), genes, tmp_path / "out", seed=0, fractions=(0.5, 0.5, 0.0))
    windows = pd.read_parquet(tmp_path / "out" / "dna_windows.parquet")
    assert windows.to_dict("records") == [
        {"id": "BBB", "chrom": "2", "center": 5000, "strand": "-", "gene_id": "G2"},  # '-': the gene's end
        {"id": "AAA", "chrom": "1", "center": 100, "strand": "+", "gene_id": "G1"},
    ]
    labels = pd.read_parquet(tmp_path / "out" / "genes.parquet")
    assert sorted(labels["split"]) == ["train", "validation"]
    assert manifest["missing"]["listed_genes_not_in_gtf"] == 1
    assert manifest["counts"]["gtf_symbols_on_several_genes"] == 1


def test_gene_tss_reads_a_vocab_json_and_splits_by_seed(tmp_path):
    vocab = tmp_path / "vocab.json"
    vocab.write_text('{"AAA": 0, "BBB": 1, "CCC": 2, "<pad>": 3, "<cls>": 4}')
    build_gene_tss(_gtf(tmp_path), vocab, tmp_path / "a", seed=3)
    build_gene_tss(_gtf(tmp_path), vocab, tmp_path / "b", seed=3)
    a, b = (pd.read_parquet(tmp_path / n / "genes.parquet") for n in ("a", "b"))
    assert list(a["id"]) == ["AAA", "BBB", "CCC"] and a.equals(b)


def test_gene_tss_errors_name_the_file_and_line(tmp_path):
    bad = [*GTF_LINES[:3], '2\tt\tgene\tx100\t5000\t.\t-\t.\tgene_id "G2"; gene_name "BBB";']
    with pytest.raises(InputError, match=r"line 4 column 4 \(start\): 'x100' is not a 1-based position"):
        build_gene_tss(_gtf(tmp_path, bad), ["AAA"], tmp_path / "out")
    with pytest.raises(InputError, match=r"none of the 1 listed genes \(e.g. \['QQQ'\]\) is a gene_name"):
        build_gene_tss(_gtf(tmp_path), ["QQQ"], tmp_path / "out")
    genes = tmp_path / "genes.txt"
    genes.write_text("AAA\nBB B\n")
    with pytest.raises(InputError, match=r"genes.txt line 2: 'BB B' is not one gene symbol"):
        build_gene_tss(_gtf(tmp_path), genes, tmp_path / "out")


def test_retrieval_ranks_by_hand():
    tokens = np.array([[1, 0], [0, 1], [-1, 0], [1, 1]], dtype=np.float32)
    predictions = np.array([[1, 0.1], [1, 0.1], [0, 1]], dtype=np.float32)
    # gene 0 (token [1,0]) ranks first; token [1,1] comes second for [1, 0.1]; gene 2's own token [0,1] ranks 1
    ranks = retrieval(predictions, tokens, np.array([0, 3, 1]))
    assert ranks.tolist() == [1, 2, 1]
    constant = retrieval(np.zeros((1, 2), np.float32), tokens, np.array([0]))
    assert constant.tolist() == [4]  # all ties: a zero prediction ranks last


def test_attention_pooling_starts_as_the_mean_and_can_focus():
    torch.manual_seed(0)
    model = TokenAdapter(dna_width=6, token_width=3, hidden=8, pooling="attention", dropout=0.0).eval()
    mean = TokenAdapter(dna_width=6, token_width=3, hidden=8, pooling="mean", dropout=0.0).eval()
    mean.load_state_dict({k: v for k, v in model.state_dict().items() if k != "query"})
    dna = torch.randn(2, 5, 6)
    assert torch.allclose(model(dna), mean(dna), atol=1e-6)
    with torch.no_grad():
        model.query.copy_(50 * model.norm(dna)[0, 2])  # a query equal to one position's features
    weights = model.pool_weights(dna)
    assert torch.allclose(weights.sum(1), torch.ones(2)) and weights[0, 2] > 0.9


def _task_caches(tmp_path, n_genes=40, extra_tokens=10):
    rng = np.random.default_rng(0)
    genes = [f"G{i:02d}" for i in range(n_genes)]
    vocab = genes + [f"X{i}" for i in range(extra_tokens)]  # tokens of genes without a window: retrieval decoys
    tokens = rng.normal(size=(len(vocab), 5)).astype(np.float32)
    projection = rng.normal(size=(5, 6)).astype(np.float32)
    dna = np.repeat((tokens[:n_genes] @ projection)[:, None, :], 4, axis=1)  # (N, L=4, D=6)
    dna += 0.05 * rng.normal(size=dna.shape).astype(np.float32)
    write_cache(tmp_path / "dna.zarr", dna, ids=genes, dtype="float32")
    write_cache(tmp_path / "tokens.zarr", tokens, ids=vocab, modality="gene", pooling="token", dtype="float32")
    split = ["train"] * 28 + ["validation"] * 6 + ["test"] * 6
    pd.DataFrame({"id": genes, "split": split}).to_parquet(tmp_path / "genes.parquet")
    return genes


def _config(tmp_path, **model):
    base = default_config("biodta")
    return dataclasses.replace(
        base,
        data=dataclasses.replace(
            base.data,
            labels=str(tmp_path / "genes.parquet"),
            dna_cache=str(tmp_path / "dna.zarr"),
            token_cache=str(tmp_path / "tokens.zarr"),
        ),
        model=dataclasses.replace(base.model, hidden=32, dropout=0.0, **model),
        train=dataclasses.replace(
            base.train, epochs=60, batch_size=8, lr=1e-2, num_workers=0, device="cpu", early_stop_patience=60
        ),
        output=OutputConfig(dir=str(tmp_path / "run"), resume=False),
    )


def test_adapter_learns_tokens_and_beats_the_mean_token(tmp_path):
    _task_caches(tmp_path)
    summary = run_training(_config(tmp_path, loss="both"), progress=False)
    adapter, baseline = summary["models"]["biodta"]["test"], summary["models"]["mean_token"]["test"]
    assert adapter["n_tokens"] == 50 and adapter["n"] == 6 * 5
    assert adapter["cosine"] > baseline["cosine"] + 0.3
    assert adapter["mean_rank"] < baseline["mean_rank"]
    assert 0 <= baseline["top1"] <= adapter["top1"] <= adapter["top10"] <= 1


def test_a_gene_without_a_token_is_named(tmp_path):
    _task_caches(tmp_path)
    write_cache(
        tmp_path / "few.zarr", np.ones((3, 5), np.float32), ids=["G00", "G01", "G02"], modality="gene", pooling="token"
    )
    config = _config(tmp_path)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, token_cache=str(tmp_path / "few.zarr")))
    with pytest.raises(DogmaError, match=r"37 of 40 ids are not in .*few.zarr \(e.g. \['G03'"):
        run_training(config, progress=False)


def test_demo_config_round_trips_through_toml(tmp_path):
    from dogmacache.demo.biodta import biodta_config
    from dogmacache.train.config import to_toml
    from dogmacache.train.registry import load_config

    config = biodta_config(tmp_path, tmp_path / "recipe", {"dna": tmp_path / "d.zarr", "gene": tmp_path / "g.zarr"})
    (tmp_path / "c.toml").write_text(to_toml(config))
    assert load_config(tmp_path / "c.toml") == config and config.model.loss == "both"


def test_the_null_moves_a_genes_token_and_the_row_its_retrieval_ranks_together():
    """Bio-DTA's permutation null: the target token and `token_row` move as one, so the null's cosine and top-k
    score against one answer key."""
    from dogmacache.train.controls import permuted_labels
    from dogmacache.train.task import TaskData
    from dogmacache.train.tasks.biodta import BiodtaTask

    tokens = np.arange(20, dtype=np.float32).reshape(10, 2)
    table = pd.DataFrame({"token_row": np.arange(10), "dna_row": np.arange(10)})
    table["target"] = list(tokens[table["token_row"]])
    data = TaskData(splits={s: table.copy() for s in ("train", "validation", "test")}, fingerprints={})
    moved = permuted_labels(data, 0, BiodtaTask.target_columns)
    for split in ("train", "validation"):
        part = moved.splits[split]
        assert not (part["token_row"] == table["token_row"]).all()
        assert all(np.array_equal(t, tokens[r]) for t, r in zip(part["target"], part["token_row"], strict=True))


def test_a_control_may_not_swap_the_cache_that_holds_the_targets(tmp_path):
    """Bio-DTA's targets are the token cache's rows: a control on another token cache would score other answers
    beside the model's, so it is refused before anything trains (a DNA cache control stays allowed)."""
    from dogmacache.errors import InputError
    from dogmacache.train.controls import check_controls
    from dogmacache.train.registry import get_task

    genes = _task_caches(tmp_path)
    other = np.random.default_rng(1).normal(size=(len(genes), 4, 6)).astype(np.float32)  # another model's rows
    write_cache(tmp_path / "dna_other.zarr", other, ids=genes, dtype="float32")
    config = _config(tmp_path)
    entry = f"token_cache={tmp_path / 'tokens.zarr'}"
    swapped = dataclasses.replace(config, train=dataclasses.replace(config.train, control_caches=(entry,)))
    with pytest.raises(InputError, match="holds biodta's targets, and a control scored against other targets"):
        check_controls(get_task("biodta")(swapped))
    entry = f"dna_cache={tmp_path / 'dna_other.zarr'}; train.lr=0.001"
    allowed = dataclasses.replace(config, train=dataclasses.replace(config.train, control_caches=(entry,)))
    check_controls(get_task("biodta")(allowed))
