"""The controls every task gets from the loop (train/controls.py): they run in the same call, and they can
fail: on data whose labels follow the DNA, the model beats the permutation null and the shuffled inputs by a
wide margin; on data whose labels do not, nothing does."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import write_cache
from dogmacache.cache import open_cache
from dogmacache.devices import cpu_plan
from dogmacache.errors import InputError
from dogmacache.train.controls import cache_controls, permuted_labels, shuffled_inputs
from dogmacache.train.registry import config_from_dict
from dogmacache.train.run import run_training
from dogmacache.train.task import TaskData


def write_pairs(tmp_path, signal: bool, n_enh: int = 120, genes: int = 3) -> dict:
    """DNA windows (n_enh, 4, 6) and pairs whose beta is a fixed linear read-out of the window's mean (signal) or
    noise drawn apart from it."""
    rng = np.random.default_rng(0)
    dna = rng.normal(size=(n_enh, 4, 6)).astype(np.float32)
    ids = [f"e{i}" for i in range(n_enh)]
    write_cache(tmp_path / "dna.zarr", dna, ids=ids, shard_items=40)
    weights = rng.normal(size=(genes, 6))
    rows = []
    for i in range(n_enh):
        split = "train" if i < 0.6 * n_enh else "validation" if i < 0.8 * n_enh else "test"
        for g in range(genes):
            beta = float(dna[i].mean(0) @ weights[g]) if signal else float(rng.normal())
            rows.append({"enhancer": ids[i], "gene": f"G{g}", "gene_index": g, "split": split, "beta": beta})
    pd.DataFrame(rows).to_parquet(tmp_path / "labels.parquet")
    return {
        "task": "dna_mlp",
        "data": {"labels": str(tmp_path / "labels.parquet"), "dna_cache": str(tmp_path / "dna.zarr")},
        "model": {"hidden": 32, "dropout": 0.0},
        "train": {
            "epochs": 12,
            "batch_size": 16,
            "lr": 1e-2,
            "num_workers": 0,
            "device": "cpu",
            "early_stop_patience": 12,
            "controls": ["permuted_labels", "shuffled_inputs"],
        },
        "output": {"dir": str(tmp_path / "out"), "resume": False},
    }


def test_the_controls_run_beside_the_model_and_fall_to_zero_where_the_model_does_not(tmp_path):
    summary = run_training(config_from_dict(write_pairs(tmp_path, signal=True)), progress=False)
    test = {name: m["test"]["pearson"] for name, m in summary["models"].items()}
    assert set(test) == {"dna_mlp", "per_gene_mean", "control_permuted_labels", "control_shuffled_inputs"}
    assert test["dna_mlp"] > 0.7
    assert abs(test["control_permuted_labels"]) < 0.35 and abs(test["control_shuffled_inputs"]) < 0.35
    assert test["dna_mlp"] - max(test["control_permuted_labels"], test["control_shuffled_inputs"]) > 0.4
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(written["models"]) == set(test)
    # the torch threads used (unset in the config: from the usable cores) go into metrics.json and the checkpoints
    threads = cpu_plan("cpu", workers=0, ceiling=torch.get_num_threads()).threads
    assert written["cpu"] == {"num_workers": 0, "torch_threads": threads}
    saved = torch.load(tmp_path / "out" / "dna_mlp_last.pt", weights_only=False)
    assert saved["config"]["train"]["threads"] == threads


def test_without_signal_the_model_scores_no_better_than_its_controls(tmp_path):
    summary = run_training(config_from_dict(write_pairs(tmp_path, signal=False)), progress=False)
    assert abs(summary["models"]["dna_mlp"]["test"]["pearson"]) < 0.35


def test_permuted_labels_keep_the_values_and_leave_the_test_split():
    train = pd.DataFrame({"target": np.arange(10.0), "dna_row": np.arange(10)})
    test = pd.DataFrame({"target": np.arange(3.0), "dna_row": np.arange(3)})
    data = TaskData(splits={"train": train, "validation": test, "test": test}, fingerprints={})
    data.splits["validation"] = test.copy()
    permuted = permuted_labels(data, seed=0)
    assert sorted(permuted.splits["train"]["target"]) == list(np.arange(10.0))
    assert not np.array_equal(permuted.splits["train"]["target"], train["target"])
    assert sorted(permuted.splits["validation"]["target"]) == [0.0, 1.0, 2.0]  # it chooses the checkpoint
    assert permuted.splits["test"] is test and data.splits["train"] is train


def test_shuffled_inputs_remap_items_within_each_split_keeping_the_grouping():
    # six examples over three items; rows 7 and 9 of another modality are absent for two examples
    train = pd.DataFrame(
        {
            "dna_row": [0, 0, 1, 1, 2, 2],
            "rna_row": [5, 5, 0, 0, 6, 6],
            "rna_present": [True, True, False, False, True, True],
            "target": np.arange(6.0),
        }
    )
    data = TaskData(splits={"train": train, "validation": train.copy(), "test": train.copy()}, fingerprints={})
    shuffled = shuffled_inputs(data, ("dna_row", "rna_row"), seed=3).splits["train"]
    assert sorted(set(shuffled["dna_row"])) == [0, 1, 2]
    assert all(shuffled["dna_row"].iloc[a] == shuffled["dna_row"].iloc[a + 1] for a in (0, 2, 4))  # items stay whole
    assert list(shuffled.loc[~shuffled["rna_present"], "rna_row"]) == [0, 0]  # absent rows untouched
    assert set(shuffled.loc[shuffled["rna_present"], "rna_row"]) == {5, 6}
    changed = [
        not np.array_equal(shuffled_inputs(data, ("dna_row",), seed=s).splits["train"]["dna_row"], train["dna_row"])
        for s in range(5)
    ]
    assert any(changed)
    with pytest.raises(InputError, match="declares no input columns"):
        shuffled_inputs(data, (), seed=0)
    with pytest.raises(InputError, match=r"input column 'protein_row' is in none of its split tables"):
        shuffled_inputs(data, ("dna_row", "protein_row"), seed=0)  # a renamed column: nothing would move


def test_an_unknown_control_is_refused_when_the_config_is_read(tmp_path):
    raw = write_pairs(tmp_path, signal=True)
    raw["train"]["controls"] = ["permuted_labels", "label_noise"]
    with pytest.raises(InputError, match="controls names 'label_noise'"):
        config_from_dict(raw)


def test_the_null_moves_every_target_column_of_a_row_together():
    train = pd.DataFrame({"target": np.arange(8.0), "protein_row": np.arange(8) * 10, "dna_row": np.arange(8)})
    data = TaskData(splits={"train": train, "validation": train, "test": train}, fingerprints={})
    permuted = permuted_labels(data, seed=1, columns=("target", "protein_row")).splits["train"]
    assert (permuted["protein_row"] == permuted["target"] * 10).all()  # a row's targets stay one row's
    assert (permuted["dna_row"] == train["dna_row"]).all() and not permuted["target"].equals(train["target"])


def test_null_draws_stand_beside_the_model_with_an_empirical_p_value(tmp_path, capsys):
    """[train] null_draws = K trains K permutations; metrics.json's null gives their spread and p = (1 + k) /
    (1 + K), k the draws reaching the model; the first draw is the run's plain null, the others their own draws."""
    config = write_pairs(tmp_path, signal=True)
    config["train"].update(null_draws=4, controls=["permuted_labels"], epochs=6, early_stop_patience=6)
    summary = run_training(config_from_dict(config), progress=False)
    names = ["control_permuted_labels", *(f"control_permuted_labels_{k}" for k in (2, 3, 4))]
    assert set(names) <= set(summary["models"])
    null = json.loads((tmp_path / "out" / "metrics.json").read_text())["null"]
    assert null["draws"] == 4 and null["models"] == names
    draws = np.array([summary["models"][n]["test"]["pearson"] for n in names])
    assert len(set(draws.round(6))) == 4  # four permutations, not one drawn four times
    model = summary["models"]["dna_mlp"]["test"]["pearson"]
    row = null["test"]["pearson"]
    assert row["model"] == pytest.approx(model) and row["null_max"] == pytest.approx(draws.max())
    assert row["null_mean"] == pytest.approx(draws.mean()) and row["null_sd"] == pytest.approx(draws.std(ddof=1))
    assert row["draws_reaching_the_model"] == int((draws >= model).sum()) == 0 and row["p"] == pytest.approx(1 / 5)
    printed = capsys.readouterr().out
    assert "permutation null: 4 draws" in printed and "0 of 4 reach it, p = 0.200" in printed
    seeds = [
        torch.load(tmp_path / "out" / f"{n}_best.pt", weights_only=False)["config"]["train"]["seed"] for n in names
    ]
    assert seeds[0] == 0 and len(set(seeds)) == 4  # the further draws train from seeds of their own


def test_a_leak_the_null_shares_is_flagged_against_the_no_input_baseline(tmp_path, capsys, monkeypatch):
    """An evaluation that reads the answer scores the model and every null draw alike: the p-value reads as
    the floor of its draws, so the null is also set beside the no-input baseline, which a null may not beat."""
    from dogmacache.train.tasks.cdt import dna_mlp

    config = write_pairs(tmp_path, signal=True)
    config["train"].update(null_draws=3, controls=["permuted_labels"], epochs=3)
    run = run_training(config_from_dict(config), progress=False)
    honest = run["null"]["test"]["pearson"]
    assert honest["baseline"] == "per_gene_mean" and not honest["null_above_baseline"]
    # each draw beside the per-gene mean of its own permuted labels (near 0), not of the real ones
    assert honest["baseline_fitted_on"] == "each draw's permuted labels"
    real = run["models"]["per_gene_mean"]["test"]["pearson"]
    assert abs(honest["baseline_value"]) < 0.3 and honest["baseline_value"] != pytest.approx(real)
    assert "WARNING" not in capsys.readouterr().out
    plain = dna_mlp.DnaMlpTask.predict_chunk
    monkeypatch.setattr(
        dna_mlp.DnaMlpTask, "predict_chunk", lambda self, m, c, t: 0.1 * plain(self, m, c, t) + c.examples["target"]
    )
    config["output"]["overwrite"] = True
    leaked = run_training(config_from_dict(config), progress=False)["null"]["test"]["pearson"]
    assert leaked["null_mean"] > 0.9 and leaked["null_above_baseline"]
    assert "WARNING: the null's draws score" in capsys.readouterr().out
    config["train"]["null_draws"] = 1  # the default: no spread to judge a draw by, but it reaches the model
    one = run_training(config_from_dict(config), progress=False)["null"]["test"]["pearson"]
    assert one["null_reaches_model"] and "needs two or more" in one["not_compared"]
    assert "WARNING: every draw of the null reaches dna_mlp's test pearson" in capsys.readouterr().out
    config["train"]["null_draws"] = 3
    config["train"]["baselines"] = False  # no baseline to set the draws beside: said, not skipped silently
    unset = run_training(config_from_dict(config), progress=False)["null"]["test"]["pearson"]
    assert "null_above_baseline" not in unset and "baselines = false" in unset["not_compared"]
    assert "(not set beside the no-input baseline per_gene_mean" in capsys.readouterr().out


def test_a_few_scattered_null_draws_above_the_baseline_are_no_leak_but_agreeing_ones_are():
    """Three draws of the demo's CDBridge fold 1 (held-out Spearman 0.231, 0.012, 0.230; the per-tissue mean 0)
    were flagged at two standard errors; at the t bound of 3 draws they are not. Draws that agree are."""
    from dogmacache.train.controls import null_names, null_summary

    def flagged(draws, base=0.0):
        results = {"m": {"test": {"s": 0.338}}, "base": {"test": {"s": base}}}
        results.update({n: {"test": {"s": v}} for n, v in zip(null_names(len(draws)), draws, strict=True)})
        return null_summary(results, "m", len(draws), ("s",), "base")["test"]["s"]["null_above_baseline"]

    assert not flagged([0.231, 0.012, 0.230])
    one = {"m": {"test": {"s": 0.9}}, "base": {"test": {"s": 0.0}}, "control_permuted_labels": {"test": {"s": 0.9}}}
    one["control_permuted_labels_2"] = {"test": {"s": float("nan")}}  # one draw left: said, not passed
    summary = null_summary(one, "m", 2, ("s",), "base")["test"]["s"]
    assert "null_above_baseline" not in summary and "needs two or more" in summary["not_compared"]
    assert flagged([0.231, 0.229, 0.230]) and not flagged([0.031, 0.029, 0.030])  # above 0.05 only where it is


def test_a_leak_is_flagged_where_the_baselines_of_the_draws_swing():
    """On labels with no signal a per-gene mean refitted on each draw's permuted labels swings (-0.43 to 0.42 on
    the synthetic pairs), which widens the paired t bound past draws a leak lifts to 1.0: every draw above every
    baseline flags them (a rank test, 1 in 20 for 3 draws without a leak); draws mixed among their baselines do not."""
    from dogmacache.train.controls import NULL_BASELINE, null_names, null_summary

    def row(draws, own):
        results = {"m": {"test": {"pearson": 0.999}}, "base": {"test": {"pearson": 0.08}}}
        for name, value, base in zip(null_names(len(draws)), draws, own, strict=True):
            results[name] = {"test": {"pearson": value}, NULL_BASELINE: {"pearson": base}}
        return null_summary(results, "m", len(draws), ("pearson",), "base")["test"]["pearson"]

    leaked = row([0.9998, 0.9998, 0.9999], [-0.429, -0.391, 0.423])
    assert leaked["null_above_baseline"] and leaked["flagged_by"].startswith("every draw above every draw's baseline")
    assert "p = 1/20" in leaked["flagged_by"] and leaked["null_reaches_model"]
    assert not row([0.1, -0.2, 0.45], [-0.4, 0.0, 0.2])["null_above_baseline"]  # one draw among the baselines
    assert not row([0.3, 0.35, 0.32], [0.2, 0.25, 0.28])["null_above_baseline"]  # above, but by less than the margin


def test_a_moderate_leak_is_flagged_against_the_baseline_of_each_draws_own_labels():
    """A per-gene mean fitted on the real labels scores 0.41 on the demo's CDT; on a null draw's permuted labels it
    scores about 0. Draws lifted to 0.38 by a leak sit below the former and far above the latter."""
    from dogmacache.train.controls import NULL_BASELINE, null_names, null_summary

    leaked = [0.31, 0.45, 0.38, 0.42, 0.33, 0.39]
    own = [-0.07, 0.007, 0.032, 0.103, 0.173, -0.02]  # the per-gene mean refitted on each draw's labels
    results = {"m": {"test": {"pearson": 0.93}}, "base": {"test": {"pearson": 0.413}}}
    for name, value, base in zip(null_names(len(leaked)), leaked, own, strict=True):
        results[name] = {"test": {"pearson": value}, NULL_BASELINE: {"pearson": base}}
    row = null_summary(results, "m", len(leaked), ("pearson",), "base")["test"]["pearson"]
    assert row["null_above_baseline"] and row["baseline_fitted_on"] == "each draw's permuted labels"
    assert row["null_gain_over_baseline"] == pytest.approx(np.mean(leaked) - np.mean(own))
    for name in null_names(len(leaked)):  # without the draws' own baselines: the real labels' one, which misses it
        del results[name][NULL_BASELINE]
    row = null_summary(results, "m", len(leaked), ("pearson",), "base")["test"]["pearson"]
    assert not row["null_above_baseline"] and row["baseline_fitted_on"] == "the real labels"
    honest = {
        n: {"test": {"pearson": v}, NULL_BASELINE: {"pearson": b}}
        for n, v, b in zip(null_names(6), [0.05, -0.1, 0.12, 0.0, 0.2, -0.05], own, strict=True)
    }
    row = null_summary({**results, **honest}, "m", 6, ("pearson",), "base")["test"]["pearson"]
    assert not row["null_above_baseline"]


def test_a_metric_some_draws_lack_is_summarised_over_the_draws_that_have_it():
    from dogmacache.train.controls import null_summary

    results = {
        "m": {"test": {"a": 0.5, "b": 0.5, "c": float("nan")}},
        "control_permuted_labels": {"test": {"a": 0.1, "b": 0.6, "c": 0.1}},
        "control_permuted_labels_2": {"test": {"a": 0.2, "b": float("nan"), "c": 0.2}},
        "control_permuted_labels_3": {"test": {"a": 0.7}},
    }
    out = null_summary(results, "m", 3, ("a", "b", "c"))["test"]
    assert out["a"]["draws_scored"] == 3 and out["a"]["draws_reaching_the_model"] == 1 and out["a"]["p"] == 0.5
    assert out["b"]["draws_scored"] == 1 and out["b"]["p"] == 1.0  # the one draw with a value reaches 0.5
    assert out["c"] == {"model": out["c"]["model"], "draws_scored": 2, "not_scored": "the model has no finite value"}


def test_the_nulls_further_draws_are_streams_of_their_own():
    from dogmacache.train.controls import null_rng

    def data(ids):
        table = pd.DataFrame({"id": ids, "target": np.arange(len(ids), dtype=float)})
        return TaskData(splits={"train": table, "validation": table, "test": table}, fingerprints={})

    fold0, fold1 = data([f"a{i}" for i in range(12)]), data([f"b{i}" for i in range(12)])
    first = null_rng(0, 0, fold0, [0]).permutation(12)
    assert np.array_equal(first, np.random.default_rng([0, 1, 0]).permutation(12))  # the plain null's stream
    assert np.array_equal(first, np.random.default_rng([0, 1]).permutation(12))  # = epoch 1's batch order (kept)
    second = null_rng(0, 1, fold0, [0]).permutation(12)
    batches = [np.random.default_rng([0, epoch]).permutation(12) for epoch in range(1, 50)]
    assert not any(np.array_equal(second, b) for b in batches)
    assert not np.array_equal(second, null_rng(0, 1, fold1, [0]).permutation(12))  # each fold its own
    assert not np.array_equal(null_rng(0, 1, fold0, []).permutation(12), null_rng(0, 1, fold0, [0]).permutation(12))


def test_null_draws_without_the_null_are_refused(tmp_path):
    config = write_pairs(tmp_path, signal=True)
    config["train"].update(null_draws=3, controls=["shuffled_inputs"])
    with pytest.raises(InputError, match=r"null_draws = 3 draws the permutation null, which \[train\] controls does"):
        run_training(config_from_dict(config), progress=False)
    config["train"]["null_draws"] = 0
    with pytest.raises(InputError, match="null_draws"):
        config_from_dict(config)


def test_a_cache_control_of_other_items_is_refused_before_the_model_trains(tmp_path):
    """A control cache lacking items the run reads (another recipe's windows) was refused only when the control
    loaded, after the model had trained, in words that read as the model's own cache's fault."""
    raw = write_pairs(tmp_path, signal=True)
    rng = np.random.default_rng(1)
    ids = [f"e{i}" for i in range(119)] + ["elsewhere"]  # one window of the run missing
    write_cache(tmp_path / "other.zarr", rng.normal(size=(120, 4, 6)).astype(np.float32), ids=ids)
    raw["train"].update(controls=[], epochs=2, control_caches=[f"dna_cache={tmp_path / 'other.zarr'}"])
    with pytest.raises(
        InputError,
        match=r"control_caches dna_cache=.*other\.zarr \(the control control_dna_other\) lacks 1 of the 120 items",
    ):
        run_training(config_from_dict(raw), progress=False)
    assert not (tmp_path / "out" / "dna_mlp_last.pt").exists()  # refused before the model trained


def test_a_cache_control_of_the_models_own_rows_or_of_another_genome_is_refused(tmp_path):
    """A control swapping in the run's own cache (or a copy of it) scores as the model does by construction; one
    cut from a genome of other bases holds other windows under the same ids. Both refused before anything trains."""
    import shutil

    raw = write_pairs(tmp_path, signal=True)
    shutil.copytree(tmp_path / "dna.zarr", tmp_path / "copy.zarr")
    for path in ("dna.zarr", "copy.zarr"):
        raw["train"].update(controls=[], epochs=2, control_caches=[f"dna_cache={tmp_path / path}"])
        with pytest.raises(InputError, match=r"holds the same rows as \[data\] dna_cache .* by construction"):
            run_training(config_from_dict(raw), progress=False)
    assert not (tmp_path / "out" / "dna_mlp_last.pt").exists()
    dna = open_cache(tmp_path / "dna.zarr")[:]
    ids = open_cache(tmp_path / "dna.zarr").ids.tolist()
    genome = {"genome": {"name": "hg19.fa", "sha256": "ab" * 32}}
    write_cache(tmp_path / "run.zarr", dna, ids=ids, shard_items=40, config={**genome})
    other = np.random.default_rng(3).normal(size=dna.shape).astype(np.float32)
    write_cache(
        tmp_path / "kmer.zarr",
        other,
        ids=ids,
        shard_items=40,
        config={"genome": {"name": "hg38.fa", "sha256": "cd" * 32}},
    )
    raw["data"]["dna_cache"] = str(tmp_path / "run.zarr")
    raw["train"]["control_caches"] = [f"dna_cache={tmp_path / 'kmer.zarr'}"]
    with pytest.raises(
        InputError, match=r"cut from the genome file 'hg38.fa', and \[data\] dna_cache .* from 'hg19.fa'"
    ):
        run_training(config_from_dict(raw), progress=False)


def test_a_cache_control_trains_with_the_settings_its_entry_gives_and_refuses_what_it_may_not_set(tmp_path):
    """`[train] control_caches = ["dna_cache=PATH; data.standardize_dna=false; train.lr=0.001"]`: the control is
    the same task on the other cache with its own preprocessing and optimisation (a k-mer cache trained with the
    settings chosen for a foundation model's embeddings may fit noise); the model, its seed and the controls stay."""
    raw = write_pairs(tmp_path, signal=True)
    rng = np.random.default_rng(1)
    write_cache(
        tmp_path / "other.zarr", rng.normal(size=(120, 4, 6)).astype(np.float32), ids=[f"e{i}" for i in range(120)]
    )
    other = str(tmp_path / "other.zarr")
    raw["train"].update(
        controls=[], epochs=2, control_caches=[f"dna_cache={other}; data.standardize_dna=true; train.lr=0.001"]
    )
    run_training(config_from_dict(raw), progress=False)
    saved = torch.load(tmp_path / "out" / "control_dna_other_best.pt", weights_only=False)["config"]
    assert saved["train"]["lr"] == 0.001 and saved["data"]["standardize_dna"] is True
    assert saved["data"]["dna_cache"] == other and saved["train"]["seed"] == raw["train"].get("seed", 0)
    model = torch.load(tmp_path / "out" / "dna_mlp_best.pt", weights_only=False)["config"]
    assert model["train"]["lr"] == 0.01 and model["data"]["standardize_dna"] is False
    for setting, message in (
        ("model.hidden=8", "is no setting a cache control may have"),
        ("train.seed=3", "train.FIELD other than controls, control_caches, null_draws, seed"),
        ("train.lr=-1", r"lr = -1 is out of range"),
        ("data.labels=other.parquet", "is no setting a cache control may have"),  # which examples: the run's
        ("data.dna_cache=x.zarr", "is no setting a cache control may have"),  # the cache: KEY=PATH's alone
        ("train.lr=0.1; train.lr=0.2", "sets train.lr twice"),
    ):
        raw["train"]["control_caches"] = [f"dna_cache={other}; {setting}"]
        with pytest.raises(InputError, match=message):  # checked before anything trains (run.py: check_controls)
            cache_controls(config_from_dict(raw))


def test_a_cache_control_may_swap_a_cache_only():
    import dataclasses

    from dogmacache.errors import InputError
    from dogmacache.train.controls import cache_controls
    from dogmacache.train.registry import default_config

    config = default_config("isoformer")
    for key, what in (("labels", "names no cache"), ("nothing", r"not a \[data\] key")):
        swapped = dataclasses.replace(
            config, train=dataclasses.replace(config.train, control_caches=(f"{key}=/x.zarr",))
        )
        with pytest.raises(InputError, match=rf"control_caches names '{key}', which is .*{what}.*expected one of"):
            cache_controls(swapped)
