"""The train stage on the demo caches: input, label and config checks, resume after a kill, refusal to resume a
changed run, checkpoints that rebuild the model alone, a second task on the same loop, the authors' early
stopping rule, torchrun (gloo, 2 processes) against one process, and DNA rows kept on the device."""

import dataclasses
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
from dogmacache.cache import CacheSpec, CacheWriter, digest_strings, open_cache
from dogmacache.cli import main
from dogmacache.demo import demo_config
from dogmacache.errors import InputError
from dogmacache.train import load_model
from dogmacache.train.config import to_toml
from dogmacache.train.loop import EarlyStopping
from dogmacache.train.registry import TASKS, default_config, get_task, load_config

ROOT = Path(__file__).resolve().parents[1]


def _config(demo, tmp_path, epochs=3, task="cdt", **train):
    """A demo config file for `task` writing into tmp_path/train."""
    out, caches = demo
    config = demo_config(out, caches, epochs=epochs)
    config = dataclasses.replace(
        config,
        # the controls have their own tests (test_controls.py); here one model and its baselines
        train=dataclasses.replace(config.train, **{"controls": (), "control_caches": (), **train}),
        output=dataclasses.replace(config.output, dir=str(tmp_path / "train")),
    )
    if task != "cdt":
        data_keys = {f.name for f in dataclasses.fields(get_task(task).data_config)}
        base = default_config(task)
        config = dataclasses.replace(
            config,
            task=task,
            model=base.model,
            data=base.data.__class__(**{k: v for k, v in dataclasses.asdict(config.data).items() if k in data_keys}),
        )
    path = tmp_path / f"{task}.toml"
    path.write_text(to_toml(config))
    return path


def _load(config_path, **data):
    config = load_config(config_path, {f"data.{k}": v for k, v in data.items()})
    return get_task(config.task)(config).load()


def test_mismatched_inputs_are_refused(demo, tmp_path):
    out, caches = demo
    config = _config(demo, tmp_path)
    data = _load(config)
    assert data.rna.shape == (35, 32) and sum(len(s) for s in data.splits.values()) == 1060
    assert set(data.fingerprints) == {"dna", "rna", "protein"}
    with pytest.raises(InputError, match=r"gene order differs at index 0"):
        _load(config, protein_cache=str(_reversed_copy(caches["protein"], tmp_path)))
    table = pd.read_parquet(out / "recipe" / "cdt" / "labels.parquet")
    table.loc[0, "enhancer"] = "chr9.no_such_enhancer"
    table.to_parquet(tmp_path / "labels.parquet")
    with pytest.raises(Exception, match=r"1 of 1060 ids are not in .*chr9.no_such_enhancer"):
        _load(config, labels=str(tmp_path / "labels.parquet"))
    table = pd.read_parquet(out / "recipe" / "cdt" / "labels.parquet")
    table.loc[0, "gene"] = "NOPE"
    table.to_parquet(tmp_path / "nope.parquet")  # another gene's index: one index, two genes
    with pytest.raises(InputError, match=r"gene_index \d+ is given 2 genes \(\w+, NOPE\)"):
        _load(config, labels=str(tmp_path / "nope.parquet"))
    table.loc[0, "gene_index"] = 999
    table.to_parquet(tmp_path / "nope.parquet")  # an index of its own: not a gene of the caches
    with pytest.raises(InputError, match=r"gene 'NOPE' has gene_index 999 but is not among the 35 genes of "):
        _load(config, labels=str(tmp_path / "nope.parquet"))
    other = pd.read_parquet(out / "recipe" / "cdt" / "dna_windows.parquet").iloc[::-1]
    other.to_parquet(tmp_path / "dna_windows.parquet")
    with pytest.raises(InputError, match="embedded from another input set"):
        _load(config, dna_table=str(tmp_path / "dna_windows.parquet"))
    ids = ["a", "b"]
    CacheWriter.create(
        tmp_path / "partial.zarr",
        CacheSpec(
            modality="protein",
            model="m",
            model_revision="r",
            layer=-1,
            pooling="mean",
            item_shape=(4,),
            input_digest=digest_strings(ids),
        ),
        ids=ids,
    )
    with pytest.raises(Exception, match="is not complete"):
        _load(config, protein_cache=str(tmp_path / "partial.zarr"))


def _reversed_copy(cache_path, tmp_path):
    cache = open_cache(cache_path)
    ids = cache.ids.tolist()[::-1]
    data = cache[:][::-1].astype(np.float32)
    spec = CacheSpec(
        modality="protein",
        model="m",
        model_revision="r",
        layer=-1,
        pooling="mean",
        item_shape=cache.item_shape,
        input_digest=digest_strings(ids),
    )
    writer = CacheWriter.create(tmp_path / "reversed.zarr", spec, ids=ids)
    writer.write_shard(0, data)
    writer.finalize()
    return tmp_path / "reversed.zarr"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"target": float("nan")},
            r"1 row\(s\) have a missing, non-numeric or infinite 'beta': row 3 \(nan\)",
        ),
        ({"target": float("inf")}, r"row 3 \(inf\)"),
        (
            {"split": "tran"},
            r"1 row\(s\) have a split other than \['train', 'validation', 'test'\]: row 3 \('tran'\)",
        ),
        ({"gene_index": float("nan")}, r"1 row\(s\) have a gene_index that is not a whole number >= 0: row 3 \(nan\)"),
        ({"gene_index": 2.5}, r"gene_index that is not a whole number >= 0: row 3 \(2.5\)"),
        ({"gene_index": -1}, r"gene_index that is not a whole number >= 0: row 3 \(-1"),
        ({"gene_index": 10_000}, r"gene '\w+' is given 2 gene_index values \(\d+, 10000\); each gene has one"),
    ],
)
def test_bad_labels_are_refused_naming_the_rows(demo, tmp_path, change, message):
    out, _ = demo
    table = pd.read_parquet(out / "recipe" / "cdt" / "labels.parquet")
    for column, value in change.items():
        column = "beta" if column == "target" else column
        table[column] = table[column].astype(type(value)) if isinstance(value, float) else table[column]
        table.loc[3, column] = value
    table.to_parquet(tmp_path / "labels.parquet")
    with pytest.raises(InputError, match=message):
        _load(_config(demo, tmp_path), labels=str(tmp_path / "labels.parquet"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[train]\nepochs = "six"', r"\[train\] epochs = 'six' is not an integer; the default is 50"),
        ("[train]\nbatch_size = 0", r"\[train\] batch_size = 0 is out of range; expected batch_size >=1"),
        ("[train]\nlr = -0.1", r"\[train\] lr = -0.1 is out of range; expected lr >0"),
        ('[data]\nstandardize_dna = "no"', r"\[data\] standardize_dna = 'no' is not true or false"),
        ("[model]\ndropout = 1.5", r"\[model\] dropout = 1.5 is out of range; expected dropout \[0,1\)"),
        ('[model]\npreset = "huge"', r"\[model\] preset = 'huge' is not one of \['paper', 'small', 'tiny'\]"),
        ('[train]\nprecision = "fp8"', r"\[train\] precision = 'fp8' is not one of \['fp32', 'bf16'\]"),
        ("[train]\nepoch = 3", r"unknown key\(s\) \['epoch'\] in \[train\]; known keys: .*'epochs'"),
        ('task = "gpt"', r"task 'gpt' is not one of cdt, dna_mlp, isoformer"),
        (
            "[data]\nlabels = 'a'",
            r"\[data\] needs \['dna_cache', 'rna_cache', 'protein_cache'\] for task 'cdt'",
        ),
    ],
)
def test_config_values_are_checked_when_read(tmp_path, text, message):
    paths = {} if "needs" in message else {"labels": "a", "dna_cache": "b", "rna_cache": "c", "protein_cache": "d"}
    top, _, rest = text.partition("[")
    sections = ("[" + rest) if rest else ""
    data = "".join(f'{k} = "{v}"\n' for k, v in paths.items())
    if sections.startswith("[data]"):
        sections = sections.replace("[data]\n", "[data]\n" + data, 1)
    elif data:
        sections = "[data]\n" + data + sections
    (tmp_path / "c.toml").write_text(f"{top}\n{sections}\n")
    with pytest.raises(InputError, match=message):
        load_config(tmp_path / "c.toml")


def test_set_overrides_are_checked_like_the_file(demo, tmp_path, capsys):
    config = _config(demo, tmp_path)
    assert main(["train", "--config", str(config), "--set", "train.epochs=abc"]) == 2
    assert "[train] epochs = 'abc' is not an integer" in capsys.readouterr().err
    assert main(["train", "--config", str(config), "--set", "epochs=3"]) == 2
    assert "expected SECTION.KEY=VALUE" in capsys.readouterr().err
    assert main(["train", "--example-config"]) == 0
    example = capsys.readouterr().out
    assert (
        'task = "cdt"' in example
        and "[train]\nepochs = 50\nbatch_size = 8\nlr = 0.0001\nweight_decay = 1e-05" in example
    )
    assert 'batching = "pairs"' in example and 'precision = "fp32"' in example
    assert main(["train", "--example-config", "--task", "dna_mlp"]) == 0
    assert "[model]\nhidden = 256\ndropout = 0.3" in capsys.readouterr().out


def test_written_configs_read_back_equal(demo, tmp_path):
    out, caches = demo
    config = demo_config(out, caches)
    (tmp_path / "demo.toml").write_text(to_toml(config))
    assert load_config(tmp_path / "demo.toml") == config
    for name in TASKS:
        text = to_toml(default_config(name))
        assert text.count("[") >= 4 and f'task = "{name}"' in text


def test_early_stopping_follows_the_authors_rule():
    state = {"best": -np.inf, "best_epoch": -1, "reference": None, "stale": 0}
    scores = [0.50, 0.5005, 0.5008, 0.502, 0.5025, 0.5029, 0.4]
    seen = []
    for epoch, score in enumerate(scores, start=1):
        improved = EarlyStopping.update(state, score, epoch, min_delta=0.001)
        seen.append((improved, state["reference"], state["stale"]))
    # the reference moves only on a gain of >= 0.001 over it (0.502 over 0.500); the best on any strict gain
    assert [s[1] for s in seen] == [0.50, 0.50, 0.50, 0.502, 0.502, 0.502, 0.502]
    assert [s[2] for s in seen] == [0, 1, 2, 0, 1, 2, 3]
    assert [s[0] for s in seen] == [True, True, True, True, True, True, False]
    assert state["best"] == 0.5029 and state["best_epoch"] == 6


def test_training_resumes_after_a_kill_and_checkpoints_rebuild_the_model(demo, tmp_path, capsys):
    config = _config(demo, tmp_path, epochs=5, baselines=False)
    run_dir = tmp_path / "train"
    command = [
        sys.executable,
        "-m",
        "dogmacache.cli",
        "train",
        "--config",
        str(config),
        "--no-progress",
        "--set",
        "output.resume=true",
    ]
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while time.time() < deadline and not _epochs_logged(run_dir) >= 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = _epochs_logged(run_dir)
    assert 2 <= done < 5, (done, (tmp_path / "first.log").read_text()[-2000:])
    resumed = subprocess.run(command, capture_output=True, text=True, check=True)
    assert f"cdt: resuming from {run_dir / 'cdt_last.pt'} after epoch" in resumed.stdout
    killed_metrics = json.loads((run_dir / "metrics.json").read_text())

    # a rerun into the finished directory with another seed or lr is refused, naming the first differing key (the
    # same command in this process: no kill is involved from here on)
    capsys.readouterr()
    assert main([*command[3:], "--set", "train.seed=7", "--set", "train.lr=0.05"]) == 2
    changed = capsys.readouterr().err
    assert f"{run_dir / 'cdt_last.pt'} was trained with train.lr = 0.003 but this run has 0.05" in changed
    assert "output.resume=false" in changed and len(changed.strip().splitlines()) == 1

    shutil.move(run_dir, tmp_path / "killed")
    assert main(command[3:]) == 0  # uninterrupted, same seed
    fresh_metrics = json.loads((run_dir / "metrics.json").read_text())
    for split in ("validation", "test"):
        for key in ("pearson", "mse"):
            assert killed_metrics["models"]["cdt"][split][key] == pytest.approx(
                fresh_metrics["models"]["cdt"][split][key], abs=1e-6
            )

    model = load_model(run_dir / "cdt_best.pt")  # the file alone rebuilds the model
    checkpoint = torch.load(run_dir / "cdt_best.pt", weights_only=False)
    assert checkpoint["task"] == "cdt" and checkpoint["model_class"] == "CentralDogmaTransformer"
    assert checkpoint["config"]["train"]["epochs"] == 5 and checkpoint["fingerprints"]["dna"]["ids_digest"]
    assert checkpoint["versions"]["torch"] == torch.__version__ and checkpoint["extras"]["dna_scale"] is not None
    assert sum(p.numel() for p in model.parameters()) > 50_000


def test_resume_refuses_changed_cache_contents(demo, tmp_path):
    from dogmacache.train import checkpoint

    config = load_config(_config(demo, tmp_path))
    saved = {"config": config.to_dict(), "fingerprints": {"dna": {"url": "a", "shards_digest": "sha256:1"}}}
    now = {"dna": {"url": "b", "shards_digest": "sha256:2"}}
    with pytest.raises(InputError, match=r"trained on a dna cache with shards_digest 'sha256:1' but b has 'sha256:2'"):
        checkpoint.check_resume(saved, tmp_path / "cdt_last.pt", config.to_dict(), now)
    checkpoint.check_resume(
        saved,
        tmp_path / "cdt_last.pt",
        config.to_dict(),
        {"dna": {**now["dna"], "shards_digest": "sha256:1"}},
    )
    longer = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=40, num_workers=1))
    checkpoint.check_resume(saved, tmp_path / "x.pt", longer.to_dict(), saved["fingerprints"])  # may continue longer


def test_a_second_task_runs_on_the_same_loop(demo, tmp_path, capsys):
    config_path = _config(demo, tmp_path, epochs=3, task="dna_mlp")
    command = ["train", "--config", str(config_path), "--no-progress", "--set", "output.resume=true"]
    assert main(command) == 0
    metrics = json.loads((tmp_path / "train" / "metrics.json").read_text())
    assert metrics["task"] == "dna_mlp" and set(metrics["models"]) == {"dna_mlp", "per_gene_mean"}
    assert metrics["models"]["dna_mlp"]["test"]["n"] == metrics["counts"]["test"] > 100
    model = load_model(tmp_path / "train" / "dna_mlp_best.pt")
    assert type(model).__name__ == "DnaOnlyMLP" and not model.training
    assert main([*command, "--set", "train.epochs=4"]) == 0  # resumes for one more epoch
    assert "dna_mlp: resuming from" in capsys.readouterr().out
    assert len((tmp_path / "train" / "log.csv").read_text().splitlines()) == 1 + 4  # header and four epochs of dna_mlp


def _epochs_logged(run_dir: Path) -> int:
    log = run_dir / "log.csv"
    return max(0, len(log.read_text().splitlines()) - 1) if log.exists() else 0


def test_task_tables_are_read_in_one_place_with_one_line_errors(tmp_path):
    from dogmacache.train.task import read_table

    pd.DataFrame({"id": ["a"], "split": ["train"]}).to_csv(tmp_path / "t.tsv", sep="\t", index=False)
    assert read_table(tmp_path / "t.tsv", ("id", "split")).to_dict("list") == {"id": ["a"], "split": ["train"]}
    with pytest.raises(InputError, match=r"labels table '.*none.parquet' does not exist; run `dogmacache recipe gtex`"):
        read_table(tmp_path / "none.parquet", recipe="gtex")
    with pytest.raises(InputError, match=r"t.tsv has no column 'beta'; this labels table needs \['id', 'beta'\]"):
        read_table(tmp_path / "t.tsv", ("id", "beta"))


def test_a_fresh_start_that_empties_the_log_keeps_its_header(tmp_path):
    """A model re-run from scratch drops its own rows; when they were the only rows, the next row still gets the
    header."""
    import csv

    from dogmacache.train.loop import _append_log, _drop_log_rows

    log = tmp_path / "log.csv"
    _append_log(log, {"model": "a", "epoch": 1, "loss": 0.5})
    _drop_log_rows(log, "a")
    _append_log(log, {"model": "a", "epoch": 1, "loss": 0.4})
    _append_log(log, {"model": "b", "epoch": 1, "loss": 0.3})
    _drop_log_rows(log, "a")
    with open(log, newline="") as fh:
        assert list(csv.DictReader(fh)) == [{"model": "b", "epoch": "1", "loss": "0.3"}]


def test_feature_scale_over_blocks_equals_numpy_over_all_rows():
    from dogmacache.train.task import feature_scale

    rows = np.random.default_rng(0).normal(3.0, 2.0, size=(7, 5, 4)).astype(np.float32)
    rows[:, :, 3] = 1.5  # a constant feature: std floored at 1e-6
    mean, std = feature_scale(rows[a : a + 3] for a in range(0, 7, 3))  # blocks of 3, 3 and 1 windows
    flat = rows.reshape(-1, 4).astype(np.float64)
    np.testing.assert_allclose(mean, flat.mean(0), rtol=1e-6)
    np.testing.assert_allclose(std[:3], flat.std(0)[:3], rtol=1e-5)
    assert std[3] == np.float32(1e-6) and mean.dtype == std.dtype == np.float32
    with pytest.raises(ValueError, match="at least one row"):
        feature_scale([])


def test_a_kill_between_an_epochs_two_checkpoints_resumes_to_the_uninterrupted_run(demo, tmp_path, monkeypatch):
    """last.pt is written before best.pt: a kill between them leaves last.pt recording its own epoch as the best,
    and the resume writes best.pt from it. A best.pt of another epoch than last.pt records as the best is refused,
    never evaluated as the best epoch."""
    from dogmacache.errors import ModelError
    from dogmacache.train import checkpoint, loop

    config = _config(demo, tmp_path, epochs=2, baselines=False)
    run_dir = tmp_path / "train"
    real, calls = checkpoint.save, []

    def killed_at_the_first_best(path, payload):
        calls.append(Path(path).name)
        if Path(path).name == "cdt_best.pt":
            raise KeyboardInterrupt
        return real(path, payload)

    monkeypatch.setattr(checkpoint, "save", killed_at_the_first_best)
    with pytest.raises(KeyboardInterrupt):
        loop.fit(*_fit_args(config, run_dir))
    assert calls == ["cdt_last.pt", "cdt_best.pt"] and not (run_dir / "cdt_best.pt").exists()
    monkeypatch.setattr(checkpoint, "save", real)
    resumed = loop.fit(*_fit_args(config, run_dir))
    assert resumed["epochs_run"] == 2 and [row["epoch"] for row in resumed["history"]] == [1, 2]
    uninterrupted = loop.fit(*_fit_args(config, tmp_path / "fresh"))
    assert resumed["best_epoch"] == uninterrupted["best_epoch"]
    assert resumed["test"]["pearson"] == pytest.approx(uninterrupted["test"]["pearson"], abs=1e-6)

    last = torch.load(run_dir / "cdt_last.pt", weights_only=False)  # last.pt's best: epoch 1; best.pt: epoch 2
    torch.save({**last, "state": {**last["state"], "best_epoch": 1}}, run_dir / "cdt_last.pt")
    with pytest.raises(ModelError, match=r"cdt_best.pt holds epoch 2, but .*cdt_last.pt records epoch 1 as the best"):
        loop.fit(*_fit_args(config, run_dir))


def _fit_args(config_path, out_dir: Path) -> tuple:
    """(task, model, data, name, out_dir, meta) for `loop.fit` on a config file, as `train.run` builds them."""
    config = load_config(config_path, {"output.resume": True})
    task = get_task(config.task)(config)
    data = task.load()
    torch.manual_seed(config.train.seed)
    model, _, _ = task.build_model(data, {})
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"config": task.config.to_dict(), "fingerprints": data.fingerprints, "splits": data.split_digests()}
    return task, model, data, "cdt", out_dir, meta


def test_a_nan_validation_score_never_becomes_the_early_stopping_reference():
    state = {"best": -np.inf, "best_epoch": -1, "reference": None, "stale": 0}
    for epoch, score in enumerate([float("nan"), 0.1, 0.2, 0.3], start=1):
        EarlyStopping.update(state, score, epoch, min_delta=0.0)
    assert state["reference"] == 0.3 and state["stale"] == 0 and state["best_epoch"] == 4
