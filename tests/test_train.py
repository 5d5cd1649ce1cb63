"""The train stage on the demo caches: input checks, config checks, resume after a kill, checkpoints that
rebuild the model alone, and torchrun (gloo, 2 processes) against one process."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from dogmacache.cache import CacheWriter, digest_strings, open_cache
from dogmacache.cli import main
from dogmacache.errors import InputError
from dogmacache.train.config import RunConfig, load_config
from dogmacache.train.data import load_cdt_tables
from dogmacache.train.demo import write_demo_config
from dogmacache.train.run import load_model


@pytest.fixture(scope="module")
def demo(demo_run):
    caches = {"dna": demo_run / "cache" / "dna-enformer.zarr", "protein": demo_run / "cache" / "protein-esm2.zarr",
              "gene": demo_run / "cache" / "gene-scgpt.zarr"}  # fmt: skip
    return demo_run, caches


def _config(demo, tmp_path, epochs=3, **train):
    out, caches = demo
    path = write_demo_config(tmp_path, {k: str(v) for k, v in caches.items()}, epochs=epochs)
    text = path.read_text().replace(str(tmp_path / "recipe"), str(out / "recipe"))
    for key, value in train.items():
        text = text.replace("num_workers = 0", f"num_workers = 0\n{key} = {json.dumps(value)}")
    path.write_text(text)
    return path


def test_mismatched_inputs_are_refused(demo, tmp_path):
    out, caches = demo
    labels = out / "recipe" / "cdt" / "labels.parquet"
    args = (str(caches["dna"]), str(caches["gene"]), str(caches["protein"]))
    tables = load_cdt_tables(labels, *args)
    assert tables.rna.shape == (35, 32) and len(tables.pairs) == 1060
    with pytest.raises(InputError, match=r"gene order differs at index 0"):
        load_cdt_tables(
            labels, str(caches["dna"]), str(caches["gene"]), str(_reversed_copy(caches["protein"], tmp_path))
        )
    table = pd.read_parquet(labels)
    table.loc[0, "enhancer"] = "chr9.no_such_enhancer"
    table.to_parquet(tmp_path / "labels.parquet")
    with pytest.raises(Exception, match=r"1 of 1060 ids are not in .*chr9.no_such_enhancer"):
        load_cdt_tables(tmp_path / "labels.parquet", *args)
    other = pd.read_parquet(out / "recipe" / "cdt" / "dna_windows.parquet").iloc[::-1]
    other.to_parquet(tmp_path / "dna_windows.parquet")
    with pytest.raises(InputError, match="embedded from another input set"):
        load_cdt_tables(labels, *args, dna_table=tmp_path / "dna_windows.parquet")
    ids = ["a", "b"]
    CacheWriter.create(tmp_path / "partial.zarr", ids=ids, modality="protein", model="m", model_revision="r", layer=-1,
                       pooling="mean", item_shape=(4,), input_digest=digest_strings(ids))  # fmt: skip
    with pytest.raises(Exception, match="is not complete"):
        load_cdt_tables(labels, str(caches["dna"]), str(caches["gene"]), str(tmp_path / "partial.zarr"))


def _reversed_copy(cache_path, tmp_path):
    cache = open_cache(cache_path)
    ids = cache.ids.tolist()[::-1]
    data = cache[:][::-1].astype(np.float32)
    writer = CacheWriter.create(tmp_path / "reversed.zarr", ids=ids, modality="protein", model="m", model_revision="r",
                                layer=-1, pooling="mean", item_shape=cache.item_shape, input_digest=digest_strings(ids))  # fmt: skip
    writer.write_shard(0, data)
    writer.finalize()
    return tmp_path / "reversed.zarr"


def test_config_rejects_unknown_keys_and_shows_defaults(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(
        "data: {labels: a, dna_cache: b, rna_cache: c, protein_cache: d}\ntrain: {epoch: 3}\n"
    )
    with pytest.raises(
        InputError, match=r"unknown key\(s\) \['epoch'\] in \[train\]; known keys: .*'epochs'"
    ):
        load_config(tmp_path / "c.yaml")
    assert main(["train", "--example-config"]) == 0
    example = capsys.readouterr().out
    assert "[train]\nepochs = 50\nbatch_size = 8\nlr = 0.0001\nweight_decay = 1e-05" in example
    defaults = RunConfig().train
    assert (defaults.clip_norm, defaults.plateau_patience, defaults.early_stop_patience) == (1.0, 5, 10)
    assert 'cpu_allocator = "keep"' in example and 'precision = "fp32"' in example
    (tmp_path / "d.yaml").write_text("data: {labels: a, dna_cache: b, rna_cache: c, protein_cache: d}\n"
                                     "train: {cpu_allocator: jemalloc}\n")  # fmt: skip
    with pytest.raises(
        InputError, match=r"\[train\] cpu_allocator = 'jemalloc' is not one of \['keep', 'system'\]"
    ):
        load_config(tmp_path / "d.yaml")


def test_training_resumes_after_a_kill_and_checkpoints_rebuild_the_model(demo, tmp_path):
    config = _config(demo, tmp_path, epochs=5, baselines=False)
    run_dir = tmp_path / "train"
    command = [sys.executable, "-m", "dogmacache.cli", "train", "--config", str(config), "--no-progress",
               "--set", "output.resume=true"]  # fmt: skip
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline and not _epochs_logged(run_dir) >= 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = _epochs_logged(run_dir)
    assert 2 <= done < 5, (done, (tmp_path / "first.log").read_text()[-2000:])
    resumed = subprocess.run(command, capture_output=True, text=True, check=True)
    assert f"cdt: resuming from {run_dir / 'cdt_last.pt'} after epoch" in resumed.stdout
    killed_metrics = json.loads((run_dir / "metrics.json").read_text())

    shutil.move(run_dir, tmp_path / "killed")
    subprocess.run(command, capture_output=True, text=True, check=True)  # uninterrupted, same seed
    fresh_metrics = json.loads((run_dir / "metrics.json").read_text())
    for split in ("validation", "test"):
        for key in ("pearson", "mse"):
            assert killed_metrics["models"]["cdt"][split][key] == pytest.approx(
                fresh_metrics["models"]["cdt"][split][key], abs=1e-6
            )

    model = load_model(run_dir / "cdt_best.pt")  # the file alone rebuilds the model
    checkpoint = torch.load(run_dir / "cdt_best.pt", weights_only=False)
    assert checkpoint["config"]["train"]["epochs"] == 5 and checkpoint["fingerprints"]["dna"]["ids_digest"]
    assert checkpoint["versions"]["torch"] == torch.__version__ and checkpoint["dna_scale"] is not None
    assert sum(p.numel() for p in model.parameters()) > 50_000


def _epochs_logged(run_dir: Path) -> int:
    log = run_dir / "log.csv"
    return max(0, len(log.read_text().splitlines()) - 1) if log.exists() else 0


def test_torchrun_two_processes_match_one_process(demo, tmp_path):
    config = _config(demo, tmp_path, epochs=3, baselines=False)
    one = tmp_path / "one"
    two = tmp_path / "two"
    base = ["train", "--config", str(config), "--no-progress"]
    subprocess.run([sys.executable, "-m", "dogmacache.cli", *base, "--set", f'output.dir="{one}"'], check=True,
                   capture_output=True)  # fmt: skip
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
    result = subprocess.run([*torchrun, "-m", "dogmacache.cli", *base, "--set", f'output.dir="{two}"'],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    a = json.loads((one / "metrics.json").read_text())["models"]["cdt"]["test"]
    b = json.loads((two / "metrics.json").read_text())["models"]["cdt"]["test"]
    assert a["n"] == b["n"] > 100
    assert abs(a["pearson"] - b["pearson"]) < 0.05 and b["pearson"] > 0.5  # dropout draws differ per process


def test_paper_example_config_parses_with_the_paper_recipe():
    config = load_config(Path(__file__).resolve().parents[1] / "train" / "configs" / "cdt_paper.toml")
    assert config.model.preset == "paper" and config.train == RunConfig().train.__class__(
        **{**RunConfig().train.__dict__, "preload_bytes": 0, "precision": "bf16"}
    )
