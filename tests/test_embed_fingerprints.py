"""A cache and the run that extends or reuses it must agree on everything that changes the numbers: resolved
adapter options, precision, the model's files and the genome's contents. The manifest records them portably
(file names and digests, a hub id and revision), never as absolute local paths."""

import shutil

import numpy as np
import pandas as pd
import pytest
import zarr
from dogmacache.cache import open_cache
from dogmacache.cli import main
from dogmacache.embed.adapters.enformer import write_tiny_enformer
from dogmacache.embed.adapters.scgpt_model import write_tiny_scgpt
from dogmacache.embed.tiny import write_tiny_esm2

GENES = ["TP53", "MYC", "ALB"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fingerprints")
    rng = np.random.default_rng(0)
    (root / "g.fa").write_text(">chr1\n" + "".join(rng.choice(list("ACGT"), 5000)) + "\n")
    pd.DataFrame(
        {
            "id": [f"w{i}" for i in range(4)],
            "chrom": "chr1",
            "center": [1200, 2000, 3000, 4000],
            "strand": ["+", "-", "+", "-"],
        }
    ).to_parquet(root / "dna.parquet")
    pd.DataFrame({"id": ["p1", "p2", "p3", "p4"], "sequence": ["MKV", "MKVLA", "ACDEFGHIK", "MK"]}).to_parquet(
        root / "protein.parquet"
    )
    pd.DataFrame({"id": GENES}).to_parquet(root / "gene.parquet")
    pd.DataFrame({"id": ["liver", "lung"], "TP53": [3.0, 1.0], "MYC": [3.0, 0.0], "ALB": [900.0, 2.0]}).to_parquet(
        root / "context.parquet"
    )
    models = {
        "enformer": write_tiny_enformer(root / "enformer"),
        "esm2": write_tiny_esm2(root / "esm2"),
        "scgpt": write_tiny_scgpt(root / "scgpt", GENES),
    }
    return root, models


def args(inputs, model, modality, out, *extra, model_path=None, genome=None):
    root, models = inputs
    argv = [
        "embed",
        "--input",
        str(root / f"{modality}.parquet"),
        "--modality",
        modality,
        "--model",
        model,
        "--model-path",
        str(model_path or models[model]),
        "--out",
        str(out),
        "--shard-items",
        "2",
        "--num-workers",
        "0",
        "--no-progress",
        *extra,
    ]
    if modality == "dna":
        argv += ["--genome", str(genome or root / "g.fa")]
    return argv


def unfinish(path):
    """The cache as a kill after its first shard leaves it."""
    group = zarr.open_group(path, mode="r+")
    group.attrs["dogmacache"] = {**dict(group.attrs["dogmacache"]), "complete": False, "shards": []}
    for shard in range(1, group["shard_sha256"].shape[0]):
        group["shard_sha256"][shard] = np.zeros(32, dtype=np.uint8)


RUNS = {
    "strand-policy": (
        ("enformer", "dna"),
        [],
        ["--strand-policy", "rc-average"],
        "--strand-policy: 'forward' in the cache, 'rc-average' now",
    ),
    "window-bp": (("enformer", "dna"), [], ["--window-bp", "4096"], "--window-bp: 2048 in the cache, 4096 now"),
    "max-length": (("esm2", "protein"), [], ["--max-length", "6"], "--max-length: 1024 in the cache, 6 now"),
    "precision": (("esm2", "protein"), [], ["--precision", "bf16"], "precision: 'fp32' in the cache, 'bf16' now"),
    "scgpt-no-l2": (("scgpt", "gene"), [], ["--scgpt-no-l2"], "--scgpt-no-l2: True in the cache, False now"),
    "scgpt-bin-seed": (("scgpt", "context"), [], ["--scgpt-bin-seed", "3"], "--scgpt-bin-seed: 0 in the cache, 3 now"),
}


@pytest.mark.parametrize("finished", [False, True], ids=["resume", "complete"])
@pytest.mark.parametrize("name", list(RUNS))
def test_a_changed_setting_is_refused_naming_it(inputs, tmp_path, capsys, name, finished):
    (model, modality), first, second, message = RUNS[name]
    out = tmp_path / "c.zarr"
    assert main(args(inputs, model, modality, out, *first)) == 0
    if not finished:
        unfinish(out)
    before = open_cache(out, allow_partial=True).manifest
    capsys.readouterr()
    assert main(args(inputs, model, modality, out, *second)) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert message in err and "--overwrite" in err and "another --out" in err
    assert open_cache(out, allow_partial=True).manifest == before  # nothing written


def test_the_same_command_still_resumes_and_completes(inputs, tmp_path, capsys):
    out = tmp_path / "c.zarr"
    assert main(args(inputs, "enformer", "dna", out, "--strand-policy", "rc-average")) == 0
    first = open_cache(out).manifest
    unfinish(out)
    assert main(args(inputs, "enformer", "dna", out, "--strand-policy", "rc-average")) == 0
    assert "resuming" in capsys.readouterr().out
    again = open_cache(out).manifest
    assert again.complete and again.shards == first.shards and len(again.shards) == 2


def test_a_changed_genome_of_the_same_size_is_refused(inputs, tmp_path, capsys):
    root, _ = inputs
    genome = tmp_path / "g.fa"
    shutil.copy(root / "g.fa", genome)
    out = tmp_path / "c.zarr"
    assert main(args(inputs, "enformer", "dna", out, genome=genome)) == 0
    recorded = open_cache(out).manifest.config["genome"]
    assert recorded["name"] == "g.fa" and recorded["sha256"].startswith("sha256:")
    text = genome.read_text()
    genome.write_text(text[:20] + ("A" if text[20] != "A" else "C") + text[21:])  # one base, same size
    capsys.readouterr()
    assert main(args(inputs, "enformer", "dna", out, genome=genome)) == 2
    err = capsys.readouterr().err
    assert "genome g.fa: " in err and "in the cache" in err and len(err.splitlines()) == 1


def test_the_genome_digest_is_kept_beside_it_and_trusted_while_the_file_is_unchanged(inputs, tmp_path):
    from dogmacache.embed.genome import genome_digest

    genome = tmp_path / "g.fa"
    shutil.copy(inputs[0] / "g.fa", genome)
    first = genome_digest(genome)
    sidecar = tmp_path / "g.fa.sha256"
    assert sidecar.is_file() and first in sidecar.read_text()
    sidecar.write_text(sidecar.read_text().replace(first, "sha256:" + "0" * 64))
    assert genome_digest(genome) == "sha256:" + "0" * 64  # read from beside the file, not hashed again
    genome.write_text(genome.read_text() + ">chr9\nACGT\n")
    assert genome_digest(genome) not in (first, "sha256:" + "0" * 64)  # the file changed: hashed again


@pytest.mark.parametrize(
    ("model", "modality", "edited"),
    [
        ("esm2", "protein", "tokenizer_config.json"),
        ("esm2", "protein", "config.json"),
        ("scgpt", "gene", "vocab.json"),
        ("scgpt", "gene", "args.json"),
    ],
)
def test_an_edited_model_file_is_refused_naming_it(inputs, tmp_path, capsys, model, modality, edited):
    folder = tmp_path / model
    shutil.copytree(inputs[1][model], folder)
    out = tmp_path / "c.zarr"
    assert main(args(inputs, model, modality, out, model_path=folder)) == 0
    files = open_cache(out).manifest.config["model_files"]
    assert edited in files and all(v.startswith("sha256:") for v in files.values())
    (folder / edited).write_text((folder / edited).read_text() + "\n")  # same meaning, other bytes
    capsys.readouterr()
    assert main(args(inputs, model, modality, out, model_path=folder)) == 2
    err = capsys.readouterr().err
    assert f"model file {edited}: " in err and len(err.splitlines()) == 1


def _strings(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


@pytest.mark.parametrize(("model", "modality"), [("enformer", "dna"), ("esm2", "protein"), ("scgpt", "gene")])
def test_the_manifest_holds_no_local_paths_and_a_portable_model_identity(inputs, tmp_path, model, modality):
    root, models = inputs
    assert main(args(inputs, model, modality, tmp_path / "c.zarr")) == 0
    manifest = open_cache(tmp_path / "c.zarr").manifest
    strings = list(_strings(manifest.config)) + [manifest.model, manifest.model_revision]
    assert len(strings) > 10
    assert not [s for s in strings if str(tmp_path) in s or str(root) in s or s.startswith("/")]
    assert manifest.model == model  # the folder's name (the tiny models' folders are named after the adapter)
    weights = {"enformer": "pytorch_model.bin", "esm2": "model.safetensors", "scgpt": "best_model.pt"}[model]
    assert manifest.model_revision == manifest.config["model_files"][weights]
    assert manifest.config["input"]["name"] == f"{modality}.parquet" and manifest.config["out"] == "c.zarr"


def test_a_hub_snapshot_folder_is_recorded_as_its_hub_id_and_revision(inputs, tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "hub" / "models--facebook--esm2_t6_8M_UR50D" / "snapshots" / commit
    shutil.copytree(inputs[1]["esm2"], snapshot)
    assert main(args(inputs, "esm2", "protein", tmp_path / "c.zarr", model_path=snapshot)) == 0
    manifest = open_cache(tmp_path / "c.zarr").manifest
    assert (manifest.model, manifest.model_revision) == ("facebook/esm2_t6_8M_UR50D", commit)


def test_settings_compare_as_the_manifest_stores_them_in_each_check(tmp_path):
    """embed's resume check, mutate's cache check and --reuse's key compare number settings in one way
    (`cache.manifest.config_differences`): a value held now as a tuple equals the list its manifest stores, and a
    changed value is still named."""
    from dogmacache.embed.reuse import _differs
    from dogmacache.errors import InputError
    from dogmacache.mutate.settings import check_same_settings as mutate_check

    flags = {"bins": {"flags": ("--bins",)}}
    stored = {"precision": "fp32", "device": "cpu", "options": {"bins": [1, 2]}, "genome": {"name": "g", "sha256": "a"}}
    held = {**stored, "options": {"bins": (1, 2)}}
    mutate_check("c.zarr", stored, held, flags, "g.fa", "m")  # no refusal
    assert _differs({"--bins": [1, 2]}, {"--bins": (1, 2)}) == ""
    with pytest.raises(InputError, match=r"--bins: \[1, 2\] in the cache, \(1, 3\) now"):
        mutate_check("c.zarr", stored, {**stored, "options": {"bins": (1, 3)}}, flags, "g.fa", "m")
    assert _differs({"--bins": [1, 2]}, {"--bins": (1, 3)}) == "--bins is [1, 2] there, (1, 3) here"


def test_the_same_genome_under_another_name_is_said_as_such(inputs, tmp_path, capsys):
    """The cache records its genome by name and sha256; resuming it with a renamed copy of the same FASTA is
    refused naming both names and the fix, where it read as a genome 'None now'."""
    root, _ = inputs
    assert main(args(inputs, "enformer", "dna", tmp_path / "c.zarr")) == 0
    unfinish(tmp_path / "c.zarr")
    shutil.copy(root / "g.fa", tmp_path / "hg.fa")
    capsys.readouterr()
    assert main(args(inputs, "enformer", "dna", tmp_path / "c.zarr", genome=tmp_path / "hg.fa")) == 2
    said = capsys.readouterr().err
    assert "embedded from the genome file 'g.fa', and this run's is 'hg.fa' with the same sha256" in said
    assert "a symlink g.fa -> hg.fa" in said
    assert main(args(inputs, "enformer", "dna", tmp_path / "c.zarr")) == 0  # under its name it resumes


def test_a_cache_stopped_before_its_first_shard_records_the_settings_it_was_finished_with(
    inputs, tmp_path, monkeypatch
):
    """Its rows are all the resuming run's: the manifest's config says that run's settings, the receipt's size
    among them, where it kept the first run's."""
    from dogmacache.cache.writer import CacheWriter

    def stop(self, *args, **kwargs):
        raise RuntimeError("stopped before the first shard")

    with monkeypatch.context() as patch:
        patch.setattr(CacheWriter, "write_shard", stop)
        with pytest.raises(RuntimeError):
            main(args(inputs, "esm2", "protein", tmp_path / "c.zarr"))
    assert main(args(inputs, "esm2", "protein", tmp_path / "c.zarr", "--fidelity-items", "2", "--max-batch", "3")) == 0
    manifest = open_cache(tmp_path / "c.zarr").manifest
    assert manifest.config["fidelity_items"] == 2 == manifest.fidelity["items"]
    assert manifest.config["max_batch"] == 3 and "resumed_with" not in manifest.config


def test_a_protein_cache_begun_with_a_genome_points_to_reuse(tmp_path, monkeypatch):
    """A cache begun with a --genome beside a modality that reads none (refused at the command line now) cannot
    be resumed without one: the refusal names --reuse into another --out, which copies its rows (the genome is
    not part of the reuse key), not a --genome the command line refuses."""
    from types import SimpleNamespace

    from dogmacache.embed import settings
    from dogmacache.errors import InputError

    old = {"precision": "fp32", "device": "cpu", "genome": {"name": "g.fa", "sha256": "ab" * 32}}
    found = SimpleNamespace(modality="protein", model="esm2", config=old)
    monkeypatch.setattr(settings, "existing_manifest", lambda out: found)
    now = {k: v for k, v in old.items() if k != "genome"}
    with pytest.raises(
        InputError, match=r"begun with --genome 'g.fa' beside --modality protein.*--reuse .*--overwrite"
    ):
        settings.check_same_settings("p.zarr", now, {}, "protein", "esm2")
    settings.check_same_settings("p.zarr", old, {}, "protein", "esm2")  # the settings it was begun with: no refusal
