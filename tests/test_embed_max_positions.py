"""`--max-positions K`: per-position outputs average-pooled to at most K positions per item, real tokens only,
recorded in the manifest, refused on resume with another K."""

import numpy as np
import torch
from dogmacache.cache import open_cache
from dogmacache.cli import main
from dogmacache.embed.runner import pool_positions


def test_pooling_by_hand():
    x = torch.arange(2 * 6 * 1, dtype=torch.float32).reshape(2, 6, 1)
    pooled, mask = pool_positions(x, None, 3)
    assert mask is None and pooled[:, :, 0].tolist() == [[0.5, 2.5, 4.5], [6.5, 8.5, 10.5]]
    real = np.array([[True] * 6, [True, True, False, False, False, False]])
    pooled, mask = pool_positions(x, real, 3)
    assert pooled[0, :, 0].tolist() == [0.5, 2.5, 4.5]
    assert (
        pooled[1, :2, 0].tolist() == [6.0, 7.0] and pooled[1, 2, 0] == 0
    )  # 2 real tokens: 2 bins, no padding mixed in
    assert mask.tolist() == [[True, True, True], [True, True, False]]
    same, _ = pool_positions(x, real, 8)
    assert same is x  # nothing to pool


def test_embed_records_k_and_refuses_another(tmp_path, capsys):
    import pandas as pd
    from dogmacache.embed.tiny import write_tiny_esm2

    model = write_tiny_esm2(tmp_path / "esm2", 0)
    table = pd.DataFrame({"id": ["a", "b", "c"], "sequence": ["MKTAYIAKQR" * 3, "MKV", "ACDEFGHIKLMNPQRSTVWY"]})
    table.to_parquet(tmp_path / "p.parquet")
    base = [
        "embed",
        "--input",
        str(tmp_path / "p.parquet"),
        "--modality",
        "protein",
        "--model",
        "esm2",
        "--model-path",
        str(model),
        "--pooling",
        "none",
        "--no-progress",
        "--num-workers",
        "0",
    ]
    assert main([*base, "--out", str(tmp_path / "full.zarr")]) == 0
    assert main([*base, "--out", str(tmp_path / "k4.zarr"), "--max-positions", "4"]) == 0
    full, k4 = open_cache(tmp_path / "full.zarr"), open_cache(tmp_path / "k4.zarr")
    assert k4.item_shape == (4, full.item_shape[1]) and k4.manifest.config["max_positions"] == 4
    full_mask, k4_mask = np.asarray(full.extra("mask")[:]), np.asarray(k4.extra("mask")[:])
    assert k4_mask.sum(1).tolist() == [min(4, n) for n in full_mask.sum(1)]
    rows = full.read_rows([1], dtype=np.float32)[0][full_mask[1]]  # 'b': few tokens, at most 4 bins
    expected, _ = pool_positions(torch.from_numpy(rows[None]), None, min(4, len(rows)))
    assert np.allclose(k4.read_rows([1], dtype=np.float32)[0][: expected.shape[1]], expected[0].numpy(), atol=2e-3)
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "k4.zarr"), "--max-positions", "8"]) == 2
    assert "max_positions: 4 in the cache, 8 now" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "k0.zarr"), "--max-positions", "0"]) == 2
    pooled = [a if a != "none" else "mean" for a in base]  # one vector per item: nothing for K to pool
    capsys.readouterr()
    assert main([*pooled, "--out", str(tmp_path / "mean8.zarr"), "--max-positions", "8"]) == 2
    said = capsys.readouterr().err
    assert "--max-positions 8 pools per-position outputs, but" in said and "pass --pooling none" in said
    assert not (tmp_path / "mean8.zarr").exists()


def test_nucleotide_transformer_keeps_the_end_of_a_long_cdna(tmp_path):
    from dogmacache.embed.adapters.hf_esm import NucleotideTransformerAdapter, NucleotideTransformerOptions
    from dogmacache.embed.tiny import write_tiny_nucleotide_transformer

    model = write_tiny_nucleotide_transformer(tmp_path / "nt", 0)
    seq = "ACGTAC" * 10 + "TTTTTT" * 3  # 13 six-mers; the last three are TTTTTT
    row = {"id": "t", "sequence": seq}
    end = NucleotideTransformerAdapter(
        str(model), NucleotideTransformerOptions(max_length=5, keep="end"), torch.device("cpu")
    )
    start = NucleotideTransformerAdapter(str(model), NucleotideTransformerOptions(max_length=5), torch.device("cpu"))
    tok = end.tokenizer
    kept_end, kept_start = end.prepare(row)["ids"].tolist(), start.prepare(row)["ids"].tolist()
    assert len(kept_end) == len(kept_start) == 5 and kept_end[0] == kept_start[0] == tok.cls_token_id
    assert tok.convert_ids_to_tokens(kept_end[-3:]) == ["TTTTTT"] * 3
    assert tok.convert_ids_to_tokens(kept_start[1:]) == ["ACGTAC"] * 4
    assert "last 5 tokens" in end.info().config["truncation"] and end.prepare(row)["n_truncated"] == 14 - 5
