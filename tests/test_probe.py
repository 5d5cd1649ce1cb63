"""`dogmacache probe`: split-aware linear probes per cache rank a cache that carries the target above noise, beside
shuffled controls near zero, with the regularisation chosen on training rows only."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import write_cache
from dogmacache.cli import main
from dogmacache.errors import InputError
from dogmacache.train.probe import ProbeConfig, _center_weights, read_labels, run_probe

N_ITEMS, L, D = 120, 4, 8


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A signal cache (layer 0: the target is linear in its mean-pooled features), a noise cache of the same model
    (layer 1), a k-mer cache, and labels with two rows per item, split by item."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("probe")
    ids = [f"item{i}" for i in range(N_ITEMS)]
    signal = rng.standard_normal((N_ITEMS, L, D)).astype(np.float32)
    weights = rng.standard_normal(D)
    for name, model, layer in (("signal", "tiny", 0), ("noise", "tiny", 1), ("kmer", "kmer", -1)):
        data = signal if name == "signal" else rng.standard_normal((N_ITEMS, L, D)).astype(np.float32)
        write_cache(root / f"{name}.zarr", data, ids=ids, shard_items=60, model=model, layer=layer)
    split = np.array(["train"] * 80 + ["validation"] * 20 + ["test"] * 20)
    per_item = signal.astype(np.float64).mean(1) @ weights
    table = pd.DataFrame(
        {
            "item": np.repeat(ids, 2),
            "split": np.repeat(split, 2),
            "y": np.repeat(per_item, 2) + 0.1 * rng.standard_normal(2 * N_ITEMS),
        }
    )
    table["high"] = table["y"] > table["y"].median()
    table.to_parquet(root / "labels.parquet")
    return root, {k: str(root / f"{k}.zarr") for k in ("signal", "noise", "kmer")}


def probe(world, tmp_path, labels=None, **kwargs):
    root, caches = world
    names = kwargs.pop("names", ("signal", "noise", "kmer"))
    config = ProbeConfig(
        caches=tuple(caches[n] for n in names),
        labels=str(labels or root / "labels.parquet"),
        target=kwargs.pop("target", "y"),
        out=str(tmp_path / "out"),
        id_column="item",
        **kwargs,
    )
    return pd.DataFrame(run_probe(config, quiet=True)["rows"]).set_index(["cache", "role"])


def test_ranks_the_signal_cache_above_noise_beside_controls(world, tmp_path):
    rows = probe(world, tmp_path)
    signal, noise = rows.loc[("signal", "model")], rows.loc[("noise", "model")]
    assert signal["test_r2"] > 0.9 and signal["test_pearson"] > 0.95
    assert noise["test_r2"] < 0.2 and signal["test_r2"] > noise["test_r2"] + 0.5
    assert rows.loc[("kmer", "kmer control"), "model"] == "kmer"  # read from the manifest
    shuffled = rows.xs("shuffled control", level="role")
    assert (shuffled["test_r2"].abs() < 0.15).all(), shuffled
    assert (rows["n_train"] == 160).all() and (rows["n_test"] == 40).all()
    assert set(rows.index.get_level_values("role")) == {"model", "kmer control", "shuffled control"}
    out = tmp_path / "out"
    tsv = pd.read_csv(out / "probe.tsv", sep="\t")
    assert list(tsv.columns[:6]) == ["cache", "role", "model", "layer", "modality", "pooling"] and len(tsv) == 6
    assert {"alpha", "validation_spearman", "test_r2"} <= set(tsv.columns) and set(tsv["pooling"]) == {"mean"}

    def refuse(value):
        raise ValueError(value)

    saved = json.loads((out / "probe.json").read_text(), parse_constant=refuse)  # strict: no NaN
    assert saved["settings"]["task"] == "regression" and len(saved["rows"]) == 6
    assert (out / "probe.png").stat().st_size > 10_000  # with the layer panel: caches of `tiny` at layers 0 and 1


def test_regularisation_is_chosen_without_test_rows(world, tmp_path):
    root, _ = world
    table = pd.read_parquet(root / "labels.parquet")
    test = table["split"] == "test"
    table.loc[test, "y"] = np.random.default_rng(1).standard_normal(int(test.sum())) * 100
    table.to_parquet(tmp_path / "changed.parquet")
    before = probe(world, tmp_path, names=("signal", "noise"))
    after = probe(world, tmp_path, labels=tmp_path / "changed.parquet", names=("signal", "noise"))
    for column in ("alpha", "cv_r2", "validation_r2", "validation_spearman"):
        assert np.array_equal(before[column], after[column]), column
    assert not np.allclose(before["test_r2"], after["test_r2"])


def test_classification_scores_auroc(world, tmp_path):
    rows = probe(world, tmp_path, target="high", names=("signal", "noise"))
    assert rows.loc[("signal", "model"), "task"] == "classification"
    assert rows.loc[("signal", "model"), "test_auroc"] > 0.9
    assert rows.loc[("signal", "model"), "test_auroc"] > rows.loc[("noise", "model"), "test_auroc"]
    assert abs(rows.loc[("signal", "shuffled control"), "test_auroc"] - 0.5) < 0.3
    assert {"C", "test_auprc"} <= set(rows.columns)


def test_unknown_id_is_one_line_naming_it(world, tmp_path, capsys):
    root, caches = world
    table = pd.read_parquet(root / "labels.parquet")
    table.loc[3, "item"] = "not-an-item"
    table.to_parquet(tmp_path / "bad.parquet")
    args = ["probe", "--caches", caches["signal"], "--labels", str(tmp_path / "bad.parquet"), "--target", "y"]
    assert main([*args, "--id-column", "item", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'not-an-item'" in err and "--id-column" in err, err


def test_labels_without_split_column_say_how_to_add_it(world, tmp_path):
    root, _ = world
    pd.read_parquet(root / "labels.parquet").drop(columns="split").to_csv(tmp_path / "l.tsv", sep="\t", index=False)
    config = ProbeConfig(caches=("x",), labels=str(tmp_path / "l.tsv"), target="y", out="o", id_column="item")
    with pytest.raises(InputError, match="add a column 'split' holding train, validation or test"):
        read_labels(config)


def test_center_pooling_takes_the_middle_real_positions():
    real = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [0, 1, 1, 1, 0]], dtype=bool)
    picked = [np.flatnonzero(w).tolist() for w in _center_weights(real)]
    assert picked == [[2], [1, 2], [2]]


def test_ridge_cv_agrees_with_a_grid_search_over_ridge():
    from dogmacache.train.probe import ALPHAS, ridge_cv
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GridSearchCV, GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(2)
    x = rng.standard_normal((90, 6)) * rng.uniform(0.1, 5, 6) + 3
    y = x @ rng.standard_normal(6) + 3 * rng.standard_normal(90)
    groups = np.repeat(np.arange(45), 2)
    search = GridSearchCV(make_pipeline(StandardScaler(), Ridge()), {"ridge__alpha": ALPHAS}, cv=GroupKFold(5))
    search.fit(x, y, groups=groups)
    alpha, score = ridge_cv(x, y, groups, 5)
    assert alpha == search.best_params_["ridge__alpha"] and score == pytest.approx(search.best_score_)
