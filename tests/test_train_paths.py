"""The CDT task's data paths on the demo caches: evaluation reading each enhancer once, seeded pair batches,
two processes under torchrun, the paper's config, the DNA rows held on the device and a compiled forward, each
training the same model as the plain path."""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from dogmacache.cli import main
from dogmacache.errors import InputError
from dogmacache.train.registry import get_task, load_config
from dogmacache.train.tasks.cdt import pairs as pairs_module
from test_train import ROOT, _config


def test_evaluation_reads_each_enhancer_once_and_matches_per_pair(demo, tmp_path):
    config = load_config(_config(demo, tmp_path))
    task = get_task("cdt")(config)
    data = task.load()
    torch.manual_seed(0)
    model, _, _ = task.build_model(data, {})
    model.eval()
    tables = task.on_device(data, torch.device("cpu"))
    chunks = task.eval_chunks(data, "validation")
    pairs = enhancers = 0
    with torch.no_grad():
        for k in range(len(chunks)):
            chunk = chunks[k]
            assert len(chunk.rows["dna"]) == len(np.unique(chunk.examples["local"].numpy()))  # each enhancer once
            e = chunk.examples  # one forward per pair, as evaluation ran before
            slow = model(chunk.rows["dna"][e["local"]], data.rna, data.protein, e["gene_index"])
            fast = task.predict_chunk(model, chunk, tables)
            assert torch.allclose(fast, slow, atol=1e-5)
            pairs, enhancers = pairs + len(chunk), enhancers + len(chunk.rows["dna"])
    assert pairs == len(data.splits["validation"]) and enhancers < pairs


def test_pair_batches_are_uniform_full_and_seeded(demo, tmp_path):
    config = load_config(_config(demo, tmp_path), {"train.batch_size": 8})
    task = get_task("cdt")(config)
    data = task.load()
    epoch0, again, epoch1 = (task.train_chunks(data, e) for e in (0, 0, 1))
    n_train = len(data.splits["train"])
    assert len(epoch0) == n_train // 8  # last partial batch dropped
    seen = np.concatenate([epoch0[k].examples["index"].numpy() for k in range(len(epoch0))])
    assert len(seen) == len(set(seen)) == (n_train // 8) * 8
    assert all(len(epoch0[k].rows["dna"]) <= 8 for k in range(len(epoch0)))  # one batch's DNA rows at most
    assert np.array_equal(epoch0[0].examples["index"], again[0].examples["index"])
    assert not np.array_equal(epoch0[0].examples["index"], epoch1[0].examples["index"])


def test_torchrun_two_processes_match_one_process(demo, tmp_path):
    """Two processes take their slices of each global batch; a batch of 7 splits 4 / 3, and each process's loss
    is weighted by its share, so that the weights trained (no dropout) are the one process's up to summation
    order, and log.csv's train loss is the global batch's."""
    config = _config(demo, tmp_path, epochs=1, baselines=False)
    one = tmp_path / "one"
    two = tmp_path / "two"
    base = ["train", "--config", str(config), "--no-progress", "--set", "model.dropout=0", "--set"]
    base += ["train.batch_size=7"]
    assert main([*base, "--set", f'output.dir="{one}"']) == 0  # one process: this one
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
    result = subprocess.run(
        [*torchrun, "-m", "dogmacache.cli", *base, "--set", f'output.dir="{two}"'],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    a = json.loads((one / "metrics.json").read_text())["models"]["cdt"]["test"]
    b = json.loads((two / "metrics.json").read_text())["models"]["cdt"]["test"]
    assert a["n"] == b["n"] > 100 and abs(a["pearson"] - b["pearson"]) < 1e-3
    weights = [torch.load(d / "cdt_last.pt", weights_only=False)["model"] for d in (one, two)]
    gap = max(float((weights[0][k] - weights[1][k]).abs().max()) for k in weights[0])
    assert gap < 1e-4, gap  # unweighted slices of 4 and 3 moved them by ~1e-2
    losses = [float(np.genfromtxt(d / "log.csv", delimiter=",", names=True)["train_loss"]) for d in (one, two)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


def test_paper_config_is_the_authors_recipe():
    config = load_config(ROOT / "train" / "configs" / "cdt_paper.toml")
    t = config.train
    assert config.task == "cdt" and config.model.preset == "paper" and config.data.batching == "pairs"
    assert (t.batch_size, t.lr, t.weight_decay, t.clip_norm, t.precision) == (8, 1e-4, 1e-5, 1.0, "fp32")
    assert (t.plateau_factor, t.plateau_patience, t.early_stop_patience, t.early_stop_min_delta) == (
        0.5,
        5,
        10,
        0.001,
    )


def test_dna_rows_kept_on_the_device_train_the_same_model(demo, tmp_path):
    """`dna_on_device = "yes"` (here the CPU is the device): one float16 table shared by CDT and its DNA-MLP
    baseline, chunks carry row numbers, and the run's numbers equal those of rows read on the host."""
    results = {}
    for mode in ("no", "yes"):
        run = tmp_path / mode
        run.mkdir()
        path = _config(demo, run, epochs=1)
        assert (
            main(
                [
                    "train",
                    "--config",
                    str(path),
                    "--no-progress",
                    "--set",
                    f"data.dna_on_device={mode}",
                    "--set",
                    "train.num_workers=0",
                ]
            )
            == 0
        )
        results[mode] = json.loads((run / "train" / "metrics.json").read_text())["models"]
    assert set(results["yes"]) == {"cdt", "dna_mlp", "per_gene_mean"}
    for model in results["no"]:
        assert results["yes"][model]["test"] == results["no"][model]["test"], model

    config = load_config(path, {"data.dna_on_device": "yes"})
    cdt = get_task("cdt")(config)
    data = cdt.load()
    assert data.preload is not None  # the demo's DNA fits the RAM budget
    cdt_dna = cdt.on_device(data, torch.device("cpu"))["dna"]
    mlp = get_task("dna_mlp")(config)
    mlp_dna = mlp.on_device(data, torch.device("cpu"))["dna"]
    assert list(data.device_dna) == ["cpu"] and mlp_dna is cdt_dna and cdt_dna.table.dtype == torch.float16
    chunk = cdt.train_chunks(data, 0)[0]
    assert set(chunk.rows) == {"dna_rows"}
    expected = pairs_module._read(data, chunk.rows["dna_rows"].numpy())  # read on the host, z-scored as configured
    np.testing.assert_allclose(pairs_module.chunk_dna(chunk, cdt_dna).numpy(), expected, rtol=1e-6, atol=1e-6)
    assert pickle.loads(pickle.dumps(data)).device_dna == {}  # loader workers never get the table
    assert data.preload is None  # the table was copied from the RAM preload, which is then let go
    streamed = pairs_module.DeviceDna(data, torch.device("cpu"))  # no preload: read from the cache
    assert torch.equal(streamed.table, cdt_dna.table)


def test_a_compiled_training_forward_trains_the_same_model(demo, tmp_path, monkeypatch):
    """`train.compile = "default"` runs the training forward through torch.compile (inductor, here on the CPU);
    evaluation uses the module itself. Without dropout (compiled code draws its masks from another generator) the
    test numbers match the uncompiled run's to float rounding."""
    compiled, compile_ = [], torch.compile

    def spy(model, **kwargs):  # the compiled module must be the one that trains
        compiled.append(kwargs.get("mode"))
        return compile_(model, **kwargs)

    monkeypatch.setattr(torch, "compile", spy)
    results = {}
    for mode in ("no", "default"):
        run = tmp_path / mode
        run.mkdir()
        path = _config(demo, run, epochs=1, task="dna_mlp")
        assert (
            main(
                [
                    "train",
                    "--config",
                    str(path),
                    "--no-progress",
                    "--set",
                    f"train.compile={mode}",
                    "--set",
                    "train.num_workers=0",
                    "--set",
                    "model.dropout=0.0",
                ]
            )
            == 0
        )
        results[mode] = json.loads((run / "train" / "metrics.json").read_text())["models"]["dna_mlp"]["test"]
    assert compiled == [None]  # once, for the "default" run only
    for key in ("pearson", "mse"):
        assert results["default"][key] == pytest.approx(results["no"][key], rel=1e-3, abs=1e-4), key
    with pytest.raises(InputError, match="compile"):
        load_config(path, {"train.compile": "max"})
