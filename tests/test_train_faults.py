"""The train stage's fault cases, one test each, named after the case: a wrong kind of cache, two trainings
into one folder, a full or read-only disk, Ctrl-C, a held-out tissue missing from the labels, strict JSON, a
fresh start over another run, and a bad --set."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from conftest import write_cache
from dogmacache.errors import InputError
from dogmacache.train import checkpoint
from dogmacache.train.config import to_toml
from dogmacache.train.registry import config_from_dict, load_config
from dogmacache.train.run import run_training
from test_cdbridge import write_recipe


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_biodta_refuses_a_protein_cache_as_its_token_cache(tmp_path):
    genes = ["G0", "G1", "G2"]
    write_cache(tmp_path / "dna.zarr", np.zeros((3, 4, 6), np.float32), ids=genes)
    write_cache(tmp_path / "protein.zarr", np.zeros((3, 5), np.float32), ids=genes, modality="protein")
    pd.DataFrame({"id": genes, "split": ["train", "validation", "test"]}).to_parquet(tmp_path / "genes.parquet")
    raw = {
        "task": "biodta",
        "data": {
            "labels": str(tmp_path / "genes.parquet"),
            "dna_cache": str(tmp_path / "dna.zarr"),
            "token_cache": str(tmp_path / "protein.zarr"),
        },
    }
    from dogmacache.train.registry import get_task

    config = config_from_dict(raw)
    with pytest.raises(InputError) as err:
        get_task("biodta")(config).load()
    assert "holds protein embeddings" in _one_line(err) and "[data] token_cache needs gene embeddings" in str(err.value)


def test_cdbridge_refuses_a_dna_cache_as_its_tissue_cache(tmp_path):
    raw = write_recipe(tmp_path)
    raw["data"]["tissue_cache"] = raw["data"]["protein_cache"]
    with pytest.raises(InputError) as err:
        run_training(config_from_dict(raw), progress=False)
    assert "[data] tissue_cache needs context embeddings" in _one_line(err)


def test_two_trainings_into_one_folder_refuse_the_second_naming_the_holder(tmp_path):
    raw = write_recipe(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from dogmacache.cache.lock import WriterLock; "
            f"lock = WriterLock.acquire(Path({str(out)!r})); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(InputError) as err:
            run_training(config_from_dict(raw), progress=False)
        assert f"being trained into by process {holder.pid}" in _one_line(err)
        assert not (out / "metrics.json").exists()
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    run_training(config_from_dict(raw), progress=False)  # the holder gone, the folder is free again
    assert (out / "metrics.json").is_file() and not (tmp_path / "out.lock").exists()


def test_train_onto_a_full_disk_is_one_line_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    raw = write_recipe(tmp_path)
    raw["model"]["stage"] = 1

    def full_disk(payload, path):
        with open(path, "wb") as fh:
            fh.write(b"x" * 1000)  # part of the file reached the disk
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(InputError) as err:
        run_training(config_from_dict(raw), progress=False)
    text = _one_line(err)
    assert "No space left on device (ENOSPC)" in text and "re-run the same command" in text
    assert list((tmp_path / "out").glob("*.tmp")) == []


def test_train_into_a_folder_that_cannot_be_written_is_one_line_before_any_data_loads(tmp_path):
    raw = write_recipe(tmp_path)
    (tmp_path / "plain-file").write_text("")
    raw["output"]["dir"] = str(tmp_path / "plain-file" / "run")
    raw["data"]["labels"] = str(tmp_path / "absent.parquet")  # would fail later, if data loaded first
    with pytest.raises(InputError) as err:
        run_training(config_from_dict(raw), progress=False)
    assert "is not writable" in _one_line(err) and "output.dir" in str(err.value)


def test_ctrl_c_during_train_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    from dogmacache import cli
    from dogmacache.train import run

    raw = write_recipe(tmp_path)
    (tmp_path / "run.toml").write_text(to_toml(config_from_dict(raw)))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "run_training", interrupted)
    assert cli.main(["train", "--config", str(tmp_path / "run.toml"), "--no-progress"]) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "interrupted" in err and str(tmp_path / "out") in err


def test_cdbridge_with_a_held_out_tissue_missing_from_the_labels_is_an_error(tmp_path):
    raw = write_recipe(tmp_path)
    tissues = pd.read_parquet(tmp_path / "tissues.parquet")
    tissues.loc[len(tissues)] = ["Kidney", True]
    tissues.to_parquet(tmp_path / "tissues.parquet")
    with pytest.raises(InputError) as err:
        run_training(config_from_dict(raw), progress=False)
    assert "held-out tissue 'Kidney'" in _one_line(err)


def test_metrics_json_is_strict_json_with_null_for_undefined_metrics(tmp_path):
    raw = write_recipe(tmp_path)
    raw["model"]["ablations"] = ["no_mask_supervision"]  # no stage 1: its mask AUROC is not defined
    run_training(config_from_dict(raw), progress=False)

    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    written = json.loads((tmp_path / "out" / "metrics.json").read_text(), parse_constant=refuse)
    assert written["seen_vs_held_out"]["no_mask_supervision"]["mask_auroc"] is None
    assert "null_means" in written


def test_a_fresh_start_over_another_run_is_refused_unless_overwrite(tmp_path):
    raw = write_recipe(tmp_path)
    raw["model"]["stage"] = 1
    run_training(config_from_dict(raw), progress=False)
    before = (tmp_path / "out" / "metrics.json").read_text()
    with pytest.raises(InputError) as err:
        run_training(config_from_dict(raw), progress=False)  # resume = false in write_recipe
    assert "holds another run" in _one_line(err) and "output.overwrite=true" in str(err.value)
    assert (tmp_path / "out" / "metrics.json").read_text() == before
    raw["output"]["overwrite"] = True
    run_training(config_from_dict(raw), progress=False)


def test_a_bad_set_is_named_as_the_command_line_not_the_file(tmp_path):
    raw = write_recipe(tmp_path)
    (tmp_path / "run.toml").write_text(to_toml(config_from_dict(raw)))
    with pytest.raises(InputError) as err:
        load_config(tmp_path / "run.toml", {"train.epochs": "many"})
    assert _one_line(err).startswith("--set train.epochs: [train] epochs = 'many' is not an integer")
    with pytest.raises(InputError) as err:
        load_config(tmp_path / "run.toml", {"trian.epochs": 3})
    assert _one_line(err).startswith("--set trian.epochs=3: no section [trian]")
    assert load_config(tmp_path / "run.toml", {"train.epochs": 3}).train.epochs == 3


def test_a_resume_may_add_epochs_not_take_them_back(tmp_path):
    """A finished 3-epoch run resumed with train.epochs = 1 would report 1 epoch over a model of 3 (and --seeds
    would pool runs of different lengths): refused, naming both counts."""
    raw = write_recipe(tmp_path)
    raw["model"]["stage"] = 1
    raw["train"]["epochs"] = 3
    run_training(config_from_dict(raw), progress=False)
    raw["output"]["resume"] = True
    raw["train"]["epochs"] = 1
    with pytest.raises(InputError) as err:
        run_training(config_from_dict(raw), progress=False)
    assert "has trained 3 epochs, more than this run's train.epochs = 1" in _one_line(err)


def test_config_files_round_trip_and_read_as_people_write_them(tmp_path):
    """--print-config prints TOML that --config reads back to the same configuration; YAML takes 1e-4 as a number;
    a YAML section whose keys are all commented out takes --set; ~ is the home folder; a task that is no name, a
    seed past 64 bits and a list given bare on the command line are one line each."""
    import os

    from dogmacache.cli import main

    raw = write_recipe(tmp_path)
    (tmp_path / "run.toml").write_text(to_toml(config_from_dict(raw)))
    printed = tmp_path / "printed.toml"
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(["train", "--config", str(tmp_path / "run.toml"), "--print-config"]) == 0
    printed.write_text(out.getvalue())
    assert load_config(printed) == load_config(tmp_path / "run.toml")
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(f"task: cdbridge\ndata:\n  labels: {raw['data']['labels']}\ntrain:\n  # epochs: 3\n")
    with pytest.raises(InputError, match=r"\[data\] needs \['dna_cache'"):  # the file reads; its keys are too few
        load_config(yaml_file)
    from dogmacache.train.config import read_config_file

    yaml_file.write_text("task: cdbridge\ntrain:\n  lr: 1e-4\nmodel:\n  # all keys commented out\n")
    parsed = read_config_file(yaml_file, {"model.stage": 1})
    assert parsed["train"]["lr"] == 1e-4 and parsed["model"] == {"stage": 1}
    raw["output"]["dir"] = "~/runs/x"
    assert config_from_dict(raw).output.dir == os.path.expanduser("~/runs/x")
    for overrides, said in (
        ({"task": ["cdbridge"]}, r"task \['cdbridge'\] is not one of"),
        ({"train.seed": 2**64}, r"\[train\] seed = 18446744073709551616 is out of range"),
        ({"train.controls": "permuted_labels"}, r"--set 'train.controls=\[\"permuted_labels\"\]'"),
    ):
        with pytest.raises(InputError, match=said):
            load_config(tmp_path / "run.toml", overrides)


def test_a_cache_control_of_another_kind_is_refused_before_the_model_trains(tmp_path):
    raw = write_recipe(tmp_path)
    raw["model"]["stage"] = 1
    raw["train"]["control_caches"] = [f"dna_cache={raw['data']['protein_cache']}"]
    with pytest.raises(InputError) as err:
        run_training(config_from_dict(raw), progress=False)
    assert "holds protein embeddings of shape (6,), where [data] dna_cache holds dna" in _one_line(err)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.pt"))  # nothing trained


def test_seeds_past_64_bits_or_by_the_thousand_are_refused():
    from dogmacache.train.seeds import parse_seeds

    with pytest.raises(InputError, match="names 10,000,000,001 seeds; give at most 1,000"):
        parse_seeds("0-10000000000")
    with pytest.raises(InputError, match="from 0 to 2\\*\\*63 - 1"):
        parse_seeds(f"0,{2**63}")
