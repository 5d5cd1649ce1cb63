"""`dogmacache train --seeds`: one run per seed in its own folder, and seeds.json with mean, sd and range of
every metric, controls included."""

from __future__ import annotations

import json

import numpy as np
import pytest
from dogmacache import cli
from dogmacache.errors import InputError
from dogmacache.train.config import to_toml
from dogmacache.train.registry import config_from_dict
from dogmacache.train.seeds import aggregate, parse_seeds
from test_controls import write_pairs


def test_seeds_run_apart_and_aggregate_every_metric(tmp_path, capsys, monkeypatch):
    raw = write_pairs(tmp_path, signal=True, n_enh=60)
    raw["train"].update(epochs=3, controls=["permuted_labels"])
    (tmp_path / "run.toml").write_text(to_toml(config_from_dict(raw)))
    assert cli.main(["train", "--config", str(tmp_path / "run.toml"), "--seeds", "0,1", "--no-progress"]) == 0
    out = tmp_path / "out"
    runs = {s: json.loads((out / f"seed{s}" / "metrics.json").read_text()) for s in (0, 1)}
    seeds = json.loads((out / "seeds.json").read_text())
    assert seeds["seeds"] == [0, 1]
    key = "models.control_permuted_labels.test.pearson"
    values = [runs[s]["models"]["control_permuted_labels"]["test"]["pearson"] for s in (0, 1)]
    assert seeds["metrics"][key]["mean"] == pytest.approx(np.mean(values))
    assert seeds["metrics"][key]["sd"] == pytest.approx(np.std(values, ddof=1))
    assert seeds["metrics"][key]["min"] == min(values) and seeds["metrics"][key]["n"] == 2
    assert values[0] != values[1]  # the seed reached the run
    assert "control_permuted_labels" in capsys.readouterr().out
    assert (
        seeds["runs"] == {"0": str(out / "seed0"), "1": str(out / "seed1")} and seeds["config"]["train"]["lr"] == 0.01
    )

    # a rerun refused before it trains (another run holds the folders, resume off) keeps the finished aggregate
    from dogmacache.train import seeds as seeds_module

    refused = {**raw, "output": {**raw["output"], "resume": False, "overwrite": False}}
    with pytest.raises(InputError, match=r"holds another run"):
        seeds_module.run_seeds(config_from_dict(refused), [0, 1], progress=False)
    assert json.loads((out / "seeds.json").read_text())["seeds"] == [0, 1]

    # a second run with another lr, stopped while seed 1 trains: no aggregate of the first run's seeds stands
    from conftest import interrupt_on_call

    raw["train"]["lr"] = 0.05
    raw["output"]["overwrite"] = True
    interrupt_on_call(monkeypatch, seeds_module, "run_training", 2)
    with pytest.raises(KeyboardInterrupt):
        seeds_module.run_seeds(config_from_dict(raw), [0, 1], progress=False)
    assert not (out / "seeds.json").exists()
    assert json.loads((out / "seed0" / "metrics.json").read_text())["config"]["train"]["lr"] == 0.05


def test_aggregate_skips_undefined_values_and_parse_seeds_refuses_nonsense():
    table = aggregate(
        {
            0: {"models": {"m": {"test": {"r2": 0.5, "auroc": None}}}},
            1: {"models": {"m": {"test": {"r2": 0.7, "auroc": 0.9}}}},
        }
    )
    assert table["models.m.test.r2"]["mean"] == pytest.approx(0.6) and table["models.m.test.auroc"]["n"] == 1
    assert parse_seeds("0-2") == [0, 1, 2] and parse_seeds("3,5") == [3, 5]
    for bad in ("a,b", "1,1", "-1"):
        with pytest.raises(InputError):
            parse_seeds(bad)


def test_the_seed_table_keeps_a_gap_between_columns_of_negative_cells(capsys):
    from dogmacache.train.seeds import print_seed_table

    cell = {"mean": -0.132, "sd": 0.109, "min": -0.258, "max": -0.061}  # 31 characters, over the old 30
    metrics = {f"models.control_permuted_labels.test.{m}": cell for m in ("pearson", "spearman", "r2")}
    print_seed_table({"metrics": metrics, "seeds": [0, 1, 2]}, "pearson")
    row = capsys.readouterr().out.splitlines()[-1]
    assert row.count("-0.132 ± 0.109 [-0.258, -0.061]") == 3 and "]-" not in row
