"""Bio-DTA's evaluation in `dogmacache mutate`: gene sets (`--gene-set`: the enrichment numbers on a hand-made
example whose hypergeometric p is worked out by hand, GMT and one-symbol-per-line files, their one-line errors and
warnings) and the adapter-free knock-out comparator against the scGPT encoder's own padding mask."""

import math

import numpy as np
import pytest
import torch
from dogmacache.errors import InputError
from dogmacache.mutate.genesets import GeneSet, enrichment, read_gene_sets, score_gene_sets

UNIVERSE = list("ABCDEFGHIJ")  # 10 genes scored, in rank order


def test_enrichment_by_hand():
    # 4 of the set's 5 genes are scored (ZZZ is not); 2 of them (A, B) are among the top 3.
    # P(X >= 2), X ~ Hypergeometric(10 genes, 4 in the set, 3 drawn) = (C(4,2) C(6,1) + C(4,3)) / C(10,3) = 40/120
    found = enrichment(UNIVERSE[:3], UNIVERSE, GeneSet("targets", ("E", "A", "ZZZ", "B", "F"), 1))
    assert (found["set_size"], found["in_universe"], found["universe"], found["top_n"]) == (5, 4, 10, 3)
    assert found["overlap"] == 2 and found["overlap_genes"] == "A,B"
    assert math.isclose(found["expected"], 1.2) and math.isclose(found["fold_enrichment"], 2 / 1.2)
    assert math.isclose(found["p_value"], 1 / 3)
    none = enrichment(UNIVERSE[:3], UNIVERSE, GeneSet("low", ("I", "J"), 2))
    assert none["overlap"] == 0 and none["fold_enrichment"] == 0 and math.isclose(none["p_value"], 1.0)
    assert enrichment(UNIVERSE[:3], UNIVERSE, GeneSet("absent", ("X", "Y"), 3)) is None


def test_score_gene_sets_per_ranking_and_a_warning_for_a_set_outside_the_universe():
    sets = [GeneSet("targets", ("A", "B", "E", "F"), 1), GeneSet("absent", ("X",), 2)]
    table, warnings = score_gene_sets({0: UNIVERSE, 1: UNIVERSE[::-1]}, 3, sets, "bio-dta adapter")
    assert list(table["variant"]) == [0, 1] and list(table["overlap"]) == [2, 0]
    assert set(table["model"]) == {"bio-dta adapter"}
    assert len(warnings) == 2 and "gene set 'absent' (line 2): none of its 1 genes is among the 10 genes" in warnings[0]
    assert "bio-dta adapter, variant 0; skipped" in warnings[0]


def test_gmt_and_one_symbol_per_line(tmp_path):
    gmt = tmp_path / "targets.gmt"
    gmt.write_text("GATA4_DIRECT\thand-made\tNPPA\tMYH6\tNPPA\n# a comment\n\nTBX5\turl\tKCNJ3\t\n")
    sets, warnings = read_gene_sets(gmt)
    assert [(s.name, s.genes, s.line) for s in sets] == [
        ("GATA4_DIRECT", ("NPPA", "MYH6"), 1),  # repeats dropped
        ("TBX5", ("KCNJ3",), 4),
    ]
    assert warnings == []
    listed = tmp_path / "gata4_targets.txt"
    listed.write_text("NPPA\nMYH6\n\nTNNT2 \n")
    (only,), warnings = read_gene_sets(listed)
    assert (only.name, only.genes, warnings) == ("gata4_targets", ("NPPA", "MYH6", "TNNT2"), [])


def test_malformed_files_are_one_line_errors_naming_file_and_line(tmp_path):
    gmt = tmp_path / "bad.gmt"
    gmt.write_text("GOOD\tdesc\tA\tB\nBROKEN_NO_TABS\n")
    with pytest.raises(InputError, match=r"bad.gmt line 2: 1 tab-separated field\(s\) 'BROKEN_NO_TABS'; a GMT line"):
        read_gene_sets(gmt)
    gmt.write_text("ONE\tdesc\tA\nONE\tdesc\tB\n")
    with pytest.raises(InputError, match=r"bad.gmt line 2: gene set 'ONE' is already named on line 1"):
        read_gene_sets(gmt)
    gmt.write_text("ONE\tdesc\tA B\n")
    with pytest.raises(InputError, match=r"bad.gmt line 1: 'A B' is not one gene symbol"):
        read_gene_sets(gmt)
    listed = tmp_path / "list.txt"
    listed.write_text("NPPA\nMYH6 TNNT2\n")
    with pytest.raises(InputError, match=r"list.txt line 2: 'MYH6 TNNT2' is not one gene symbol") as err:
        read_gene_sets(listed)
    assert "\n" not in str(err.value)
    listed.write_text("# only a comment\n\n")
    with pytest.raises(InputError, match=r"list.txt holds no gene"):
        read_gene_sets(listed)
    with pytest.raises(InputError, match=r"gene-set file '.*missing.gmt' does not exist"):
        read_gene_sets(tmp_path / "missing.gmt")


def test_an_empty_set_is_a_warning_and_only_empty_sets_an_error(tmp_path):
    gmt = tmp_path / "sets.gmt"
    gmt.write_text("EMPTY\tno genes\t\t\nFULL\tdesc\tA\n")
    sets, warnings = read_gene_sets(gmt)
    assert [s.name for s in sets] == ["FULL"]
    assert warnings == [f"{gmt} line 1: gene set 'EMPTY' lists no gene; skipped"]
    gmt.write_text("EMPTY\tno genes\n")
    with pytest.raises(InputError, match=r"sets.gmt holds only empty sets"):
        read_gene_sets(gmt)


def test_the_knockout_comparator_is_the_encoder_with_the_gene_masked_out(tmp_path):
    from dogmacache.embed.adapters import ScGPTContextAdapter, ScgptContextOptions
    from dogmacache.embed.adapters.scgpt_model import write_tiny_scgpt
    from dogmacache.mutate.encoder import ProfileInput, knockout_moves

    genes = ["AAA", "BBB", "CCC", "DDD", "EEE"]
    context = ScGPTContextAdapter(str(write_tiny_scgpt(tmp_path, genes)), ScgptContextOptions(), torch.device("cpu"))
    prepared = context.prepare({"id": "c", "AAA": 5.0, "BBB": 1.0, "CCC": 3.0, "DDD": 0.0, "EEE": 4.0})
    symbol = {i: g for g, i in context.vocab.items()}
    names = [symbol[int(i)] for i in prepared["genes"]]
    assert names[1:] == ["AAA", "BBB", "CCC", "EEE"]  # DDD is not expressed: not scored
    inputs = ProfileInput(
        model=context.checkpoint.model,
        vocab=context.vocab,
        genes=torch.from_numpy(prepared["genes"]),
        values=torch.from_numpy(prepared["values"]),
        names=names[1:],
        position={g: p for p, g in enumerate(names) if p > 0},
        unit=True,
    )
    moves = knockout_moves(inputs, "CCC")
    assert list(moves["rank"]) == [1, 2, 3] and set(moves["gene"]) == {"AAA", "BBB", "EEE"}
    assert moves["l2_shift"].is_monotonic_decreasing and (moves["l2_shift"] > 0).all()
    # the same knock-out through the model's forward: CCC kept in the input but masked from attention
    model, ids, values = context.checkpoint.model, inputs.genes[None], inputs.values[None]
    keep = torch.ones_like(ids, dtype=torch.bool)
    with torch.inference_mode():
        full = model(ids, values, keep)[0].numpy()
        keep[0, names.index("CCC")] = False
        masked = model(ids, values, keep)[0].numpy()
    expected = {g: np.linalg.norm(masked[names.index(g)] - full[names.index(g)]) for g in ("AAA", "BBB", "EEE")}
    assert dict(zip(moves["gene"], moves["l2_shift"], strict=True)) == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_a_token_cache_of_the_tokens_before_the_layernorm_is_refused(tmp_path):
    """The adapted tokens go where the encoder reads enc_norm(embedding): tokens cached before that LayerNorm
    would land in another space and move every gene."""
    from types import SimpleNamespace

    from conftest import write_cache
    from dogmacache.cache import open_cache
    from dogmacache.errors import ModelError
    from dogmacache.mutate.encoder import open_profile

    config = SimpleNamespace(scgpt_model=str(tmp_path / "no_such_model"), profiles=None, profile=None, gene="AAA")
    said = {}
    for layer in ("gene_embedding", "gene_embedding+enc_norm"):
        write_cache(tmp_path / f"{layer}.zarr", np.zeros((3, 4), np.float32), modality="gene", layer=layer)
        with pytest.raises((InputError, ModelError)) as err:  # the second goes on to look for the scGPT model
            open_profile(config, open_cache(tmp_path / f"{layer}.zarr"))
        said[layer] = str(err.value)
    assert (
        "holds scGPT tokens at layer 'gene_embedding', but the encoder takes them after its LayerNorm"
        in said["gene_embedding"]
    )
    assert "scGPT checkpoint folder" in said["gene_embedding+enc_norm"]
