"""One-line refusals before any work: embed's model folder of another architecture, a genome that is not a FASTA,
batch sizes below one; mutate's --top-n; a --source-dir that is no folder; a file named as a cache; a Ctrl-C while
the command line loads."""

from __future__ import annotations

import pytest
from dogmacache.cli import main
from dogmacache.errors import InputError


def _error(capsys, args) -> str:
    assert main(args) == 2
    message = capsys.readouterr().err.strip()
    assert message.count("\n") == 0 and message
    return message


def _embed(tmp_path, modality: str, model: str, sequence: str = "MKV") -> list[str]:
    """`dogmacache embed` of a one-row table of `modality` written under tmp_path (a DNA table with a genome of
    2,000 bases beside it); the caller adds --model-path and --out."""
    if modality == "dna":
        (tmp_path / "w.tsv").write_text("id\tchrom\tcenter\nw1\tchr1\t100\n")
        (tmp_path / "g.fa").write_text(">chr1\n" + "ACGT" * 500 + "\n")
        return ["embed", "--input", str(tmp_path / "w.tsv"), "--modality", "dna", "--model", model]
    (tmp_path / f"{modality}.tsv").write_text(f"id\tsequence\nx1\t{sequence}\n")
    return ["embed", "--input", str(tmp_path / f"{modality}.tsv"), "--modality", modality, "--model", model]


def test_embed_refusals_are_one_line(tmp_path, capsys):
    from dogmacache.embed.adapters.enformer import write_tiny_enformer
    from dogmacache.embed.adapters.hf_esm import write_tiny_esm2

    enformer, esm2 = write_tiny_enformer(tmp_path / "enformer"), write_tiny_esm2(tmp_path / "esm2")
    protein = _embed(tmp_path, "protein", "esm2")
    message = _error(capsys, [*protein, "--model-path", str(enformer), "--out", str(tmp_path / "a.zarr")])
    assert "holds a 'enformer' model (its config.json), not an ESM-architecture one" in message
    for flag, value, said in (("--max-batch", "0", "at least 1 item"), ("--max-tokens", "-3", "token budget of 1")):
        message = _error(capsys, [*protein, "--model-path", str(esm2), "--out", str(tmp_path / "b.zarr"), flag, value])
        assert f"{flag} {value} must be" in message and said in message
    dna = _embed(tmp_path, "dna", "enformer")
    message = _error(
        capsys,
        [
            *dna,
            "--model-path",
            str(enformer),
            "--genome",
            str(tmp_path / "protein.tsv"),
            "--out",
            str(tmp_path / "c.zarr"),
        ],
    )
    assert "protein.tsv is not a FASTA file (it starts with b'i', not '>')" in message
    # a genome beside proteins would be recorded with the cache (and refuse its resume without it)
    genome = tmp_path / "g.fa"
    genome.write_text(">chr1\nACGT\n")
    args = [*protein, "--model-path", str(esm2), "--genome", str(genome), "--out", str(tmp_path / "d.zarr")]
    message = _error(capsys, args)
    assert "--genome" in message and "--modality protein reads its inputs from the table: drop --genome" in message
    assert not any(tmp_path.glob("*.zarr"))


@pytest.mark.parametrize("value", ["0", "-1"])
def test_mutate_top_n_below_one_is_refused(value):
    from dogmacache.errors import InputError
    from dogmacache.mutate.run import MutateConfig, run_mutate

    with pytest.raises(InputError, match=rf"--top-n {value}: expected at least 1"):
        run_mutate(MutateConfig("c.pt", "g.fa", "m", "G", "out", top_n=int(value)))


def test_a_source_dir_that_is_no_folder_and_a_file_named_as_a_cache(tmp_path, capsys):
    message = _error(
        capsys, ["recipe", "gasperini", "--out", str(tmp_path / "g"), "--source-dir", str(tmp_path / "no")]
    )
    assert "--source-dir" in message and "is not a folder" in message and "GSE120861" in message
    (tmp_path / "labels.parquet").write_bytes(b"PAR1")
    message = _error(capsys, ["cache", "info", str(tmp_path / "labels.parquet")])
    assert "it is a file, and a cache is a folder" in message


def test_a_ctrl_c_while_the_command_line_loads_is_one_line(monkeypatch, capsys):
    from dogmacache import cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert cli.main(["cache", "info", "x"]) == 130
    assert capsys.readouterr().err.strip() == "dogmacache: interrupted while starting; nothing was done"


def test_a_model_path_that_is_no_folder_and_no_downloadable_id(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("outgoing traffic has been disabled")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.tsv").write_text("id\tsequence\np1\tMKV\n")
    args = ["embed", "--input", "p.tsv", "--modality", "protein", "--model", "esm2", "--model-path", "tiny/esm"]
    message = _error(capsys, [*args, "--out", "x.zarr"])
    assert f"'tiny/esm' is no local folder (none at {tmp_path / 'tiny' / 'esm'})" in message
    assert "cannot be downloaded (OSError: outgoing traffic has been disabled)" in message


def test_an_output_path_under_a_file_is_one_line_before_the_work(tmp_path, capsys, monkeypatch):
    """probe, recipes and the rest say so before they work (probe used to fit every cache first, then crash);
    a path no command checked ahead still ends in one line, not a traceback."""
    from dogmacache.train import probe

    blocker = tmp_path / "file"
    blocker.write_text("x")
    fitted = []
    monkeypatch.setattr(probe, "read_labels", lambda config: fitted.append(config))
    said = _error(
        capsys,
        ["probe", "--caches", "a.zarr", "--labels", "l.parquet", "--target", "beta", "--out", str(blocker / "probe")],
    )
    assert said.startswith("dogmacache probe: error: cannot write to ") and "is a file, not a folder" in said
    assert fitted == []  # refused before the labels were read
    said = _error(capsys, ["recipe", "demo", "--out", str(blocker / "recipe")])
    assert "is a file, not a folder; pick another --out" in said
    said = _error(capsys, ["demo", "--out", str(blocker)])  # the demo's own folders: caught at the top
    assert "cannot read or write" in said and "Not a directory" in said
    # a folder whose parent cannot be made: the system's FileNotFoundError said as such, with the fix
    said = _error(capsys, ["demo", "--out", "/proc/no/such"])
    assert said.startswith("dogmacache demo: error: cannot read or write /proc/no") and "check the path" in said


def test_esm2_and_nucleotide_transformer_refuse_each_others_folders(tmp_path, capsys):
    """One ESM architecture, two vocabularies: a protein read by the 6-mer tokenizer was all unknown tokens, and a
    cDNA read as amino acids; both were written as complete caches."""
    from dogmacache.embed.adapters.hf_esm import write_tiny_esm2, write_tiny_nucleotide_transformer

    esm2, nt = write_tiny_esm2(tmp_path / "esm2"), write_tiny_nucleotide_transformer(tmp_path / "nt")
    protein = _embed(tmp_path, "protein", "esm2", "MKVLAAGIV")
    said = _error(capsys, [*protein, "--model-path", str(nt), "--out", str(tmp_path / "a.zarr")])
    assert "tokenizer has no token for the amino acids D, E, F, H, I ...: it is no protein model's" in said
    rna = _embed(tmp_path, "rna", "nucleotide-transformer", "ACGTACGTACGTAAACCC")
    said = _error(capsys, [*rna, "--model-path", str(esm2), "--out", str(tmp_path / "b.zarr")])
    assert "has no token for 4,096 of the 4,096 6-mers (e.g. AAAAAA): it is no Nucleotide Transformer's" in said
    assert not (tmp_path / "a.zarr").exists() and not (tmp_path / "b.zarr").exists()
    assert main([*protein, "--model-path", str(esm2), "--out", str(tmp_path / "c.zarr")]) == 0


@pytest.mark.parametrize("length", ["0", "1", "2"])
def test_a_max_length_that_keeps_no_residue_is_refused(tmp_path, capsys, length):
    # 0 was read as "the default" and 1 or 2 wrote a complete cache of zeros (the specials alone, left out of the mean)
    args = _embed(tmp_path, "protein", "esm2", "MKVLAAGIV")
    said = _error(capsys, [*args, "--max-length", length, "--out", str(tmp_path / "a.zarr")])
    assert (
        f"--max-length {length} keeps no token of the sequence" in said
        and "(<cls>, <eos>) too; expected at least 3" in said
    )


def test_demo_epochs_below_one_are_refused_before_the_work(tmp_path, capsys):
    said = _error(capsys, ["demo", "--epochs", "0", "--out", str(tmp_path / "d")])
    assert "--epochs 0: expected at least 1" in said and not (tmp_path / "d").exists()


def test_a_profile_without_scgpt_and_a_folder_named_as_a_table(tmp_path):
    from dogmacache.contracts.tables import read_table
    from dogmacache.errors import InputError
    from dogmacache.mutate.run import MutateConfig, run_mutate

    # --profile without --scgpt-model was silently ignored
    config = MutateConfig(
        checkpoint="c.pt", genome="g.fa", dna_model="m", gene="A", out=str(tmp_path / "o"), profile="x"
    )
    with pytest.raises(InputError, match=r"--profiles / --profile choose what the scGPT encoder runs on; add --scgpt"):
        run_mutate(config)
    # a folder given as a table was said not to exist
    with pytest.raises(InputError, match=r"is a folder; pass the table file in it"):
        read_table(tmp_path, recipe="demo", what="input table")


def test_nucleotide_transformer_takes_a_max_length_of_its_one_special_token_and_a_6mer():
    from dogmacache.embed.adapters.hf_esm import EsmOptions, NucleotideTransformerOptions
    from dogmacache.errors import InputError

    assert NucleotideTransformerOptions(max_length=2).max_length == 2  # <cls> and one 6-mer
    with pytest.raises(InputError, match=r"--max-length 1 keeps no token .*\(<cls>\) too; expected at least 2"):
        NucleotideTransformerOptions(max_length=1)
    with pytest.raises(InputError, match=r"expected at least 3"):
        EsmOptions(max_length=2)


def test_an_enformer_folder_of_another_model_or_other_weights_is_one_short_line(tmp_path, capsys):
    import json

    from dogmacache.embed.adapters.enformer import write_tiny_enformer
    from dogmacache.embed.adapters.hf_esm import write_tiny_esm2

    args = _embed(tmp_path, "dna", "enformer")
    args += ["--genome", str(tmp_path / "g.fa"), "--out", str(tmp_path / "e.zarr"), "--model-path"]
    said = _error(capsys, [*args, str(write_tiny_esm2(tmp_path / "esm2"))])
    assert "holds a 'esm' model (its config.json), not an Enformer" in said
    deeper = write_tiny_enformer(tmp_path / "enformer")
    config = json.loads((deeper / "config.json").read_text())
    (deeper / "config.json").write_text(json.dumps({**config, "depth": config["depth"] + 1}))  # weights of 1 block
    said = _error(capsys, [*args, str(deeper)])
    assert ": 32 missing (e.g. transformer.1." in said and len(said) < 700  # was every key: ~19,000 characters


def test_shard_items_below_one_is_refused_before_the_model_loads(tmp_path, capsys):
    args = _embed(tmp_path, "protein", "esm2")
    said = _error(capsys, [*args, "--model-path", str(tmp_path / "nowhere"), "--shard-items", "-1", "--out", "x.zarr"])
    assert said.endswith("--shard-items -1 must be at least 1 item per shard, or left out for ~1 GiB")


def test_a_file_named_as_a_reuse_source_says_so():
    import tempfile

    from dogmacache.embed.reuse import find_caches
    from dogmacache.errors import InputError

    with tempfile.NamedTemporaryFile(suffix=".zarr") as handle:
        with pytest.raises(InputError, match=r"--reuse .*\.zarr is a file; pass a cache"):
            find_caches(handle.name)


def test_another_models_cache_at_the_out_path_is_named_as_such(tmp_path, capsys):
    from dogmacache.embed.adapters.enformer import write_tiny_enformer
    from dogmacache.embed.adapters.hf_esm import write_tiny_esm2

    out = str(tmp_path / "c.zarr")
    dna = _embed(tmp_path, "dna", "enformer")
    assert (
        main(
            [*dna, "--genome", str(tmp_path / "g.fa"), "--model-path", str(write_tiny_enformer(tmp_path / "enformer"))]
            + ["--out", out, "--no-progress"]
        )
        == 0
    )
    capsys.readouterr()
    protein = _embed(tmp_path, "protein", "esm2")
    said = _error(capsys, [*protein, "--model-path", str(write_tiny_esm2(tmp_path / "esm2")), "--out", out])
    assert "c.zarr holds a dna cache of enformer, not of esm2 (protein); choose another --out, or pass" in said


def test_embed_configs_made_in_code_are_checked_as_the_command_line_is():
    """`run_embed(EmbedConfig(...))` (the path the benchmarks take) met no size check: a negative fidelity sample
    was a numpy traceback after the cache was created, a negative batch budget was written to the manifest."""
    from dogmacache.embed.runner import EmbedConfig

    base = {"input": "t.parquet", "modality": "protein", "model": "esm2", "out": "c.zarr"}
    for field, value, said in (
        ("fidelity_items", -1, "--fidelity-items -1 must be 0"),
        ("max_positions", -384, "--max-positions -384 must be at least 1"),
        ("max_positions", 0, "--max-positions 0 must be at least 1"),
        ("max_tokens", -5, "--max-tokens -5 must be a token budget"),
        ("max_batch", 0, "--max-batch 0 must be at least 1"),
        ("shard_items", 0, "--shard-items 0 must be at least 1"),
    ):
        with pytest.raises(InputError, match=said):
            EmbedConfig(**base, **{field: value})
    EmbedConfig(**base, fidelity_items=0, max_tokens=0)  # 0: no receipt, the default budget
