"""What a training run leaves in its folder: never an earlier run's result standing as its own (a stale best
checkpoint, metrics.json), a log readable whatever tasks wrote into the folder, and a control that cannot run
refused before anything trains."""

from __future__ import annotations

import csv
import json

import pytest
from dogmacache.errors import InputError, ModelError
from dogmacache.train.registry import config_from_dict
from dogmacache.train.run import run_training
from test_controls import write_pairs


def quick(tmp_path, **train):
    raw = write_pairs(tmp_path, signal=True, n_enh=40)
    raw["train"].update({"epochs": 2, "controls": [], **train})
    raw["train"]["baselines"] = False
    return raw


def test_a_diverged_run_never_reports_the_best_checkpoint_of_the_run_it_replaced(tmp_path):
    first = run_training(config_from_dict(quick(tmp_path)), progress=False)
    assert first["models"]["dna_mlp"]["best_epoch"] >= 1
    raw = quick(tmp_path, lr=1e30, seed=5)
    raw["output"]["overwrite"] = True
    with pytest.raises(ModelError, match=r"dna_mlp: none of its 2 epochs gave a finite validation pearson"):
        run_training(config_from_dict(raw), progress=False)
    out = tmp_path / "out"
    assert not (out / "metrics.json").exists()  # the replaced run's result is gone, not left as this one's
    assert not (out / "dna_mlp_best.pt").exists()
    assert not (out / "learning_curves.png").exists() and not (out / "test_scatter.png").exists()  # its figures too
    # resumed without overwrite into a folder where a fresh start of the model found an old best: gone as well
    raw = quick(tmp_path)
    raw["output"]["overwrite"] = True
    run_training(config_from_dict(raw), progress=False)
    (out / "dna_mlp_last.pt").unlink()
    raw = quick(tmp_path, lr=1e30)
    raw["output"]["resume"] = True
    with pytest.raises(ModelError, match="diverged"):
        run_training(config_from_dict(raw), progress=False)


def test_a_batch_larger_than_the_training_split_is_refused_not_reported_untrained(tmp_path):
    # 24 training enhancers x 3 genes = 72 pairs; the pairs batching drops the last partial batch, so a batch of 100
    # makes no step: the untrained model's scores were reported as a result
    with pytest.raises(ModelError, match=r"dna_mlp: epoch 1 took no training step: its 72 training examples gave no "):
        run_training(config_from_dict(quick(tmp_path, batch_size=100)), progress=False)
    assert not (tmp_path / "out" / "metrics.json").exists()
    assert run_training(config_from_dict(quick(tmp_path, batch_size=72)), progress=False)["models"]["dna_mlp"]


def test_the_log_of_a_folder_two_tasks_trained_in_keeps_each_column_under_its_name(tmp_path):
    run_training(config_from_dict(quick(tmp_path)), progress=False)
    log = tmp_path / "out" / "log.csv"
    rows = list(csv.DictReader(log.open()))
    rows[0]["val_other_metric"] = "0.5"  # a row of a task whose metric is another: the header grows, nothing moves
    from dogmacache.train.loop import _append_log

    extra = {"model": "other", "epoch": 1, "train_loss": 0.25, "val_other_metric": 0.5, "lr": 0.1}
    _append_log(log, extra)
    again = list(csv.DictReader(log.open()))
    assert [r["model"] for r in again] == ["dna_mlp", "dna_mlp", "other"]
    assert again[0]["val_pearson"] == rows[0]["val_pearson"] and again[0]["val_other_metric"] == ""
    assert again[2]["val_other_metric"] == "0.5" and again[2]["val_pearson"] == "" and again[2]["lr"] == "0.1"
    # a run of the first task reads only its own rows for its figure
    raw = quick(tmp_path)
    raw["output"]["resume"] = True
    run_training(config_from_dict(raw), progress=False)
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["task"] == "dna_mlp"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            ["dna_cache=nowhere/kmer.zarr"],
            r"control_caches dna_cache=nowhere/kmer\.zarr \(the control control_dna_kmer\)",
        ),
        (["dna_cache"], r"entry 'dna_cache' is not KEY=PATH"),
        (["dna_cache=a/k.zarr", "dna_cache=b/k.zarr"], r"both make the control 'control_dna_k'"),
    ],
)
def test_a_control_that_cannot_run_is_refused_before_anything_trains(tmp_path, entry, message):
    run_training(config_from_dict(quick(tmp_path)), progress=False)
    before = (tmp_path / "out" / "dna_mlp_best.pt").stat().st_mtime_ns
    raw = quick(tmp_path, control_caches=entry)
    raw["output"]["overwrite"] = True  # a run that would start over: refused before it removes or trains anything
    with pytest.raises(InputError, match=message):
        run_training(config_from_dict(raw), progress=False)
    assert (tmp_path / "out" / "dna_mlp_best.pt").stat().st_mtime_ns == before  # nothing trained
    assert (tmp_path / "out" / "metrics.json").exists()  # nor was the finished run's result let go


def test_a_device_torch_does_not_know_is_one_line(tmp_path):
    with pytest.raises(InputError, match=r"device 'gpu' is not one torch knows; expected auto, cpu, cuda"):
        run_training(config_from_dict(quick(tmp_path, device="gpu")), progress=False)


def test_a_refused_resume_keeps_the_finished_runs_result(tmp_path):
    raw = quick(tmp_path)
    raw["output"]["resume"] = True
    run_training(config_from_dict(raw), progress=False)
    changed = quick(tmp_path, lr=0.5)
    changed["output"]["resume"] = True
    with pytest.raises(InputError, match=r"dna_mlp_last\.pt was trained with train\.lr = 0\.01 but this run has 0\.5"):
        run_training(config_from_dict(changed), progress=False)
    assert (tmp_path / "out" / "metrics.json").exists()


def test_a_resume_onto_a_rewritten_labels_table_is_refused(tmp_path):
    """A labels file rewritten in place (a recipe re-run that drew other splits, or other values) is not the one
    the checkpoint trained on: resuming would score the model on rows it trained on, so it is refused."""
    import pandas as pd

    raw = quick(tmp_path)  # (writes the labels)
    raw["output"]["resume"] = True
    run_training(config_from_dict(raw), progress=False)
    path = tmp_path / "labels.parquet"
    original = pd.read_parquet(path)
    swapped = original.assign(split=original["split"].map({"train": "test", "test": "train"}).fillna("validation"))
    swapped.to_parquet(path)
    raw["train"]["epochs"] = 3
    with pytest.raises(InputError, match=r"dna_mlp_last\.pt was trained on other test examples than this run's"):
        run_training(config_from_dict(raw), progress=False)
    assert (tmp_path / "out" / "metrics.json").exists()  # refused before the finished run's result went
    original.assign(beta=original["beta"] + 1.0).to_parquet(path)  # the same splits, other labels
    with pytest.raises(InputError, match=r"trained on another \[data\] labels file than this run's .*sha256 differs"):
        run_training(config_from_dict(raw), progress=False)
    original.to_parquet(path)  # the same content again: resumes for its third epoch
    assert run_training(config_from_dict(raw), progress=False)["models"]["dna_mlp"]["epochs_run"] == 3


def test_a_control_whose_cache_changed_is_refused_before_the_finished_result_goes(tmp_path):
    import numpy as np
    from conftest import write_cache

    ids = [f"e{i}" for i in range(40)]
    write_cache(tmp_path / "alt.zarr", np.ones((40, 4, 6), np.float32), ids=ids, shard_items=40)
    raw = quick(tmp_path, control_caches=[f"dna_cache={tmp_path / 'alt.zarr'}"])
    raw["output"]["resume"] = True
    run_training(config_from_dict(raw), progress=False)
    assert (tmp_path / "out" / "control_dna_alt_last.pt").is_file()
    import shutil

    shutil.rmtree(tmp_path / "alt.zarr")  # re-embedded at the same path: other numbers
    write_cache(tmp_path / "alt.zarr", np.zeros((40, 4, 6), np.float32), ids=ids, shard_items=40)
    with pytest.raises(InputError, match=r"control_dna_alt_last\.pt was trained on a dna cache with shards_digest"):
        run_training(config_from_dict(raw), progress=False)
    assert (tmp_path / "out" / "metrics.json").exists()


def test_a_stopped_run_says_where_its_checkpoints_are_and_how_it_continues(tmp_path):
    import argparse

    from dogmacache.train.cli import _interrupted
    from dogmacache.train.config import to_toml

    raw = quick(tmp_path)
    (tmp_path / "run.toml").write_text(to_toml(config_from_dict(raw)))
    said = _interrupted(argparse.Namespace(config=str(tmp_path / "run.toml"), set=[], seeds="0,1"))
    assert f"kept in {tmp_path / 'out'}/seed<k> for each seed begun" in said
    assert "--set output.resume=true to continue" in said and "starts over" in said  # the config has resume = false
    said = _interrupted(argparse.Namespace(config=str(tmp_path / "run.toml"), set=["output.resume=true"], seeds=None))
    assert said.endswith("re-run the same command to continue from it")


def test_a_correlation_of_a_constant_is_zero_even_where_copies_differ_by_rounding():
    import numpy as np
    from dogmacache.train.metrics import regression_metrics

    observed = np.array([0.1, 0.5, 0.2, 0.9, 0.4])
    # one value per tissue, copies some float32 roundings apart (14 units in the last place): no association to score
    ulp = np.spacing(np.float32(0.0355))
    rounded = np.float32(0.0355) + ulp * np.float32([0, 0, 14, 3, 0])
    assert regression_metrics(rounded, observed)["spearman"] == 0.0 == regression_metrics(rounded, observed)["pearson"]
    assert regression_metrics(np.zeros(5), observed)["pearson"] == 0.0
    small = np.float32([1e-4, 5e-4, 2e-4, 9e-4, 4e-4])  # small but varying: scored as any other
    assert regression_metrics(small, observed)["spearman"] == pytest.approx(1.0)
    offset = 5.0 + 5e-6 * observed  # float64 values on an offset (a ridge probe's): their spread is no rounding
    assert regression_metrics(offset, observed)["pearson"] == pytest.approx(1.0)
    assert regression_metrics(observed, np.full(5, 2.0))["pearson"] == 0.0  # constant labels alike


def test_a_resume_restores_the_log_rows_its_checkpoint_has(tmp_path):
    """A kill after an epoch's checkpoint but before its log row (or a log lost) leaves the epoch out of log.csv;
    the resume writes the model's rows from the checkpoint's history, so the log and the curves have every epoch."""
    raw = quick(tmp_path)
    raw["output"]["resume"] = True
    run_training(config_from_dict(raw), progress=False)
    log = tmp_path / "out" / "log.csv"
    lines = log.read_text().splitlines()
    assert len(lines) == 3
    log.write_text("\n".join(lines[:2]) + "\n")  # epoch 2's row lost
    raw["train"]["epochs"] = 3
    run_training(config_from_dict(raw), progress=False)
    rows = list(csv.DictReader(log.open()))
    assert [(r["model"], r["epoch"]) for r in rows] == [("dna_mlp", "1"), ("dna_mlp", "2"), ("dna_mlp", "3")]
    assert float(rows[1]["val_pearson"]) == pytest.approx(float(lines[2].split(",")[3]))


def test_a_run_of_another_task_into_a_finished_runs_folder_is_refused(tmp_path):
    from dogmacache.train.registry import config_from_dict as build

    run_training(config_from_dict(quick(tmp_path)), progress=False)
    metrics = tmp_path / "out" / "metrics.json"
    finished = json.loads(metrics.read_text())
    metrics.write_text(json.dumps({**finished, "task": "biodta"}))  # as if a Bio-DTA run had finished there
    raw = quick(tmp_path)
    raw["output"]["resume"] = True
    with pytest.raises(InputError, match=r"holds a biodta run \(metrics\.json\) and this run is dna_mlp: their "):
        run_training(config_from_dict(raw), progress=False)
    assert json.loads(metrics.read_text())["task"] == "biodta"  # refused before anything went
    (tmp_path / "out" / "per_tissue_r2.png").write_bytes(b"png")  # one of that task's own figures (CDBridge's)
    metrics.write_text(json.dumps({**finished, "task": "cdbridge"}))
    raw["output"].update(resume=False, overwrite=True)  # a replacement, asked for
    assert run_training(config_from_dict(raw), progress=False)["task"] == "dna_mlp"
    assert not (tmp_path / "out" / "per_tissue_r2.png").exists()  # the replaced run's figures went with it
    # without an [output] dir each task has its own default folder
    data = {"data": {"labels": "l.parquet", "dna_cache": "d.zarr"}}
    assert build({"task": "dna_mlp", **data}).output.dir == "runs/dna_mlp"
    assert build({"task": "dna_mlp", **data, "output": {"dir": "mine"}}).output.dir == "mine"
    from dogmacache.train.config import RunConfig
    from dogmacache.train.registry import default_config

    assert RunConfig(task="isoformer").output.dir == "runs/isoformer"  # built directly too, not only when parsed
    assert default_config("biodta").output.dir == "runs/biodta"


@pytest.mark.parametrize("text", ["- a\n- b\n", "just words\n"])
def test_a_config_that_is_no_mapping_is_one_line(tmp_path, text):
    from dogmacache.train.registry import load_config

    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=r"run\.yaml reads as a (list|str), not a table of sections and keys"):
        load_config(path)


def test_labels_with_an_item_in_two_splits_or_an_example_twice_are_refused(tmp_path):
    """The recipes keep each enhancer in one split and each pair once; a table made by hand may not: the model
    would be scored on pairs it trained on, or count some twice (probe already refused such tables)."""
    import pandas as pd

    raw = quick(tmp_path)
    path = tmp_path / "labels.parquet"
    labels = pd.read_parquet(path)
    leaking = labels.copy()
    leaking.loc[(leaking["enhancer"] == "e0") & (leaking["gene"] == "G1"), "split"] = "test"
    leaking.to_parquet(path)
    with pytest.raises(
        InputError, match=r"1 value\(s\) of 'enhancer' sit in more than one split, e\.g\. 'e0' in train and test"
    ):
        run_training(config_from_dict(raw), progress=False)
    pd.concat([labels, labels.iloc[:1]]).to_parquet(path)
    with pytest.raises(
        InputError, match=r"1 example\(s\) appear more than once, e\.g\. enhancer 'e0', gene 'G0' \(2 rows\)"
    ):
        run_training(config_from_dict(raw), progress=False)


def test_every_model_of_a_per_group_figure_has_its_own_style():
    """Twelve models (CDBridge's count): no two share a bar style, and every control is grey and hatched."""
    from dogmacache.train.plots import model_styles

    names = ["cdbridge", "per_tissue_mean", *(f"no_{k}" for k in range(7))]
    names += ["control_permuted_labels", "control_shuffled_inputs", "control_dna_kmer"]
    styles = model_styles(names)
    keys = [(str(s["color"]), s.get("hatch")) for s in styles.values()]
    assert len(set(keys)) == len(names)
    assert all(
        styles[n].get("hatch") and "grey" in styles[n]["color"] or styles[n]["color"] in ("silver", "gainsboro")
        for n in names
        if n.startswith("control_")
    )
    assert not any(styles[n].get("hatch") for n in names if not n.startswith("control_"))


def test_a_model_keeps_its_colour_in_every_figure_of_a_run(tmp_path, monkeypatch):
    """kept_tokens.png leaves out the per-tissue mean: with the run's models given, every other model keeps the
    colour it has in the figures that draw the per-tissue mean."""
    from dogmacache.train import plots

    run = ["cdbridge", "per_tissue_mean", "no_tissue", "tissue_only", "control_permuted_labels"]
    drawn = {}
    real_bar = plots.plt.Axes.bar

    def bar(self, x, height, width, label=None, **style):
        drawn[label] = style.get("color")
        return real_bar(self, x, height, width, label=label, **style)

    monkeypatch.setattr(plots.plt.Axes, "bar", bar)
    subset = {name: {"coding": 0.5} for name in run if name != "per_tissue_mean"}
    plots.per_group_bars(subset, "kept", tmp_path / "kept.png", "t", every_model=run)
    full = plots.model_styles(run)
    assert drawn == {name: full[name]["color"] for name in subset}
