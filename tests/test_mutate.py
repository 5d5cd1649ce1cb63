"""`dogmacache mutate` on a hand-made genome: edited windows by hand, the edit spellings and their one-line errors,
and a whole run with a tiny Enformer cache, a tiny scGPT and a Bio-DTA adapter checkpoint: only windows holding
an edit are re-embedded, an unedited window re-embeds to its cached row, and mismatched inputs are refused."""

import dataclasses
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from dogmacache.embed.genome import Genome
from dogmacache.embed.runner import EmbedConfig, run_embed
from dogmacache.errors import CacheError, InputError
from dogmacache.mutate import MutateConfig, edited_window, parse_edit, read_vcf, run_mutate
from dogmacache.train.checkpoint import save
from dogmacache.train.tasks.biodta import TokenAdapter

GENES = ["AAA", "BBB", "CCC", "DDD"]


@pytest.fixture
def genome(tmp_path):
    seq = "".join(np.random.default_rng(0).choice(list("ACGT"), 6000))
    path = tmp_path / "genome.fa"
    path.write_text(">chr1\n" + "\n".join(seq[i : i + 60] for i in range(0, 6000, 60)) + "\n>chr2\nACGTACGTAC\n")
    return path


def test_edited_windows_by_hand(tmp_path):
    path = tmp_path / "g.fa"
    path.write_text(">chr1\nAACCGGTTAC\n")
    g = Genome(path)
    assert edited_window(g, "chr1", 2, 5, [parse_edit("chr1:4 C>T", g)]) == ("CTGGT", 0)
    assert parse_edit("chr1:0,004 C>T", g).start0 == 3  # commas between thousands are read
    for typo in ("chr1:1,0 C>T", "chr1:,4 C>T", "chr1:4, C>T", "chr1:4-1,0"):  # "1,0" would read as 10
        with pytest.raises(InputError, match=r"is not a number \(digits, with commas only between thousands"):
            parse_edit(typo, g)
    assert edited_window(g, "chr1", 2, 5, [parse_edit("1:4-5", g)]) == ("CGTTA", 0)  # right flank pulled in
    assert edited_window(g, "chr1", 2, 5, [parse_edit("chr1:3 C>CAAA", g)]) == ("CAAAC", 0)  # pushed out
    assert edited_window(g, "chr1", 7, 5, [parse_edit("chr1:9 A>-", g)]) == ("TCNNN", 3)  # N past the end
    # an insertion near the end pushes padding out of the window: only the N left in it count
    assert edited_window(g, "chr1", 6, 6, [parse_edit("chr1:8 T>TGG", g)]) == ("TTGGAC", 0)
    assert edited_window(g, "chr1", 6, 8, [parse_edit("chr1:8 T>TGG", g)]) == ("TTGGACNN", 2)
    assert edited_window(g, "chr1", 6, 8, []) == ("TTACNNNN", 4)
    both = [parse_edit("chr1:3 C>G", g), parse_edit("chr1:6 G>A", g)]
    assert edited_window(g, "chr1", 0, 10, both) == ("AAGCGATTAC", 0)


def test_edit_spellings_and_their_errors(tmp_path, genome):
    g = Genome(genome)
    found = g.fasta["chr1"][99]
    other = next(b for b in "ACGT" if b != found)
    with pytest.raises(
        InputError, match=rf"the genome \(genome.fa\) has {found} at chr1:100, not the ref allele {other}"
    ):
        parse_edit(f"chr1:100 {other}>{found}", g)
    with pytest.raises(InputError, match=r"edit 'chr1-100' is not `chr:pos REF>ALT`"):
        parse_edit("chr1-100", g)
    with pytest.raises(InputError, match=r"reaches past the end of chr2 \(10 bp\)"):
        parse_edit("chr2:10 CA>C", g)
    with pytest.raises(InputError, match=r"edit 'chr2:8-12' reaches past the end of chr2 \(10 bp\)"):
        parse_edit("chr2:8-12", g)  # the range spelling alike (it read N past the end as reference)
    assert parse_edit("chr2:8-10", g).ref == g.fasta["chr2"][7:10].upper()
    vcf = tmp_path / "v.vcf"
    anchor = g.fasta["chr1"][199:201]
    vcf.write_text(f"##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\nchr1\t200\t.\t{anchor}\t{anchor[0]}\n")
    (edit,) = read_vcf(vcf, g)
    assert (edit.start0, edit.ref, edit.alt) == (200, anchor[1], "")  # the anchor base is kept
    vcf.write_text(f"chr1\t100\t.\t{found}\t<DEL>\n")
    with pytest.raises(InputError, match=r"v.vcf line 1: REF .* ALT '<DEL>' are not plain bases"):
        read_vcf(vcf, g)


@pytest.fixture
def scene(tmp_path, genome):
    from dogmacache.embed.adapters.enformer import write_tiny_enformer
    from dogmacache.embed.adapters.scgpt_model import write_tiny_scgpt

    windows = pd.DataFrame(
        {
            "id": GENES,
            "chrom": ["chr1"] * 4,
            "center": [1500, 2000, 4500, 5200],
            "strand": ["+", "-", "+", "-"],
            "split": ["train", "train", "validation", "test"],
        }
    )
    windows.to_parquet(tmp_path / "genes.parquet")
    models = {
        "enformer": write_tiny_enformer(tmp_path / "enformer"),
        "scgpt": write_tiny_scgpt(tmp_path / "scgpt", GENES),
    }
    dna, tokens = tmp_path / "dna.zarr", tmp_path / "tokens.zarr"
    _embed_dna(tmp_path, models, genome, dna)
    _embed(tmp_path, tokens, "gene", "scgpt", models["scgpt"])
    torch.manual_seed(0)
    config = {"dna_width": 96, "token_width": 32, "hidden": 16, "pooling": "attention", "dropout": 0.0}
    from dogmacache.cache import open_cache

    save(
        tmp_path / "biodta_best.pt",
        {
            "task": "biodta",
            "model_class": "TokenAdapter",
            "model_config": config,
            "model": TokenAdapter(**config).state_dict(),
            "config": {
                "data": {"labels": str(tmp_path / "genes.parquet"), "dna_cache": str(dna), "token_cache": str(tokens)}
            },
            "fingerprints": {"dna": open_cache(dna).fingerprint(), "token": open_cache(tokens).fingerprint()},
        },
    )
    pd.DataFrame({"id": ["cell1"], "AAA": [5.0], "BBB": [1.0], "CCC": [3.0], "DDD": [2.0]}).to_parquet(
        tmp_path / "profiles.parquet"
    )
    return tmp_path, models, genome


def _embed(root, out, modality, model, model_path, **settings):
    """The scene's genes embedded by `model` into the cache `out` on the CPU (`settings`: other EmbedConfig values,
    e.g. the genome or compression)."""
    run_embed(
        EmbedConfig(
            input=str(root / "genes.parquet"),
            modality=modality,
            model=model,
            out=str(out),
            model_path=str(model_path),
            device="cpu",
            num_workers=0,
            progress=False,
            **settings,
        )
    )


def _embed_dna(root, models, genome, out, **settings):
    """The scene's genes embedded by the tiny Enformer into the DNA cache `out`."""
    _embed(root, out, "dna", "enformer", models["enformer"], genome=str(genome), **settings)


def _config(root, models, genome, **kwargs):
    defaults = {
        "checkpoint": str(root / "biodta_best.pt"),
        "genome": str(genome),
        "dna_model": str(models["enformer"]),
        "gene": "AAA",
        "out": str(root / "out"),
        "scgpt_model": str(models["scgpt"]),
        "profiles": str(root / "profiles.parquet"),
        "profile": "cell1",
        "top_n": 3,
    }
    if kwargs.get("scgpt_model", "") is None:  # the token shift alone: no profile to run the encoder on
        defaults.update(profiles=None, profile=None)
    return MutateConfig(**{**defaults, **kwargs})


def test_mutate_reembeds_only_the_windows_holding_an_edit(scene):
    root, models, genome = scene
    g = Genome(genome)
    base = g.fasta["chr1"][1599]  # 1-based 1600: inside AAA's (1500 +- 1024) and BBB's (2000 +- 1024) windows
    alt = "A" if base != "A" else "C"
    summary = run_mutate(_config(root, models, genome, edits=(f"chr1:1600 {base}>{alt}", "chr1:1400-1420")))
    assert (summary["windows_reembedded"], summary["rows_reused"]) == (2, 2)  # CCC, DDD untouched
    shift = pd.read_csv(root / "out" / "token_shift.tsv", sep="\t")
    assert sorted(shift["id"]) == ["AAA", "BBB"] and (shift["l2"] > 0).all()
    tokens = np.load(root / "out" / "tokens.npz")  # the rows of token_shift.tsv, in order
    assert list(tokens["id"]) == list(shift["id"]) and list(tokens["variant"]) == list(shift["variant"])
    l2 = np.linalg.norm(tokens["edited"] - tokens["reference"], axis=1)
    np.testing.assert_allclose(l2, shift["l2"], rtol=1e-5)
    moved = pd.read_csv(root / "out" / "moved_genes.tsv", sep="\t")
    assert list(moved["rank"]) == [1, 2, 3] and moved["l2_shift"].is_monotonic_decreasing
    assert set(moved.loc[moved["token_replaced"], "gene"]) <= {"AAA", "BBB"}
    assert (root / "out" / "moved_genes.png").stat().st_size > 0
    assert json.loads((root / "out" / "summary.json").read_text())["token_shift"][0]["id"] == "AAA"


def test_an_unedited_window_reembeds_to_its_cached_row_and_each_edit_scans_alone(scene):
    root, models, genome = scene
    base = Genome(genome).fasta["chr1"][599]  # 1-based 600: AAA's window (476-2,523) only, not BBB's (976-3,023)
    summary = run_mutate(
        _config(root, models, genome, edits=(f"chr1:600 {base}>{base}", "chr1:601-610"), each=True, scgpt_model=None)
    )
    shift = pd.read_csv(root / "out" / "token_shift.tsv", sep="\t")
    assert summary["n_variants"] == 2 and list(shift["variant"]) == [0, 1]
    assert shift["cosine"].iloc[0] > 0.9999 and shift["l2"].iloc[0] < 1e-2  # same settings: same numbers
    assert shift["l2"].iloc[1] > 10 * shift["l2"].iloc[0]  # the check can fail: a deletion moves the token


def test_mutate_refusals_are_one_line(scene, tmp_path):
    root, models, genome = scene
    done = run_mutate(_config(root, models, genome, edits=("chr1:1400-1401",), out=str(root / "kept")))
    with pytest.raises(InputError, match=r"nowhere"):  # a profile that is not there: refused before anything goes
        run_mutate(_config(root, models, genome, edits=("chr1:1400-1401",), out=str(root / "kept"), profile="nowhere"))
    assert json.loads((root / "kept" / "summary.json").read_text())["seconds"] == done["seconds"]
    with pytest.raises(InputError, match=r"edit 'chr1:4000-4001' is outside the window of AAA \(chr1:476-2,523"):
        run_mutate(_config(root, models, genome, edits=("chr1:4000-4001",)))
    g = Genome(genome)
    for anchor in (475, 2523):  # the base before AAA's window, its last base: an insertion there is not in it
        base = str(g.fasta["chr1"][anchor - 1]).upper()
        edit = f"chr1:{anchor} {base}>{base}GGGG"
        with pytest.raises(InputError, match=rf"edit '{edit}' inserts its bases at an edge of AAA's window"):
            run_mutate(_config(root, models, genome, edits=(edit,), scgpt_model=None))
    # inside BBB's window (chr1:977-3,024), across the end of AAA's (chr1:476-2,523): AAA's is left as it is, and said
    summary = run_mutate(
        _config(root, models, genome, gene="BBB", edits=("chr1:2500-2530",), scgpt_model=None, out=str(root / "x"))
    )
    assert summary["windows_crossed"] == [{"gene": "AAA", "window": "chr1:476-2,523", "edit": "chr1:2500-2530"}]
    shift = pd.read_csv(root / "x" / "token_shift.tsv", sep="\t")
    assert list(shift["id"]) == ["BBB"]  # AAA's window holds no whole edit: not re-embedded
    with pytest.raises(InputError, match=r"edit 'chr1:2500-2530' crosses the edge of AAA's window \(chr1:476-2,523\)"):
        run_mutate(_config(root, models, genome, gene="AAA", edits=("chr1:2500-2530",), scgpt_model=None))
    (root / "f").write_text("")
    for bad, message in ((dict(top_n=0), r"--top-n 0: expected at least 1"), (dict(out=str(root / "f")), "is a file")):
        with pytest.raises((InputError, CacheError), match=message):  # (an --out in the way: cache.storage's check)
            run_mutate(_config(root, models, genome, edits=("chr1:1400-1401",), **bad))
    with pytest.raises(InputError, match=r"gene 'ZZZ' is not in the windows table \(4 genes"):
        run_mutate(_config(root, models, genome, gene="ZZZ", edits=("chr1:1400-1401",)))
    from dogmacache.embed.adapters.enformer import write_tiny_enformer

    other = write_tiny_enformer(tmp_path / "other-enformer", seed=1)
    with pytest.raises(InputError, match=r"dna.zarr was embedded with other settings: model file pytorch_model.bin"):
        run_mutate(_config(root, models, genome, dna_model=str(other), edits=("chr1:1400-1401",)))
    msg = r"the genome \(genome.fa\) has [ACGT] at chr1:1,600, not the ref allele"
    base = Genome(genome).fasta["chr1"][1599]
    with pytest.raises(InputError, match=msg):
        run_mutate(_config(root, models, genome, edits=(f"chr1:1600 {'A' if base != 'A' else 'C'}>T",)))
    assert "\n" not in str(pytest.raises(InputError, run_mutate, _config(root, models, genome, edits=())).value)


def test_bench_counts_one_forward_per_edited_window():
    from dogmacache.bench.mutate import bench_mutate, mutate_tables

    r = bench_mutate(n_genes=3, n_edits=4)
    assert r["n_shift_rows"] == r["windows_reembedded"] >= 4  # every SNV lies in at least one window
    assert r["rows_reused"] <= 3 and r["edits_per_s"] > 0
    assert len(mutate_tables(r)[0]["rows"]) == 5


def test_another_genome_or_a_broken_model_is_named_in_one_short_line(scene, tmp_path):
    import shutil

    root, models, genome = scene
    seq = "".join(np.random.default_rng(1).choice(list("ACGT"), 6000))
    other = tmp_path / "other.fa"
    other.write_text(">chr1\n" + "\n".join(seq[i : i + 60] for i in range(0, 6000, 60)) + "\n>chr2\nACGTACGTAC\n")
    with pytest.raises(InputError) as err:
        run_mutate(_config(root, models, other, edits=("chr1:1400-1401",)))
    message = str(err.value)
    assert re.search(r"dna.zarr was embedded from another genome: genome.fa \(sha256:\w+\) in the cache, ", message)
    assert re.search(rf"--genome {re.escape(str(other))} is other.fa \(sha256:\w+\); pass the FASTA", message)
    assert "None" not in message and "\n" not in message
    renamed = tmp_path / "renamed.fa"  # the same FASTA under another name embeds the same numbers
    shutil.copy(genome, renamed)
    summary = run_mutate(_config(root, models, renamed, edits=("chr1:1400-1420",), scgpt_model=None))
    assert summary["windows_reembedded"] >= 1
    broken = tmp_path / "broken-enformer"  # weights of a 1-layer model under a 2-layer config
    shutil.copytree(models["enformer"], broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "depth": config["depth"] + 1}))
    with pytest.raises(InputError) as err:
        run_mutate(_config(root, models, genome, dna_model=str(broken), edits=("chr1:1400-1401",)))
    message = str(err.value)
    assert re.search(r"^--dna-model .*broken-enformer: .*pytorch_model.bin does not match the Enformer", message)
    assert re.search(r": \d+ missing \(e\.g\. transformer\.1\.[\w.]+, [\w.]+, [\w.]+\); pass the DNA model", message)
    assert len(message) < 600 and "\n" not in message


def test_ctrl_c_is_one_line_on_what_was_kept_and_exit_130(tmp_path, monkeypatch, capsys):
    from dogmacache.cli import main
    from dogmacache.mutate import run

    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "run_mutate", interrupted)
    args = ["mutate", "--checkpoint", "b.pt", "--genome", "g.fa", "--dna-model", "m", "--gene", "AAA"]
    assert main([*args, "--edit", "chr1:5-6", "--out", str(tmp_path / "o")]) == 130
    message = capsys.readouterr().err.strip()
    assert message.startswith("dogmacache mutate: interrupted; the caches are only read")
    assert "re-run the same command" in message and "\n" not in message


def test_gene_sets_are_scored_against_the_top_moved_genes_through_the_cli(scene, capsys):
    from dogmacache.cli import main

    root, models, genome = scene
    gmt = root / "targets.gmt"
    gmt.write_text("TARGETS\thand-made\tBBB\tCCC\tNOT_SCORED\nELSEWHERE\tnone scored\tZZZ\n")
    out = root / "with_sets"
    args = ["mutate", "--checkpoint", str(root / "biodta_best.pt"), "--genome", str(genome), "--gene", "AAA"]
    args += ["--dna-model", str(models["enformer"]), "--edit", "chr1:1400-1420", "--scgpt-model", str(models["scgpt"])]
    args += ["--profiles", str(root / "profiles.parquet"), "--profile", "cell1", "--top-n", "2"]
    assert main([*args, "--gene-set", str(gmt), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    sets = pd.read_csv(out / "gene_sets.tsv", sep="\t")
    adapter = sets[sets["model"] == "bio-dta adapter"].iloc[0]
    moved = pd.read_csv(out / "moved_genes.tsv", sep="\t")
    # AAA's and BBB's windows hold the edit: their own tokens were replaced, so they move by construction and are
    # left out of the scoring (as the knockout leaves out AAA); CCC and DDD are scored, CCC in the set
    assert set(moved.loc[moved["token_replaced"], "gene"]) == {"AAA", "BBB"} and len(moved) == 2
    assert (adapter["gene_set"], adapter["set_size"], adapter["in_universe"], adapter["universe"]) == (
        "TARGETS",
        3,
        1,
        2,
    )
    assert adapter["top_n"] == 2 and adapter["overlap"] == 1  # both scored genes drawn: no enrichment possible
    assert adapter["fold_enrichment"] == pytest.approx(1.0) and adapter["p_value"] == pytest.approx(1.0)
    summary = json.loads((out / "summary.json").read_text())
    assert (
        summary["gene_sets"][0]["gene_set"] == "TARGETS"
        and "universe = the genes scored" in summary["gene_set_universe"]
    )
    assert "gene set 'ELSEWHERE' (line 2): none of its 1 genes is among the 2 genes scored" in printed.err
    assert "gene sets vs the top moved genes (universe = the genes scored" in printed.out and "TARGETS" in printed.out
    knockout = sets[sets["model"] == "adapter-free knockout"].iloc[0]  # AAA knocked out: BBB, CCC, DDD scored
    assert (knockout["gene_set"], knockout["in_universe"], knockout["universe"], knockout["top_n"]) == (
        "TARGETS",
        2,
        3,
        2,
    )
    moved_knockout = pd.read_csv(out / "moved_genes_knockout.tsv", sep="\t")
    assert list(moved_knockout["rank"]) == [1, 2] and "AAA" not in set(moved_knockout["gene"])
    assert knockout["overlap"] == len(set(moved_knockout["gene"]) & {"BBB", "CCC"})
    from scipy.stats import hypergeom  # the adapter's row above is forced (both scored genes drawn); this one is not

    expected = hypergeom.sf(knockout["overlap"] - 1, 3, 2, 2)  # 3 scored, 2 of them in the set, top 2 drawn
    assert knockout["p_value"] == pytest.approx(expected) and 0 < expected < 1
    assert summary["comparator"].startswith("adapter-free knockout: the same scGPT encoder")
    assert "adapter-free knockout" in printed.out and '"top_moved_knockout"' in printed.out
    with pytest.raises(InputError, match=r"--gene-set .*targets.gmt scores the genes the scGPT encoder moves"):
        run_mutate(_config(root, models, genome, edits=("chr1:1400-1420",), scgpt_model=None, gene_set=str(gmt)))


def test_mutate_reads_an_unchanged_window_from_the_cache_by_digest(scene):
    root, models, genome = scene
    base = Genome(genome).fasta["chr1"][1599]
    summary = run_mutate(_config(root, models, genome, edits=(f"chr1:1600 {base}>{base}",), out=str(root / "same")))
    # the "edited" windows hold the reference bases: found in the cache by item digest, nothing re-embedded
    assert (summary["windows_reembedded"], summary["rows_reused"]) == (0, 4)
    shift = pd.read_csv(root / "same" / "token_shift.tsv", sep="\t")
    assert sorted(shift["id"]) == ["AAA", "BBB"] and (shift["l2"] == 0).all()


def test_edited_windows_are_computed_at_the_threads_the_cache_was_embedded_with(
    scene, idle_two_cores, capsys, monkeypatch
):
    """The scene's DNA cache was embedded at 1 thread; on an idle machine whose plan would take 2, mutate computes
    the edited windows at 1, so that their numbers and the cached reference rows' come from the same kernels, and
    says so. A count chosen by OMP_NUM_THREADS wins."""
    from dogmacache.cache import open_cache
    from dogmacache.mutate import scan

    root, models, genome = scene
    assert open_cache(root / "dna.zarr").manifest.config["torch_threads"] == 1
    used = idle_two_cores(scan)
    base = Genome(genome).fasta["chr1"][1599]
    alt = "A" if base != "A" else "C"
    edit = (f"chr1:1600 {base}>{alt}",)
    summary = run_mutate(_config(root, models, genome, edits=edit, scgpt_model=None, out=str(root / "one")))
    assert summary["windows_reembedded"] == 2 and used == [1, 1]  # the edit's windows, then its control's
    assert "torch threads: 1, as " in capsys.readouterr().out
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    run_mutate(_config(root, models, genome, edits=edit, scgpt_model=None, out=str(root / "two")))
    assert used == [1, 1, 2, 2] and "torch threads: 1" not in capsys.readouterr().out


def test_the_token_shift_stands_beside_matched_edits_at_random_places_of_the_window(scene, monkeypatch):
    """The control re-embeds edits of the same shape at random places of the gene's window and places the
    observed shift among them; the draws are matched (length, inserted bases), inside the window, seeded."""
    from dogmacache.mutate.edits import Edit
    from dogmacache.mutate.null import matched_variant, shape, shape_seed

    root, models, genome = scene
    g = Genome(genome)
    base = g.fasta["chr1"][599]
    edits = (f"chr1:600 {base}>{base}", "chr1:601-610")  # a no-op substitution and a 10-base deletion, each alone
    config = _config(root, models, genome, edits=edits, each=True, scgpt_model=None, null_edits=8, out=str(root / "n"))
    from dogmacache.mutate import run as mutate_run

    placed, real_place = [], mutate_run.place  # each observed value with the draws it was placed among
    monkeypatch.setattr(
        mutate_run, "place", lambda value, null: placed.append((value, null)) or real_place(value, null)
    )
    summary = run_mutate(config)
    shift = pd.read_csv(root / "n" / "token_shift.tsv", sep="\t")
    aaa = shift[shift["id"] == "AAA"].set_index("variant")
    control = summary["token_shift_control"]
    # two shapes, 8 draws each; the no-op's draws change no base (a draw changes the bases its variant changes), so
    # only the deletion's re-embed the gene's window
    assert control["draws"] == 8 and control["windows_reembedded"] == 8
    assert aaa.loc[0, "l2"] == 0 and aaa.loc[0, "l2_null_median"] == 0 and aaa.loc[0, "l2_null_p_at_least"] == 1.0
    value, null = next((v, n) for v, n in placed if v == pytest.approx(aaa.loc[1, "l2"], rel=1e-5))
    assert len(null) == 8 and aaa.loc[1, "l2_null_median"] == pytest.approx(np.median(null), rel=1e-5)
    assert aaa.loc[1, "l2_null_p_at_least"] == pytest.approx((1 + (null >= value).sum()) / 9)
    assert "cosine_to_true_gain_null_p_at_least" in shift and shift["cosine_to_true_gain"].notna().all()
    assert shift.loc[shift["id"] != "AAA", "l2_null_median"].isna().all()  # the control is the gene's window's
    again = run_mutate(config)  # seeded: the same draws
    assert again["token_shift"] == summary["token_shift"]
    # what a draw keeps: lengths, the inserted bases, a substitution's other base; inside the window, a base apart
    scanner_window = (476 - 1, 2048)  # AAA's window: 0-based start, length
    rng = np.random.default_rng(0)
    chrom = g.resolve("chr1")
    insertion = Edit(chrom, 700, "", "GATTACA", "ins")
    deletion = Edit(chrom, 900, str(g.fasta["chr1"][900:905]).upper(), "", "del")
    snv = Edit(chrom, 1000, str(g.fasta["chr1"][1000]).upper(), "T", "snv")
    for k in range(50):
        drawn = matched_variant([insertion, deletion, snv], g, chrom, *scanner_window, rng, k)
        assert shape(drawn) == shape([insertion, deletion, snv])
        assert all(scanner_window[0] <= e.start0 and e.end0 <= sum(scanner_window) for e in drawn)
        assert all(a.end0 < b.start0 for a, b in zip(drawn, drawn[1:], strict=False))
        for e in drawn:
            assert e.ref == str(g.fasta["chr1"][e.start0 : e.end0]).upper()
            if len(e.ref) == len(e.alt) == 1:
                assert e.alt != e.ref
            if not e.ref:  # an insertion between two of the window's bases, never before its first or after its last
                assert scanner_window[0] < e.start0 < sum(scanner_window)
    # a substitution's draws change the bases it changes and keep those it keeps (TATAAA>GAGCTC keeps the A)
    tata = Edit(chrom, 1200, str(g.fasta["chr1"][1200:1206]).upper(), "", "sub")
    tata = dataclasses.replace(tata, alt="".join("G" if k != 1 else b for k, b in enumerate(tata.ref)))
    if all(b == "G" for k, b in enumerate(tata.ref) if k != 1):
        tata = dataclasses.replace(tata, alt=tata.alt.replace("G", "C"))
    kept = [k for k, (a, b) in enumerate(zip(tata.ref, tata.alt, strict=True)) if a == b]
    for k in range(20):
        (drawn,) = matched_variant([tata], g, chrom, *scanner_window, rng, k)
        assert [j for j, (a, b) in enumerate(zip(drawn.ref, drawn.alt, strict=True)) if a == b] == kept
        assert shape([drawn]) == shape([tata])
    # a variant's draws depend on its shape and the seed alone: not on the order its edits are written in
    first = matched_variant([insertion, deletion, snv], g, chrom, *scanner_window, np.random.default_rng(5), 0)
    again = matched_variant([snv, insertion, deletion], g, chrom, *scanner_window, np.random.default_rng(5), 0)
    assert first == again
    # nor on the other variants of the run
    assert shape_seed(0, shape([snv])) == shape_seed(0, shape([snv])) != shape_seed(0, shape([deletion]))


def test_a_variant_whose_edits_cannot_be_placed_elsewhere_says_it_has_no_control(scene, capsys):
    root, models, genome = scene
    edits = ("chr1:477-1490", "chr1:1492-2510")  # two deletions filling AAA's 2,048 bp window: nowhere else to go
    out = root / "filled"
    summary = run_mutate(_config(root, models, genome, edits=edits, scgpt_model=None, null_edits=4, out=str(out)))
    (skipped,) = summary["token_shift_control"]["variants_without_control"]
    assert skipped["variant"] == "chr1:477-1490 + chr1:1492-2510" and "a base apart" in skipped["why"]
    assert "no matched random edits for 'chr1:477-1490 + chr1:1492-2510'" in capsys.readouterr().err
    assert np.isnan(pd.read_csv(out / "token_shift.tsv", sep="\t")["l2_null_median"]).all()


def test_a_variant_of_a_substitution_and_a_deletion_runs_with_and_without_its_control(scene):
    root, models, genome = scene
    g = Genome(genome)
    base = str(g.fasta["chr1"][599]).upper()
    other = "A" if base != "A" else "C"
    edits = (f"chr1:600 {base}>{other}", f"chr1:700 {str(g.fasta['chr1'][699]).upper()}>-")  # one base each
    for draws in (0, 3):
        out = root / f"mixed{draws}"
        run_mutate(_config(root, models, genome, edits=edits, scgpt_model=None, null_edits=draws, out=str(out)))
        shift = pd.read_csv(out / "token_shift.tsv", sep="\t")
        aaa = shift[shift["id"] == "AAA"].iloc[0]
        assert aaa["l2"] > 0 and np.isnan(aaa["l2_null_median"]) == (draws == 0)


def test_edited_rows_of_a_bitround_cache_are_rounded_as_its_rows_were_stored(scene):
    """A `bitround` cache stores rounded numbers; an edited window computed anew is rounded the same way before
    it is compared, so that an edit changing nothing computed anew shifts nothing."""
    from dogmacache.cache import open_cache
    from dogmacache.cache.layout import as_read
    from dogmacache.mutate.edits import WindowSource, edited_window
    from dogmacache.mutate.run import load_adapter
    from dogmacache.mutate.scan import open_scanner

    root, models, genome = scene
    rounded = root / "dna_bitround.zarr"
    _embed_dna(root, models, genome, rounded, compression="bitround", dtype="float32")
    dna = open_cache(rounded)
    model, _ = load_adapter(str(root / "biodta_best.pt"))
    scanner = open_scanner(dna, root / "genes.parquet", genome, models["enformer"], model)
    bases, pad = edited_window(scanner.genome, "chr1", scanner.window_start0(0), scanner.window_bp, [])
    scanner.__dict__["_index"] = {}  # not found by digest: computed anew, as every real edit is
    fresh, embedded, read = scanner._edited([{**scanner.rows[0], "_genome": WindowSource(bases, pad)}])
    cached = dna.read_rows([0], dtype=np.float32)
    assert (embedded, read) == (1, 0)
    np.testing.assert_array_equal(fresh, cached)
    unrounded = fresh.view(np.uint32) & ((1 << 16) - 1)  # float32 keeps 23 mantissa bits, bitround 7
    assert not unrounded.any() and not np.array_equal(as_read(fresh + 1e-3, "bitround"), fresh + 1e-3)


def test_an_anchored_insertion_or_deletion_is_matched_by_that_insertion_or_deletion_alone(tmp_path, genome):
    """`T>TGGGG` and a VCF `T`->`TA` keep an anchor base; written without it, the control's matched edits insert
    (or delete) the same bases alone, and never change the base they sit on."""
    from dogmacache.mutate.null import matched_variant

    g = Genome(genome)
    base, nxt = g.fasta["chr1"][1599], g.fasta["chr1"][1600]
    insertion = parse_edit(f"chr1:1600 {base}>{base}GGGG", g)
    deletion = parse_edit(f"chr1:1600 {base}{nxt}>{base}", g)
    assert (insertion.start0, insertion.ref, insertion.alt) == (1600, "", "GGGG")
    assert (deletion.start0, deletion.ref, deletion.alt) == (1600, nxt, "")
    vcf = tmp_path / "ins.vcf"
    vcf.write_text(f"#CHROM\tPOS\tID\tREF\tALT\nchr1\t1600\t.\t{base}\t{base}A\n")
    (from_vcf,) = read_vcf(vcf, g)
    assert (from_vcf.start0, from_vcf.ref, from_vcf.alt, from_vcf.label) == (1600, "", "A", f"chr1:1600 {base}>{base}A")
    rng = np.random.default_rng(0)
    for edit, removed, added in ((insertion, 0, "GGGG"), (deletion, 1, "")):
        for k in range(20):
            (drawn,) = matched_variant([edit], g, "chr1", 500, 2048, rng, k)
            assert len(drawn.ref) == removed and drawn.alt == added, drawn
    same = parse_edit(f"chr1:1600 {base}>{base}", g)  # no change: kept as written
    assert (same.start0, same.ref, same.alt) == (1599, base, base)
    assert edited_window(g, "chr1", 1590, 20, [insertion])[0] == (
        g.fasta["chr1"][1590:1600] + "GGGG" + g.fasta["chr1"][1600:1606]
    )
    other = "A" if nxt != "A" else "C"  # an insertion and a substitution of the base after it, in either order
    snv = parse_edit(f"chr1:1601 {nxt}>{other}", g)
    both = g.fasta["chr1"][1590:1600] + "GGGG" + other + g.fasta["chr1"][1601:1606]
    assert edited_window(g, "chr1", 1590, 20, [insertion, snv])[0] == both
    assert edited_window(g, "chr1", 1590, 20, [snv, insertion])[0] == both


def test_with_each_every_variant_has_its_own_moved_genes_and_panel_named_by_its_edits(scene, monkeypatch):
    """--each: the figure drew variant 0's genes under a title naming every edit, and top_moved was variant 0's."""
    from dogmacache.mutate import figures

    titles = []
    real_close = figures.plt.close
    monkeypatch.setattr(
        figures.plt, "close", lambda fig: (titles.extend(a.get_title() for a in fig.axes), real_close(fig))
    )
    root, models, genome = scene
    base = Genome(genome).fasta["chr1"][1599]
    alt = "A" if base != "A" else "C"
    edits = (f"chr1:1600 {base}>{alt}", "chr1:1400-1420")
    summary = run_mutate(_config(root, models, genome, edits=edits, each=True, null_edits=0, out=str(root / "each")))
    assert [t["edits"] for t in summary["top_moved"]] == list(edits) and [
        t["variant"] for t in summary["top_moved"]
    ] == [0, 1]
    moved = pd.read_csv(root / "each" / "moved_genes.tsv", sep="\t")
    for entry in summary["top_moved"]:
        own = moved[moved["variant"] == entry["variant"]]
        assert [g["gene"] for g in entry["genes"]] == list(own["gene"].head(10))
    assert len(titles) == 2
    assert titles[0].startswith(f"AAA edited (variant 0: {edits[0]})") and f"variant 1: {edits[1]}" in titles[1]


def test_a_dna_cache_of_a_model_with_weights_needs_dna_model(scene):
    """`--dna-model` may be left out only for a model that reads no weights (kmer, whose windows mutate cuts from
    its bins end to end); for Enformer its absence is one line naming the flag, not a hub lookup of the default."""
    root, models, genome = scene
    base = Genome(genome).fasta["chr1"][1599]
    with pytest.raises(InputError, match="which reads its weights: pass the model folder it was embedded with as"):
        run_mutate(_config(root, models, genome, edits=(f"chr1:1600 {base}>{base}",), dna_model=None, scgpt_model=None))
