"""`dogmacache explain` on the demo's CDT checkpoint: the files it writes, and one-line errors for bad items,
a k larger than the window, changed or missing caches, imported weights without a config, and the inputs no cache
manifest can give (the chromosome sizes, a windows table)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import interrupt_on_call
from dogmacache.cli import main
from dogmacache.contracts.windows import window_start0
from dogmacache.explain.tracks import read_bedgraph
from dogmacache.train.config import to_toml
from dogmacache.train.registry import config_from_dict


def sizes(demo_run) -> list[str]:
    return ["--chrom-sizes", str(demo_run / "recipe" / "genome.fa.fai")]


@pytest.fixture(scope="module")
def explained(demo_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("explain") / "out"
    args = [
        "explain",
        "--checkpoint",
        str(demo_run / "train" / "cdt_best.pt"),
        "--split",
        "validation",
        "--n",
        "5",
        "--top-k",
        "2",
        "--item-figures",
        "1",
        "--out",
        str(out),
        *sizes(demo_run),
    ]
    assert main(args) == 0
    return out


def test_explain_writes_tables_tracks_and_figures(explained, demo_run):
    checkpoint = torch.load(demo_run / "train" / "cdt_best.pt", weights_only=False)
    n_bins = checkpoint["model_config"]["dna_positions"]
    summary = json.loads((explained / "summary.json").read_text())
    assert summary["n_items"] == 5 and summary["top_k"] == 2
    assert 0 <= summary["topk_overlap"]["mean"] <= 2
    assert sum(summary["topk_overlap"]["histogram"].values()) == 5
    assert -1 <= summary["attention_uniformity"]["across_items_mean_pairwise_correlation"] <= 1
    assert summary["seconds_per_item"] > 0

    items = pd.read_csv(explained / "items.tsv", sep="\t")
    assert len(items) == 5 and set(items["split"]) == {"validation"}
    positions = pd.read_csv(explained / "positions.tsv.gz", sep="\t")
    assert len(positions) == 5 * n_bins
    heads = positions.filter(like="attention_head")
    assert heads.shape[1] == checkpoint["model_config"]["n_heads"]
    np.testing.assert_allclose(heads.groupby(positions["item"]).sum().to_numpy(), 1.0, atol=1e-4)
    assert (positions["gradient"] >= 0).all() and positions["gradient"].max() > 0

    # the top-k table's coordinates are the recipe window's bins
    topk = pd.read_csv(explained / "topk.tsv", sep="\t")
    assert len(topk) == 5 * 2 * 2
    windows = pd.read_parquet(demo_run / "recipe" / "cdt" / "dna_windows.parquet").set_index("id")
    row = topk.iloc[0]
    window = windows.loc[row["item"].split("|")[0]]
    assert row["chrom"] == window["chrom"]
    assert row["start"] == max(0, window_start0(int(window["center"]), n_bins * 128) + row["bin"] * 128)
    fai = pd.read_csv(demo_run / "recipe" / "genome.fa.fai", sep="\t", header=None, index_col=0)[1]
    assert (topk["end"] <= topk["chrom"].map(fai)).all()  # bins end inside their chromosome

    mean = read_bedgraph(explained / "tracks" / "mean.attention.bedGraph")
    assert len(mean) >= n_bins and (mean["end"] > mean["start"]).all()
    assert len(list((explained / "tracks" / "items").glob("*.bedGraph"))) == 10
    figures = sorted(p.name for p in (explained / "figures").rglob("*.png"))
    assert len(figures) == 4 and "topk_overlap.png" in figures and "peak_distance.png" in figures


def _error(capsys, args) -> str:
    assert main(args) == 2
    message = capsys.readouterr().err.strip()
    assert message.count("\n") == 0 and message
    return message


def test_explain_refuses_bad_items_and_k(demo_run, tmp_path, capsys):
    ckpt = str(demo_run / "train" / "cdt_best.pt")
    base = ["explain", "--checkpoint", ckpt, "--out", str(tmp_path / "o"), *sizes(demo_run)]
    assert "item 'nope|GENE' is not a labelled pair" in _error(capsys, [*base, "--top-k", "2", "--items", "nope|GENE"])
    assert "--top-k 99 is outside the" in _error(capsys, [*base, "--split", "test", "--top-k", "99"])
    # --n and --top-effects choose from a --split: beside --items they would be ignored
    for flag in (["--n", "5"], ["--top-effects"]):
        message = _error(capsys, [*base, "--items", "nope|GENE", *flag])
        assert f"{flag[0]} chooses items from a --split" in message and "pass one of the two" in message


def test_explain_refuses_changed_or_missing_caches(demo_run, tmp_path, capsys):
    checkpoint = torch.load(demo_run / "train" / "cdt_best.pt", weights_only=False)
    changed = {
        **checkpoint,
        "fingerprints": {
            **checkpoint["fingerprints"],
            "dna": {**checkpoint["fingerprints"]["dna"], "shards_digest": "sha256:0"},
        },
    }
    torch.save(changed, tmp_path / "changed.pt")
    base = ["--split", "test", "--top-k", "2", "--out", str(tmp_path / "o"), *sizes(demo_run)]
    message = _error(capsys, ["explain", "--checkpoint", str(tmp_path / "changed.pt"), *base])
    assert "was trained on a dna cache with shards_digest 'sha256:0'" in message
    config = {
        **checkpoint["config"],
        "data": {**checkpoint["config"]["data"], "dna_cache": str(tmp_path / "gone.zarr")},
    }
    torch.save({**checkpoint, "config": config}, tmp_path / "gone.pt")
    assert "which cannot be opened" in _error(capsys, ["explain", "--checkpoint", str(tmp_path / "gone.pt"), *base])


def test_a_windows_table_sharing_only_the_ids_with_the_cache_is_refused(demo_run, tmp_path, capsys):
    """The tracks are placed by the table's positions: a table of the same ids at other centres (another build,
    another recipe run) would put every bin elsewhere."""
    windows = pd.read_parquet(demo_run / "recipe" / "cdt" / "dna_windows.parquet")
    windows.assign(center=windows["center"] + 5000).to_parquet(tmp_path / "shifted.parquet")
    args = ["explain", "--checkpoint", str(demo_run / "train" / "cdt_best.pt"), "--split", "test", "--top-k", "2"]
    args += ["--out", str(tmp_path / "o"), "--dna-table", str(tmp_path / "shifted.parquet"), *sizes(demo_run)]
    message = _error(capsys, args)
    assert "shifted.parquet is not the table" in message and "chrom, center, strand differ" in message
    assert not (tmp_path / "o" / "summary.json").exists()


def test_imported_weights_explain_with_a_config(demo_run, tmp_path, capsys):
    checkpoint = torch.load(demo_run / "train" / "cdt_best.pt", weights_only=False)
    imported = {**checkpoint, "config": None, "fingerprints": {}, "extras": {}}  # as train import-checkpoint writes
    torch.save(imported, tmp_path / "imported.pt")
    args = [
        "explain",
        "--checkpoint",
        str(tmp_path / "imported.pt"),
        "--top-k",
        "2",
        "--out",
        str(tmp_path / "o"),
        *sizes(demo_run),
        "--items",
        pd.read_parquet(demo_run / "recipe" / "cdt" / "labels.parquet")["enhancer"].iloc[0],
    ]
    assert "pass --config FILE" in _error(capsys, args)
    raw = {**checkpoint["config"], "data": {**checkpoint["config"]["data"], "standardize_dna": False}}
    (tmp_path / "run.toml").write_text(to_toml(config_from_dict(raw)))
    assert (
        main(
            [
                *args,
                "--config",
                str(tmp_path / "run.toml"),
                "--methods",
                "none",
                "--no-item-tracks",
                "--item-figures",
                "0",
            ]
        )
        == 0
    )
    items = pd.read_csv(tmp_path / "o" / "items.tsv", sep="\t")
    assert len(items) >= 1 and items["item"].str.startswith(args[-1] + "|").all()
    # no DNA scaling in the checkpoint: gradient x input is measured from the training windows' mean, not zero
    baseline = json.loads((tmp_path / "o" / "summary.json").read_text())["baseline"]
    assert baseline["from"] == "the mean of the training split's DNA windows" and baseline["windows"] >= 1


def test_the_attribution_baseline_without_dna_scaling_is_the_training_windows_mean(demo_run):
    from dogmacache.cache import open_cache
    from dogmacache.explain.cdt import CdtExplainer, ExplainSources

    checkpoint = torch.load(demo_run / "train" / "cdt_best.pt", weights_only=False)
    explainer = CdtExplainer(
        ExplainSources(checkpoint=str(demo_run / "train" / "cdt_best.pt"), chrom_sizes=sizes(demo_run)[1])
    )
    scaled, source = explainer.baseline()
    assert source["from"].startswith("the checkpoint's dna_scale")
    np.testing.assert_array_equal(scaled.numpy(), np.float32(checkpoint["extras"]["dna_scale"]["mean"]))
    explainer.dna_mean = explainer.dna_std = None  # as a checkpoint trained without standardize_dna
    mean, source = explainer.baseline()
    rows = np.unique(explainer.pairs.loc[explainer.pairs["split"] == "train", "dna_row"])
    assert source == {"from": "the mean of the training split's DNA windows", "windows": len(rows), "of": len(rows)}
    dna = open_cache(checkpoint["config"]["data"]["dna_cache"]).read_rows(rows, dtype=np.float64)
    np.testing.assert_allclose(mean.numpy(), dna.reshape(-1, dna.shape[-1]).mean(0), rtol=1e-5, atol=1e-6)
    assert np.abs(mean.numpy()).max() > 10 * np.abs(mean.numpy() - scaled.numpy()).max()  # not zero: the mean


def test_the_gradient_norm_is_taken_where_the_model_reads_the_dna(demo_run):
    """The demo's checkpoint standardises DNA: the reported gradient is d prediction / d (x - mean) / std, not
    d / d x, which weighs every feature by 1 / std (and lets the few features that barely vary make up the norm)."""
    from dogmacache.explain import attribution
    from dogmacache.explain.cdt import CdtExplainer, ExplainSources

    explainer = CdtExplainer(
        ExplainSources(checkpoint=str(demo_run / "train" / "cdt_best.pt"), chrom_sizes=sizes(demo_run)[1])
    )
    assert explainer.dna_std is not None and "standardisation" in explainer.gradient_space()
    chosen = explainer.select([], "validation", 4, 0, 0)
    part, dna = next(explainer.batches(chosen, 4))
    gene_index = torch.tensor(part["gene_index"].to_numpy(np.int64))
    cached = attribution.input_gradient(explainer.predictor(), dna, gene_index)
    scaled = explainer._scaled(dna).detach().requires_grad_(True)
    (direct,) = torch.autograd.grad(explainer.model(scaled, explainer.rna, explainer.protein, gene_index).sum(), scaled)
    got = attribution.gradient_norm(explainer.model_input_gradient(cached))
    np.testing.assert_allclose(got.numpy(), direct.norm(dim=-1).numpy(), rtol=1e-4, atol=1e-7)
    as_cached = attribution.gradient_norm(cached)
    assert not np.allclose(as_cached.numpy() / as_cached.numpy().sum(), got.numpy() / got.numpy().sum(), rtol=0.05)


def test_the_written_gradient_is_the_one_taken_where_the_model_reads_the_dna(explained, demo_run):
    """What `explain` writes (positions.tsv.gz, hence the tracks and top-k tables) is that norm, not d / d cached."""
    from dogmacache.explain.cdt import CdtExplainer, ExplainSources

    explainer = CdtExplainer(
        ExplainSources(checkpoint=str(demo_run / "train" / "cdt_best.pt"), chrom_sizes=sizes(demo_run)[1])
    )
    positions = pd.read_csv(explained / "positions.tsv.gz", sep="\t")
    item = positions["item"].iloc[0]
    chosen = explainer.select([item], None, 1, False, 0)
    part, dna = next(explainer.batches(chosen, 1))
    gene_index = torch.tensor(part["gene_index"].to_numpy(np.int64))
    scaled = explainer._scaled(dna).detach().requires_grad_(True)
    (direct,) = torch.autograd.grad(explainer.model(scaled, explainer.rna, explainer.protein, gene_index).sum(), scaled)
    written = positions.loc[positions["item"] == item].sort_values("bin")
    written = written.loc[written["inside"]]
    expected = direct.norm(dim=-1)[0].numpy()[written["bin"].to_numpy()]
    np.testing.assert_allclose(written["gradient"].to_numpy(), expected, rtol=1e-4)


def test_explain_asks_for_what_no_manifest_records(demo_run, tmp_path, capsys):
    ckpt = demo_run / "train" / "cdt_best.pt"
    base = ["explain", "--checkpoint", str(ckpt), "--split", "test", "--top-k", "2", "--out", str(tmp_path / "o")]
    message = _error(capsys, base)
    assert "explain needs the chromosome lengths to clip bins" in message and "pass --chrom-sizes" in message
    checkpoint = torch.load(ckpt, weights_only=False)
    config = {**checkpoint["config"], "data": {**checkpoint["config"]["data"], "dna_table": ""}}
    torch.save({**checkpoint, "config": config}, tmp_path / "no_table.pt")
    args = ["explain", "--checkpoint", str(tmp_path / "no_table.pt"), *base[3:], *sizes(demo_run)]
    message = _error(capsys, args)
    assert "[data] dna_table is empty" in message and "pass --dna-table" in message
    sizes_file = tmp_path / "other.sizes"
    sizes_file.write_text("chrOther\t1000\n")
    message = _error(capsys, [*base, "--chrom-sizes", str(sizes_file)])
    assert f"--chrom-sizes {sizes_file} has no length for chromosome" in message
    table = demo_run / "recipe" / "cdt" / "dna_windows.parquet"
    assert main([*args, "--dna-table", str(table), "--n", "3", "--methods", "none", "--item-figures", "0"]) == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["config"]["sources"]["dna_table"] == str(table) and summary["n_items"] == 3


def test_a_rerun_leaves_no_earlier_run_behind_and_a_stopped_one_no_summary(demo_run, tmp_path, monkeypatch):
    from dogmacache.explain import run as explain_run

    out = tmp_path / "o"
    base = ["explain", "--checkpoint", str(demo_run / "train" / "cdt_best.pt"), "--split", "test", "--top-k", "2"]
    base += ["--out", str(out), *sizes(demo_run)]
    assert main([*base, "--n", "4"]) == 0
    assert main([*base, "--n", "2", "--seed", "7"]) == 0
    prefixes = {p.name[:5] for p in (out / "tracks" / "items").iterdir()}
    assert prefixes == {"0000_", "0001_"}  # the first run's items 2 and 3 are gone
    assert json.loads((out / "summary.json").read_text())["n_items"] == 2
    (tmp_path / "peaks.bed").write_text("chr1\tnot-a-number\t10\n")
    assert main([*base, "--n", "3", "--features", str(tmp_path / "peaks.bed")]) == 2  # refused: nothing goes
    assert json.loads((out / "summary.json").read_text())["n_items"] == 2
    interrupt_on_call(monkeypatch, explain_run, "_write_item", 2)
    assert main([*base, "--n", "3", "--seed", "9"]) == 130
    assert not (out / "summary.json").exists() and not (out / "items.tsv").exists()  # nothing looks finished


def test_a_tsv_windows_table_and_chrom_sizes_named_the_other_way_are_taken(demo_run, tmp_path, capsys):
    """embed reads a .tsv windows table, and resolves `chr1` against a genome naming it `1` (or the other way):
    explain takes both, the tracks under the chrom sizes' names."""
    table = tmp_path / "dna_windows.tsv"
    pd.read_parquet(demo_run / "recipe" / "cdt" / "dna_windows.parquet").to_csv(table, sep="\t", index=False)
    fai = pd.read_csv(demo_run / "recipe" / "genome.fa.fai", sep="\t", header=None)
    ensembl = tmp_path / "ensembl.sizes"  # 1, 2, 3 for chr1, chr2, chr3
    fai[[0, 1]].assign(**{"0": fai[0].str.removeprefix("chr")})[["0", 1]].to_csv(
        ensembl, sep="\t", header=False, index=False
    )
    out = tmp_path / "o"
    args = ["explain", "--checkpoint", str(demo_run / "train" / "cdt_best.pt"), "--split", "test", "--n", "3"]
    args += ["--top-k", "2", "--methods", "none", "--item-figures", "0", "--out", str(out)]
    capsys.readouterr()
    assert main([*args, "--dna-table", str(table), "--chrom-sizes", str(ensembl)]) == 0
    assert "names 3 chromosome(s) as the chrom sizes do not (e.g." in capsys.readouterr().out
    positions = pd.read_csv(out / "positions.tsv.gz", sep="\t")
    assert set(positions["chrom"].astype(str)) <= {"1", "2", "3"}


def test_control_features_are_scored_beside_the_features_and_the_decoys_are_not_counted_as_planted(
    demo_run, tmp_path, capsys
):
    """The demo scores CDT against its planted GC-box blocks alone, with the AT-rich decoys as the control
    features: both results in the summary, each from its own BED (the whole truth.bed counted decoys as hits)."""
    from dogmacache.data_recipes.make_demo_data import HERE
    from dogmacache.demo.explain import truth_subsets

    planted, decoys = truth_subsets(HERE / "truth" / "truth.bed", tmp_path / "truth")
    names = {path: {line.split("\t")[3] for line in path.read_text().splitlines()} for path in (planted, decoys)}
    assert names == {planted: {"gc_box"}, decoys: {"at_decoy"}}
    base = ["explain", "--checkpoint", str(demo_run / "train" / "cdt_best.pt"), "--split", "validation", "--n", "6"]
    base += ["--top-k", "2", "--no-item-tracks", "--item-figures", "0", *sizes(demo_run)]
    assert (
        main([*base, "--out", str(tmp_path / "o"), "--features", str(planted), "--control-features", str(decoys)]) == 0
    )
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["features"]["features"] == str(planted) and summary["control_features"]["features"] == str(decoys)
    assert summary["features"]["n_intervals"] > summary["control_features"]["n_intervals"] > 0  # 1,030 vs 250 rows
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "p"), "--control-features", str(decoys)]) == 2
    assert "--control-features is scored beside --features" in capsys.readouterr().err


def test_chrom_sizes_of_another_genome_and_another_commands_folder_are_refused(demo_run, tmp_path, capsys):
    """A window centred past its chromosome's end in --chrom-sizes (another build's sizes) was a traceback or an
    item missing from the mean tracks; an --out holding mutate's summary.json was overwritten and mixed."""
    fai = (demo_run / "recipe" / "genome.fa.fai").read_text().splitlines()
    short = [f"{line.split(chr(9))[0]}\t2000" for line in fai]
    (tmp_path / "short.sizes").write_text("\n".join(short) + "\n")
    base = ["explain", "--checkpoint", str(demo_run / "train" / "cdt_best.pt"), "--split", "validation", "--n", "2"]
    base += ["--top-k", "2", "--no-item-tracks", "--item-figures", "0"]
    assert main([*base, "--out", str(tmp_path / "o"), "--chrom-sizes", str(tmp_path / "short.sizes")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "bp in --chrom-sizes" in err and "such windows" in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    other = tmp_path / "mutate_out"
    other.mkdir()
    (other / "summary.json").write_text(json.dumps({"gene": "DEMO05", "token_shift": []}))
    assert main([*base, "--out", str(other), *sizes(demo_run)]) == 2
    assert "another command's summary.json" in capsys.readouterr().err
    assert json.loads((other / "summary.json").read_text())["gene"] == "DEMO05"
    assert main([*base, "--out", str(tmp_path / "e"), *sizes(demo_run)]) == 0
    header = (tmp_path / "e" / "tracks" / "mean.attention.bedGraph").read_text().splitlines()[0]
    assert "whose window covers it (2 items in" in header
    assert main([*base, "--out", str(tmp_path / "e"), *sizes(demo_run)]) == 0  # its own folder: rerun as before


def test_a_windows_table_of_other_ids_is_told_to_change_the_table_and_a_url_out_is_refused(demo_run, tmp_path, capsys):
    base = ["explain", "--checkpoint", str(demo_run / "train" / "cdt_best.pt"), *sizes(demo_run), "--split", "test"]
    other = demo_run / "recipe" / "biodta" / "dna_windows.parquet"
    assert main([*base, "--dna-table", str(other), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "pass the dna_windows table the DNA cache was embedded from with --dna-table" in err
    assert "re-embed" not in err
    assert main([*base, "--out", "s3://bucket/run"]) == 2
    assert "--out s3://bucket/run: explain writes local files" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
