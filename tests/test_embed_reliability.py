"""The embed stage under bad inputs and faults: windows past a chromosome end, errors raised in input workers,
batches of fixed shapes across shard ends, workers that die with their parent, unwritable or full outputs, strict
weight loading. Tiny models written here, inputs made by hand."""

import dataclasses
import errno
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from dogmacache.cache import open_cache
from dogmacache.cli import main
from dogmacache.embed.adapters.enformer import EnformerAdapter, write_tiny_enformer
from dogmacache.embed.genome import Genome
from dogmacache.embed.runner import EmbedConfig, batches_by_budget, run_embed
from dogmacache.embed.tiny import write_tiny_esm2
from dogmacache.errors import InputError, ModelError


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    rng = np.random.default_rng(0)
    (root / "g.fa").write_text(
        ">chr1\n"
        + "".join(rng.choice(list("ACGT"), 5000))
        + "\n>chr2\n"
        + "".join(rng.choice(list("ACGT"), 3000))
        + "\n"
    )
    centers = [1200, 2000, 2600, 3000, 3400, 3800, 4200, 4999]
    pd.DataFrame(
        {"id": [f"w{i}" for i in range(8)], "chrom": ["chr1"] * 8, "center": centers, "strand": ["+", "-"] * 4}
    ).to_parquet(root / "dna.parquet")
    pd.DataFrame({"id": ["p1", "p2", "p3"], "sequence": ["MKV", "MKVLA", "ACDEFGHIK"]}).to_parquet(
        root / "protein.parquet"
    )
    models = {"enformer": write_tiny_enformer(root / "enformer"), "esm2": write_tiny_esm2(root / "esm2")}
    return root, models


def config(inputs, model, modality, out, **kwargs) -> EmbedConfig:
    root, models = inputs
    values = {
        "input": str(root / f"{modality}.parquet"),
        "modality": modality,
        "model": model,
        "out": str(out),
        "model_path": str(models[model]),
        "genome": str(root / "g.fa") if modality == "dna" else None,
        "device": "cpu",
        "num_workers": 0,
        "progress": False,
        **kwargs,
    }
    return EmbedConfig(**values)


def dna_args(inputs, out, *extra, table="dna.parquet"):
    root, models = inputs
    return [
        "embed",
        "--input",
        str(root / table),
        "--modality",
        "dna",
        "--model",
        "enformer",
        "--model-path",
        str(models["enformer"]),
        "--genome",
        str(root / "g.fa"),
        "--out",
        str(out),
        "--num-workers",
        "0",
        "--no-progress",
        *extra,
    ]


# ---- windows past a chromosome end --------------------------------------------------------------------------
@pytest.mark.parametrize("center", [3001, 3500, 0, -50, 5_000_000])
def test_a_centre_outside_the_chromosome_is_an_error_naming_its_length(inputs, center):
    genome = Genome(inputs[0] / "g.fa")
    with pytest.raises(InputError, match=rf"centre {center:,} is outside chromosome 'chr2' \(1\.\.3,000\)"):
        genome.window("chr2", center, 2048)


@pytest.mark.parametrize("center", [1, 2, 1023, 2999, 3000])
def test_windows_overlapping_an_end_keep_their_length(inputs, center):
    seq, n_padded = Genome(inputs[0] / "g.fa").window("chr2", center, 2048)
    assert len(seq) == 2048 and 0 <= n_padded <= 2048
    assert seq.count("N") == n_padded  # the random genome has no N of its own


def test_embed_refuses_a_window_outside_its_chromosome_before_loading_the_model(inputs, tmp_path, capsys, monkeypatch):
    root, _ = inputs
    table = pd.read_parquet(root / "dna.parquet")
    table.loc[5, ["chrom", "center"]] = ["chr2", 201_500]
    table.to_parquet(tmp_path / "t.parquet")

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(EnformerAdapter, "__init__", no_model)
    argv = dna_args(inputs, tmp_path / "c.zarr")
    argv[argv.index("--input") + 1] = str(tmp_path / "t.parquet")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "item 'w5': centre 201,500 is outside chromosome 'chr2' (1..3,000)" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "c.zarr").exists()


# ---- errors raised in input workers ---------------------------------------------------------------------------
def test_an_input_error_in_a_worker_arrives_as_one_line(inputs, tmp_path, capsys):
    root, models = inputs
    pd.DataFrame({"id": ["p1", "p2", "p3"], "sequence": ["MKV", "MK1V", "MKV"]}).to_parquet(tmp_path / "bad.parquet")
    argv = [
        "embed",
        "--input",
        str(tmp_path / "bad.parquet"),
        "--modality",
        "protein",
        "--model",
        "esm2",
        "--model-path",
        str(models["esm2"]),
        "--out",
        str(tmp_path / "c.zarr"),
        "--num-workers",
        "2",
        "--no-progress",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert "protein 'p2': characters ['1'] are not amino acids" in err and "DataLoader" not in err
    assert not open_cache(tmp_path / "c.zarr", allow_partial=True).manifest.complete


# ---- batches never cross a shard boundary ---------------------------------------------------------------------
def test_budget_batches_restart_at_every_boundary():
    items = list(range(8))
    batches = list(batches_by_budget(items, lambda i: 1, max_tokens=100, max_batch=2, starts={3, 6}))
    assert batches == [[0, 1], [2], [3, 4], [5], [6, 7]]


def test_batches_of_one_size_run_on_across_shard_ends(inputs, tmp_path, monkeypatch):
    """Windows all have one size, so every batch is filled out to one shape and may hold rows of two shards: 8
    windows in shards of 3, 3 and 2 take four full batches, not five with two short ones."""
    sizes = []
    original = EnformerAdapter.embed

    def recording(self, batch):
        sizes.append((len({id(item) for item in batch}), len(batch)))  # distinct items, and the shape's batch size
        return original(self, batch)

    monkeypatch.setattr(EnformerAdapter, "embed", recording)
    run_embed(config(inputs, "enformer", "dna", tmp_path / "c.zarr", shard_items=3, max_batch=2, fidelity_items=0))
    assert sizes == [(2, 2)] * 4


def test_every_forward_of_same_size_items_has_the_full_batch_size(inputs, tmp_path, monkeypatch):
    """A short batch of windows is filled out with copies, so an item's numbers never depend on how many items
    it was embedded with: the last of 7 windows, alone in its batch, equals the same window embedded beside an
    eighth."""
    root, _ = inputs
    pd.read_parquet(root / "dna.parquet").iloc[:7].to_parquet(root / "dna7.parquet")
    sizes = []
    original = EnformerAdapter.embed

    def recording(self, batch):
        sizes.append(len(batch))
        return original(self, batch)

    monkeypatch.setattr(EnformerAdapter, "embed", recording)
    seven = config(inputs, "enformer", "dna", tmp_path / "a.zarr", max_batch=2, fidelity_items=0)
    run_embed(dataclasses.replace(seven, input=str(root / "dna7.parquet")))
    assert sizes == [2, 2, 2, 2]  # the fourth: window 6 and a copy of it
    run_embed(config(inputs, "enformer", "dna", tmp_path / "b.zarr", max_batch=2, fidelity_items=0))
    a, b = open_cache(tmp_path / "a.zarr")[:], open_cache(tmp_path / "b.zarr")[:7]
    assert np.array_equal(a.view(np.uint16), b.view(np.uint16))


def test_resume_after_a_lost_shard_gives_the_same_bytes(inputs, tmp_path):
    """A resumed shard gives the bytes of the first run, though its rows now share batches with shard 2's (every
    batch of windows has one fixed shape)."""
    cfg = config(inputs, "enformer", "dna", tmp_path / "c.zarr", shard_items=3, max_batch=2)
    run_embed(cfg)
    first = open_cache(tmp_path / "c.zarr")
    import zarr

    group = zarr.open_group(tmp_path / "c.zarr", mode="r+")
    manifest = dict(group.attrs["dogmacache"])
    group.attrs["dogmacache"] = {**manifest, "complete": False, "shards": []}
    group["shard_sha256"][1] = np.zeros(32, dtype=np.uint8)  # shard 1 as a kill would leave it
    group["shard_sha256"][2] = np.zeros(32, dtype=np.uint8)
    run_embed(cfg)
    again = open_cache(tmp_path / "c.zarr")
    assert again.manifest.shards == first.manifest.shards and len(again.manifest.shards) == 3


# ---- input workers die with their parent ----------------------------------------------------------------------
def _gone(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_input_workers_exit_when_embed_is_killed(inputs, tmp_path):
    """64 kb windows fill the workers' result pipe, whose read end the sibling workers also hold: without a
    parent-death signal a worker blocks flushing it forever."""
    import psutil

    root, _ = inputs
    pd.DataFrame(
        {"id": [f"w{i}" for i in range(40)], "chrom": "chr1", "center": np.linspace(100, 4900, 40).astype(int)}
    ).to_parquet(tmp_path / "t.parquet")
    argv = dna_args(inputs, tmp_path / "c.zarr", "--window-bp", "65536", "--tf-gamma", "off")
    argv[argv.index("--input") + 1] = str(tmp_path / "t.parquet")
    argv[argv.index("--num-workers") + 1] = "2"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dogmacache.cli", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    workers = []
    while time.time() < deadline and len(workers) < 2 and proc.poll() is None:
        workers = psutil.Process(proc.pid).children()
        time.sleep(0.05)
    assert len(workers) == 2, "the run ended before its workers could be seen"
    time.sleep(1.0)  # the workers fill their pipe
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 60
    while time.time() < deadline and not all(_gone(w.pid) for w in workers):
        time.sleep(0.2)
    alive = [w.pid for w in workers if not _gone(w.pid)]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert alive == []


# ---- unwritable and full outputs -----------------------------------------------------------------------------
def test_a_read_only_output_is_refused_before_the_model_loads(inputs, tmp_path, capsys, monkeypatch):
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), kwargs.get("dir"))

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    monkeypatch.setattr(EnformerAdapter, "__init__", no_model)
    assert main(dna_args(inputs, tmp_path / "ro" / "c.zarr")) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert f"cannot write to {tmp_path / 'ro' / 'c.zarr'}: Read-only file system" in err and "--out" in err


def test_a_full_disk_mid_run_is_one_line_and_the_same_command_resumes(inputs, tmp_path, capsys, monkeypatch):
    from dogmacache.cache.writer import CacheWriter

    original, calls = CacheWriter.write_shard, []

    def fills_up(self, shard, *args, **kwargs):
        calls.append(shard)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path / "embeddings"))
        return original(self, shard, *args, **kwargs)

    monkeypatch.setattr(CacheWriter, "write_shard", fills_up)
    argv = dna_args(inputs, tmp_path / "c.zarr", "--shard-items", "4")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert "No space left on device" in err and "1 of 2 shards are kept" in err and "re-run the same command" in err
    monkeypatch.setattr(CacheWriter, "write_shard", original)
    assert main(argv) == 0
    assert "resuming" in capsys.readouterr().out and open_cache(tmp_path / "c.zarr").manifest.complete


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_nan_outputs_are_refused_on_the_device_naming_the_item(inputs, tmp_path, capsys, monkeypatch, dtype):
    """A model output with NaN is refused before it leaves the device, naming the item; its shard is not written
    (the earlier shard is kept), and the shard writer is told not to check the rows again."""
    from dogmacache.cache.writer import CacheWriter

    real_forward, real_write = EnformerAdapter.forward_layers, CacheWriter.write_shard
    told = []

    def nan_for_w5(self, one_hot, layers):
        out = real_forward(self, one_hot, layers)
        first = one_hot.shape[0] * nan_for_w5.batches
        nan_for_w5.batches += 1
        if first <= 5 < first + one_hot.shape[0]:
            out = {k: v.clone() for k, v in out.items()}
            out["trunk"][5 - first, 0, 0] = float("nan")
        return out

    def record(self, shard, *args, **kwargs):
        told.append(kwargs.get("checked"))
        return real_write(self, shard, *args, **kwargs)

    nan_for_w5.batches = 0
    monkeypatch.setattr(EnformerAdapter, "forward_layers", nan_for_w5)
    monkeypatch.setattr(CacheWriter, "write_shard", record)
    argv = dna_args(inputs, tmp_path / "c.zarr", "--shard-items", "4", "--max-batch", "2", "--dtype", dtype)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "item 'w5' has NaN/Inf values" in err and "--precision fp32" in err, err
    assert told == [True]  # shard 0 (w0..w3) written, unchecked by the writer; shard 1 never reached it


# ---- strict weight loading ------------------------------------------------------------------------------------
def test_esm_weights_with_an_extra_key_are_refused(inputs, tmp_path):
    import shutil

    from dogmacache.embed.adapters.hf_esm import Esm2Adapter, EsmOptions
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "esm2"
    shutil.copytree(inputs[1]["esm2"], folder)
    state = load_file(str(folder / "model.safetensors"))
    save_file(
        {**state, "lm_head.dense.weight": torch.zeros(2)}, str(folder / "model.safetensors"), metadata={"format": "pt"}
    )
    Esm2Adapter(str(folder), EsmOptions(), torch.device("cpu"))  # the masked-LM head of hub checkpoints is fine
    save_file(
        {**state, "encoder.extra.weight": torch.zeros(2)}, str(folder / "model.safetensors"), metadata={"format": "pt"}
    )
    with pytest.raises(
        ModelError,
        match=r"model.safetensors does not match the model in .*config.json: 1 unexpected \(e\.g\. encoder\.extra\.w",
    ):
        Esm2Adapter(str(folder), EsmOptions(), torch.device("cpu"))


# ---- the Nucleotide Transformer on genome windows -------------------------------------------------------------
def test_nucleotide_transformer_windows_record_padding_and_strand_policy(inputs, tmp_path, capsys):
    from dogmacache.embed.tiny import write_tiny_nucleotide_transformer

    root, _ = inputs
    folder = write_tiny_nucleotide_transformer(tmp_path / "nt")
    argv = [
        "embed",
        "--input",
        str(root / "dna.parquet"),
        "--modality",
        "dna",
        "--model",
        "nucleotide-transformer",
        "--model-path",
        str(folder),
        "--genome",
        str(root / "g.fa"),
        "--window-bp",
        "600",
        "--out",
        str(tmp_path / "c.zarr"),
        "--num-workers",
        "0",
        "--no-progress",
    ]
    assert main(argv) == 0
    assert "1 windows padded with N" in capsys.readouterr().out
    cache = open_cache(tmp_path / "c.zarr")
    n_padded = cache.extra("n_padded")[:]
    assert n_padded.tolist() == [0] * 7 + [4999 - 1 - 300 + 600 - 5000]  # only the last centre nears chr1's end
    assert cache.manifest.config["options"]["strand_policy"] == "forward"
    assert main([*argv[:-3], "--out", str(tmp_path / "d.zarr"), "--strand-policy", "rc-average", "--no-progress"]) == 2
    assert (
        "--strand-policy 'rc-average' is not one this model takes; expected one of forward" in capsys.readouterr().err
    )
    # a dna table that also has a sequence column: the input digest covers the windows' coordinates only, so such a
    # table is refused, naming --modality rna for the sequences
    with_sequences = tmp_path / "dna_seq.parquet"
    table = pd.read_parquet(root / "dna.parquet")
    table.assign(sequence="ACGTACGTAC").to_parquet(with_sequences)
    argv[2] = str(with_sequences)
    assert main([*argv[:-3], "--out", str(tmp_path / "e.zarr"), "--no-progress"]) == 2
    said = capsys.readouterr().err.strip()
    assert f"item {table['id'].iloc[0]!r}: --modality dna cuts each window from --genome at chrom / center" in said
    assert said.endswith("embed those sequences with --modality rna, or drop the column") and "\n" not in said


def test_one_dtype_in_the_manifest_config(inputs, tmp_path):
    """The storage dtype is recorded once: no adapter fact shadows the run's settings."""
    from dogmacache.embed.adapters.scgpt_model import write_tiny_scgpt

    root, _ = inputs
    folder = write_tiny_scgpt(tmp_path / "scgpt", ["TP53", "MYC"])
    pd.DataFrame({"id": ["TP53", "MYC"]}).to_parquet(tmp_path / "gene.parquet")
    assert (
        main(
            [
                "embed",
                "--input",
                str(tmp_path / "gene.parquet"),
                "--modality",
                "gene",
                "--model",
                "scgpt",
                "--model-path",
                str(folder),
                "--out",
                str(tmp_path / "c.zarr"),
                "--dtype",
                "float16",
                "--num-workers",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    manifest = open_cache(tmp_path / "c.zarr").manifest
    assert manifest.dtype == manifest.config["dtype"] == "float16"


def test_esm_weights_of_another_size_than_the_config_are_one_line(inputs, tmp_path):
    """transformers' own loading raises torch's size mismatch: it becomes the one-line refusal every adapter gives,
    which mutate says as its --dna-model."""
    import json
    import shutil

    from dogmacache.embed.adapters.hf_esm import Esm2Adapter, EsmOptions
    from dogmacache.errors import WeightsMismatchError

    folder = tmp_path / "esm2"
    shutil.copytree(inputs[1]["esm2"], folder)
    config = json.loads((folder / "config.json").read_text())
    wider = config["intermediate_size"] * 2
    (folder / "config.json").write_text(json.dumps({**config, "intermediate_size": wider}))
    with pytest.raises(WeightsMismatchError) as err:
        Esm2Adapter(str(folder), EsmOptions(), torch.device("cpu"))
    message = str(err.value)
    assert "\n" not in message and "model.safetensors does not match the model in" in message
    n, d = config["intermediate_size"], config["hidden_size"]
    assert (
        f": 6 of another shape (e.g. encoder.layer.0.intermediate.dense.weight {n}x{d} (the model's: {wider}x{d})"
        in message
    )
    assert message.endswith("(its config.json and weights together)")
    deeper = (
        config["num_hidden_layers"] + 1
    )  # every key of the extra layer is named by count, not only the first misfit
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": deeper}))
    with pytest.raises(WeightsMismatchError, match=r": \d+ missing \(e\.g\. encoder\.layer\.2\.attention"):
        Esm2Adapter(str(folder), EsmOptions(), torch.device("cpu"))
