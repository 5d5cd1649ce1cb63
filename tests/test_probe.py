"""`dogmacache probe`: split-aware linear probes per cache rank a cache that carries the target above noise, beside
permuted-label and shuffled-input controls near zero, with the regularisation chosen on training rows only."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from conftest import write_cache
from dogmacache.cache import open_cache
from dogmacache.cli import main
from dogmacache.errors import InputError
from dogmacache.train.probe import ProbeConfig, _center_weights, read_labels, run_probe

N_ITEMS, L, D = 120, 4, 8


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A signal cache (layer 0: the target is linear in its mean-pooled features), a noise cache of the same model
    (layer 1), a k-mer cache, and labels with two rows per item, split by item, in an order other than the caches'."""
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
    table = table.sample(frac=1.0, random_state=0).reset_index(drop=True)  # rows are joined by id, not by order
    table.to_parquet(root / "labels.parquet")
    return root, {k: str(root / f"{k}.zarr") for k in ("signal", "noise", "kmer")}


def probe_config(world, tmp_path, labels=None, paths=None, **kwargs):
    """The world's probe config: caches by name (`names`) or by path (`paths`)."""
    root, caches = world
    names = kwargs.pop("names", ("signal", "noise", "kmer"))
    return ProbeConfig(
        caches=tuple(map(str, paths)) if paths else tuple(caches[n] for n in names),
        labels=str(labels or root / "labels.parquet"),
        target=kwargs.pop("target", "y"),
        out=str(tmp_path / "out"),
        id_column="item",
        **kwargs,
    )


def probe(world, tmp_path, labels=None, **kwargs):
    config = probe_config(world, tmp_path, labels, **kwargs)
    return pd.DataFrame(run_probe(config, quiet=True)["rows"]).set_index(["cache", "role"])


def test_ranks_the_signal_cache_above_noise_beside_controls(world, tmp_path):
    rows = probe(world, tmp_path)
    signal, noise = rows.loc[("signal", "model")], rows.loc[("noise", "model")]
    assert signal["test_r2"] > 0.9 and signal["test_pearson"] > 0.95
    assert noise["test_r2"] < 0.2 and signal["test_r2"] > noise["test_r2"] + 0.5
    assert rows.loc[("kmer", "kmer control"), "model"] == "kmer"  # read from the manifest
    for role in ("permuted labels", "shuffled inputs"):  # a fit that read test rows would score the first high
        controls = rows.xs(role, level="role")  # one permutation each: below the mean is a null draw too
        assert (controls["test_r2"] < 0.15).all() and (controls["validation_r2"] < 0.15).all(), controls
    assert (rows["n_train"] == 160).all() and (rows["n_test"] == 40).all()
    roles = {"model", "kmer control", "permuted labels", "shuffled inputs"}
    assert set(rows.index.get_level_values("role")) == roles
    assert rows.index[rows["chosen"]].tolist() == [("signal", "model")]  # the best validation score of the models
    out = tmp_path / "out"
    tsv = pd.read_csv(out / "probe.tsv", sep="\t")
    assert list(tsv.columns[:7]) == ["cache", "role", "chosen", "model", "layer", "modality", "pooling"]
    assert len(tsv) == 9
    assert {"alpha", "validation_spearman", "test_r2"} <= set(tsv.columns) and set(tsv["pooling"]) == {"mean"}

    def refuse(value):
        raise ValueError(value)

    saved = json.loads((out / "probe.json").read_text(), parse_constant=refuse)  # strict: no NaN
    assert saved["settings"]["task"] == "regression" and len(saved["rows"]) == 9
    assert saved["settings"]["kmer_controls"] == ["kmer"] and saved["settings"]["chosen_by"] == "validation r2"
    assert (out / "probe.png").stat().st_size > 10_000  # with the layer panel: caches of `tiny` at layers 0 and 1


@pytest.mark.parametrize(
    ("target", "fixed", "scored"),
    [
        ("y", ("alpha", "cv_r2", "validation_r2", "validation_spearman"), "test_r2"),
        ("high", ("C", "cv_roc_auc", "validation_auroc"), "test_auroc"),
    ],
)
def test_regularisation_is_chosen_without_test_rows(world, tmp_path, target, fixed, scored):
    root, _ = world
    table = pd.read_parquet(root / "labels.parquet")
    test = table["split"] == "test"
    changed = np.random.default_rng(1).standard_normal(int(test.sum()))
    table.loc[test, target] = changed * 100 if target == "y" else changed > 0
    table.to_parquet(tmp_path / "changed.parquet")
    before = probe(world, tmp_path, target=target, names=("signal", "noise"))
    after = probe(world, tmp_path, labels=tmp_path / "changed.parquet", target=target, names=("signal", "noise"))
    for column in (*fixed, "chosen"):
        assert np.array_equal(before[column], after[column]), column
    assert not np.allclose(before[scored], after[scored])


def test_classification_scores_auroc(world, tmp_path):
    rows = probe(world, tmp_path, target="high", names=("signal", "noise"))
    assert rows.loc[("signal", "model"), "task"] == "classification"
    assert rows.loc[("signal", "model"), "test_auroc"] > 0.9
    assert rows.loc[("signal", "model"), "test_auroc"] > rows.loc[("noise", "model"), "test_auroc"]
    for role in ("permuted labels", "shuffled inputs"):
        assert abs(rows.loc[("signal", role), "test_auroc"] - 0.5) < 0.2, role
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
    cv = GroupKFold(5, shuffle=True, random_state=0)
    search = GridSearchCV(make_pipeline(StandardScaler(), Ridge()), {"ridge__alpha": ALPHAS}, cv=cv)
    search.fit(x, y, groups=groups)
    alpha, score = ridge_cv(x, y, groups, 5)
    assert alpha == search.best_params_["ridge__alpha"] and score == pytest.approx(search.best_score_)


@pytest.mark.parametrize("column", ["item", "batch"])
def test_an_item_or_group_in_two_splits_is_refused_in_one_line(world, tmp_path, column):
    root, caches = world
    table = pd.read_parquet(root / "labels.parquet")
    table["batch"] = table["item"].str.slice(0, 5)  # item0..item9 -> item0 ... : groups of items across splits
    if column == "item":
        first = table.index[table["item"] == "item3"][0]
        table.loc[first, "split"] = "test"  # item3's other row stays in train
    table.to_parquet(tmp_path / "l.parquet")
    config = ProbeConfig(
        caches=(caches["signal"],),
        labels=str(tmp_path / "l.parquet"),
        target="y",
        out="o",
        id_column="item",
        group_column="batch" if column == "batch" else None,
    )
    with pytest.raises(InputError) as err:
        read_labels(config)
    text = str(err.value)
    assert "\n" not in text and f"of {column!r} sit in more than one split" in text and "give each" in text, text


def test_a_class_in_one_group_of_train_is_one_line_naming_it(world, tmp_path, recwarn):
    root, _ = world
    table = pd.read_parquet(root / "labels.parquet")
    train = table["split"] == "train"
    table["rare"] = train & (table["item"] == "item5")  # one positive item in train
    for split in ("validation", "test"):  # both classes there: only train's one positive group is at fault
        table.loc[table["split"] == split, "rare"] = [True, False] * int((table["split"] == split).sum() // 2)
    table.to_parquet(tmp_path / "rare.parquet")
    with pytest.raises(InputError, match=r"the train split's positive rows sit in 1 group\(s\) of items"):
        probe(world, tmp_path, labels=tmp_path / "rare.parquet", target="rare", names=("signal",))


def test_mean_and_center_pooling_over_the_real_tokens_of_a_masked_cache(tmp_path):
    from dogmacache.cache import open_cache
    from dogmacache.train.probe import pooled_features

    rng = np.random.default_rng(4)
    data = rng.standard_normal((7, 5, 3)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [0] * 5, [1, 1, 1, 1, 0], [1] * 5, [1] * 5])
    write_cache(tmp_path / "m.zarr", data, shard_items=3, extras={"mask": mask.astype(bool)})
    cache = open_cache(tmp_path / "m.zarr")
    data = cache.read_rows(np.arange(7), dtype=np.float32).astype(np.float64)  # as stored (float16)
    rows = np.array([4, 0, 3, 1, 2])  # across shards, unsorted, one row with no real token
    mean, pooling = pooled_features(cache, rows, "mean")
    expected = [data[r][mask[r] == 1].mean(0) if mask[r].any() else np.zeros(3) for r in rows]
    assert pooling == "mean" and np.allclose(mean, expected, atol=1e-6)
    center, _ = pooled_features(cache, rows, "center")
    assert np.allclose(center[0], data[4][1:3].mean(0)) and np.allclose(center[3], data[1][0:2].mean(0))
    assert np.allclose(center[4], data[2][0]) and np.allclose(center[2], 0.0)


def test_ridge_cv_folds_follow_the_seed(world):
    from dogmacache.train.probe import ALPHAS, ridge_cv
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GridSearchCV, GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(5)
    x = rng.standard_normal((60, 4))
    y = x @ rng.standard_normal(4) + 2 * rng.standard_normal(60)
    groups = np.repeat(np.arange(20), 3)
    scores = set()
    for seed in (0, 1):
        cv = GroupKFold(5, shuffle=True, random_state=seed)
        search = GridSearchCV(make_pipeline(StandardScaler(), Ridge()), {"ridge__alpha": ALPHAS}, cv=cv)
        search.fit(x, y, groups=groups)
        alpha, score = ridge_cv(x, y, groups, 5, seed)
        assert alpha == search.best_params_["ridge__alpha"] and score == pytest.approx(search.best_score_)
        scores.add(round(score, 9))
    assert len(scores) == 2  # other folds, another score


def test_a_call_without_a_kmer_control_says_so(world, tmp_path, capsys):
    root, caches = world
    args = ["probe", "--caches", f"{caches['signal']},{caches['noise']}", "--labels", str(root / "labels.parquet")]
    assert main([*args, "--target", "y", "--id-column", "item", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "no k-mer control among --caches" in out and "chosen by validation r2: signal" in out
    assert "pooling over positions: mean" in out  # stated where it is read, as in the table and the figure
    saved = json.loads((tmp_path / "o" / "probe.json").read_text())
    assert saved["settings"]["kmer_controls"] == [] and saved["settings"]["group_column"] == "item"


def test_label_and_cache_mistakes_are_one_line_each(world, tmp_path):
    root, caches = world
    with pytest.raises(InputError, match=r"--caches names '.*signal.zarr' 2 times; give each once"):
        ProbeConfig(caches=(caches["signal"], caches["signal"]), labels="l", target="y", out="o")
    with pytest.raises(InputError, match=r"labels table '.*' is a folder, not a file; pass --labels a parquet"):
        probe(world, tmp_path, labels=root)
    table = pd.read_parquet(root / "labels.parquet")
    table["gene"] = table["item"].str.slice(0, 5)
    table.loc[table.index[:3], "gene"] = None
    table.to_parquet(tmp_path / "empty.parquet")
    table["gene"] = np.where(np.arange(len(table)) % 2 == 0, "a", "b")  # an item's two rows in two groups
    table.loc[table["split"] != "train", "gene"] = table["split"].map({"validation": "c", "test": "d"})
    table.to_parquet(tmp_path / "two.parquet")
    for name, message in (
        ("empty", r"column 'gene' \(--group-column\) is empty in 3 row\(s\)"),
        ("two", "more than one 'gene' group"),
    ):
        config = ProbeConfig(
            caches=(caches["signal"],),
            labels=str(tmp_path / f"{name}.parquet"),
            target="y",
            out="o",
            id_column="item",
            group_column="gene",
        )
        with pytest.raises(InputError, match=message) as err:
            read_labels(config)
        assert "\n" not in str(err.value)


def test_the_two_controls_are_separate_draws_and_only_a_kmer_cache_chooses_nothing(world, tmp_path, capsys):
    from dogmacache.train.probe import shuffled_items

    item = np.repeat(np.arange(40), 2)
    split = np.array(["train"] * 40 + ["validation"] * 20 + ["test"] * 20)
    permuted = shuffled_items(item, split, 0, splits=("train",), stream=1)
    shuffled = shuffled_items(item, split, 0)
    train = split == "train"
    assert not np.array_equal(permuted[train], shuffled[train]) and np.array_equal(permuted[~train], item[~train])
    assert not np.array_equal(shuffled[~train], item[~train])
    root, caches = world
    args = ["probe", "--caches", caches["kmer"], "--labels", str(root / "labels.parquet"), "--target", "y"]
    assert main([*args, "--id-column", "item", "--out", str(tmp_path / "k")]) == 0
    assert "no cache of role model among --caches: nothing chosen" in capsys.readouterr().out
    saved = json.loads((tmp_path / "k" / "probe.json").read_text())
    assert saved["settings"]["chosen_by"] is None and not any(r["chosen"] for r in saved["rows"])
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == ["probe.json", "probe.png", "probe.tsv"]


def test_a_kmer_control_above_the_chosen_model_is_said():
    from dogmacache.train.probe import kmer_above_chosen, mark_chosen

    rows = [
        {"cache": "dna.l0", "role": "model", "validation_r2": 0.565},
        {"cache": "dna.l1", "role": "model", "validation_r2": 0.40},
        {"cache": "kmer", "role": "kmer control", "validation_r2": 0.667},
        {"cache": "dna.l0", "role": "permuted labels", "validation_r2": 0.9},  # not a k-mer control: not compared
    ]
    by = mark_chosen(rows, "regression")
    (line,) = kmer_above_chosen(rows, by)
    assert "k-mer control kmer scores above it: validation r2 0.667 against 0.565 (dna.l0)" in line
    rows[2]["validation_r2"] = 0.5
    assert kmer_above_chosen(rows, by) == [] and kmer_above_chosen(rows, None) == []


def test_a_two_valued_target_names_its_positive_class(world, tmp_path, capsys):
    """AUPRC is scored for one class: 1 / True where the values say so, else the class --positive names; two other
    values without it are refused, as is a --positive that is not a value. The printout gives the positive class
    and its share of the test rows (AUPRC's chance level)."""
    root, caches = world
    table = pd.read_parquet(root / "labels.parquet")
    table["status"] = np.where(table["high"], "case", "control")
    table.to_parquet(tmp_path / "status.parquet")
    labels = tmp_path / "status.parquet"
    with pytest.raises(InputError, match=r"two values \['case', 'control'\]: name the positive class with --positive"):
        probe(world, tmp_path, labels=labels, target="status", names=("signal",))
    with pytest.raises(InputError, match=r"--positive 'cases' is not a value of .* \['case', 'control'\]"):
        probe(world, tmp_path, labels=labels, target="status", names=("signal",), positive="cases")
    config = ProbeConfig(
        caches=(caches["signal"],), labels=str(labels), target="status", out=str(tmp_path / "o"), id_column="item"
    )
    case = run_probe(ProbeConfig(**{**config.__dict__, "positive": "case"}))
    control = run_probe(ProbeConfig(**{**config.__dict__, "positive": "control"}), quiet=True)
    share = float((table.loc[table["split"] == "test", "status"] == "case").mean())
    assert case["settings"]["positive"] == "case" and case["settings"]["test_positive_share"] == pytest.approx(share)
    assert f"positive class: 'case', {share:.1%} of the test rows (AUPRC's chance level" in capsys.readouterr().out
    first, second = case["rows"][0], control["rows"][0]
    assert first["test_auroc"] == pytest.approx(second["test_auroc"])  # AUROC is symmetric in the classes
    assert first["test_auprc"] != pytest.approx(second["test_auprc"])  # AUPRC is not
    high = probe(world, tmp_path, target="high", names=("signal",))  # booleans: True is the positive class
    assert json.loads((tmp_path / "out" / "probe.json").read_text())["settings"]["positive"] is True
    assert high.loc[("signal", "model"), "test_auroc"] > 0.9


def test_a_target_without_spread_and_a_negative_seed_are_one_line(world, tmp_path):
    root, caches = world
    table = pd.read_parquet(root / "labels.parquet").assign(flat=2.5)
    table.to_parquet(tmp_path / "flat.parquet")
    with pytest.raises(InputError, match=r"column 'flat' holds one value \(2.5\) in every train row"):
        probe(world, tmp_path, labels=tmp_path / "flat.parquet", target="flat", names=("signal",))
    with pytest.raises(InputError, match=r"--seed -1 is negative"):
        probe(world, tmp_path, names=("signal",), seed=-1)


def test_ridge_cv_without_any_fold_r2_is_refused_not_scored_zero():
    from dogmacache.train.probe import ridge_cv

    x = np.random.default_rng(0).standard_normal((6, 3))
    y = np.array([1.0, 1.0, 2.0, 2.0, 3.0, 3.0])  # each group one value: every held-out fold is constant
    with pytest.raises(InputError, match=r"no cross-validation fold of the train split scored an R²"):
        ridge_cv(x, y, np.array(["a", "a", "b", "b", "c", "c"]), 3)


def test_tsv_ids_keep_their_leading_zeros(world, tmp_path):
    root, caches = world
    table = pd.read_parquet(root / "labels.parquet")
    number = {f"item{i}": f"{i:04d}" for i in range(N_ITEMS)}
    table.assign(window=table["item"].map(number)).to_csv(tmp_path / "labels.tsv", sep="\t", index=False)
    from conftest import write_cache

    signal = np.asarray(__import__("dogmacache.cache", fromlist=["open_cache"]).open_cache(caches["signal"])[:])
    write_cache(tmp_path / "padded.zarr", signal, ids=[number[f"item{i}"] for i in range(N_ITEMS)], shard_items=60)
    config = ProbeConfig(
        caches=(str(tmp_path / "padded.zarr"),),
        labels=str(tmp_path / "labels.tsv"),
        target="y",
        out=str(tmp_path / "o"),
        id_column="window",
    )
    rows = run_probe(config, quiet=True)["rows"]
    assert rows[0]["test_r2"] > 0.9


def test_every_cache_is_checked_before_any_probe_is_fitted(world, tmp_path, monkeypatch):
    from dogmacache.train import probe as module

    fitted = []
    monkeypatch.setattr(module, "fit_probe", lambda *a, **k: fitted.append(1))
    root, caches = world
    with pytest.raises(Exception, match="no cache at"):
        run_probe(
            ProbeConfig(
                caches=(caches["signal"], str(tmp_path / "missing.zarr")),
                labels=str(root / "labels.parquet"),
                target="y",
                out=str(tmp_path / "o"),
                id_column="item",
            )
        )
    assert fitted == []


def test_the_layer_panel_draws_one_line_per_model_revision(tmp_path, monkeypatch):
    """Two caches of one model and layer (a pretrained one and its --random-init twin) are no layer series: the
    panel draws the pretrained revision's layers alone."""
    import matplotlib

    matplotlib.use("Agg")
    from dogmacache.train import plots

    rows = []
    for cache, revision, layer in (("a0", "r1", 0), ("a1", "r1", 1), ("rand", "random-init", 0)):
        row = {"cache": cache, "model": "tiny", "model_revision": revision, "modality": "dna", "pooling": "mean"}
        row.update({"layer": layer, "url": cache, "role": "model", "chosen": cache == "a1"})
        rows.append({**row, "test_r2": 0.5, "validation_r2": 0.4})
        for role in ("permuted labels", "shuffled inputs"):
            rows.append({**row, "role": role, "chosen": False, "test_r2": 0.0, "validation_r2": 0.0})
    drawn = []
    real_plot = plots.plt.Axes.plot

    def plot(self, *args, **kwargs):
        drawn.append((kwargs.get("label"), list(args[0])))
        return real_plot(self, *args, **kwargs)

    monkeypatch.setattr(plots.plt.Axes, "plot", plot)
    plots.probe_scores(pd.DataFrame(rows), "r2", tmp_path / "p.png", "t", chosen_by="cv r2")
    assert [layers for label, layers in drawn if label == "tiny"] == [["0", "1"]]  # one line, the r1 caches'
    assert (tmp_path / "p.png").is_file()


def test_a_random_init_cache_is_a_control_never_chosen(world, tmp_path, capsys):
    """A cache of `embed --random-init` (model_revision random_init:SEED) is a control: the signal cache written as
    one scores best, and is not chosen; a line says it scores above the pick."""
    root, caches = world
    data = open_cache(caches["signal"])[:].astype(np.float32)
    ids = open_cache(caches["signal"]).ids.tolist()
    write_cache(tmp_path / "rand.zarr", data, ids=ids, shard_items=60, model="tiny", layer=0)
    meta = json.loads((tmp_path / "rand.zarr" / "zarr.json").read_text())
    meta["attributes"]["dogmacache"]["model_revision"] = "random_init:0"
    (tmp_path / "rand.zarr" / "zarr.json").write_text(json.dumps(meta))
    result = run_probe(probe_config(world, tmp_path, paths=(caches["noise"], tmp_path / "rand.zarr")))
    rows = {(r["cache"], r["role"]): r for r in result["rows"]}
    assert not rows[("rand", "random-init control")]["chosen"] and rows[("noise", "model")]["chosen"]
    assert "the random-init control rand scores validation r2" in capsys.readouterr().out
    assert (
        result["settings"]["random_init_above_trained"][0].split(",")[1].startswith(" at least the best trained tiny")
    )


def test_one_class_or_value_in_validation_or_test_and_another_modality_are_refused(world, tmp_path):
    root, caches = world
    table = pd.read_parquet(root / "labels.parquet")
    table.loc[table["split"] == "test", "high"] = True
    table.to_parquet(tmp_path / "one.parquet")
    with pytest.raises(InputError, match=r"holds one class \(True, the positive class True\) in every test row; its"):
        probe(world, tmp_path, labels=tmp_path / "one.parquet", target="high")
    table = pd.read_parquet(root / "labels.parquet")
    table.loc[table["split"] == "train", "high"] = False  # train of one class: said before any cache is read
    table.to_parquet(tmp_path / "train_one.parquet")
    with pytest.raises(InputError, match=r"column 'high' holds one class \(False\) in every train row; .*re-split"):
        probe(world, tmp_path, labels=tmp_path / "train_one.parquet", target="high")
    table = pd.read_parquet(root / "labels.parquet")
    table.loc[table["split"] == "validation", "y"] = 1.5
    table.to_parquet(tmp_path / "flat.parquet")
    with pytest.raises(InputError, match=r"holds one value \(1.5\) in every validation row; its R² is undefined"):
        probe(world, tmp_path, labels=tmp_path / "flat.parquet")
    ids = open_cache(caches["signal"]).ids.tolist()
    write_cache(tmp_path / "prot.zarr", np.ones((N_ITEMS, L, D), np.float32), ids=ids, modality="protein")
    with pytest.raises(InputError, match="holds protein embeddings and .* dna; probes stand beside each other"):
        probe(world, tmp_path, paths=(caches["signal"], tmp_path / "prot.zarr"))


def test_a_random_init_control_above_the_pick_is_said_whatever_its_model():
    from dogmacache.train.probe import mark_chosen, random_init_above_trained

    rows = [
        {"cache": "nt", "role": "model", "model": "nt", "validation_r2": 0.10},
        {"cache": "enf-random", "role": "random-init control", "model": "enformer", "validation_r2": 0.50},
    ]
    by = mark_chosen(rows, "regression")
    (line,) = random_init_above_trained(rows, by)
    assert "scores above the pick: validation r2 0.500 against 0.100 (nt); no trained enformer cache" in line
    rows[1]["validation_r2"] = 0.05
    assert random_init_above_trained(rows, by) == []


def test_a_test_split_of_the_negative_class_alone_names_it(world, tmp_path):
    root, _ = world
    table = pd.read_parquet(root / "labels.parquet")
    table["answer"] = np.where(table["high"], "yes", "no")
    table.loc[table["split"] == "test", "answer"] = "no"
    table.to_parquet(tmp_path / "yn.parquet")
    with pytest.raises(InputError, match=r"holds one class \('no', not the positive class 'yes'\) in every test row"):
        probe(world, tmp_path, labels=tmp_path / "yn.parquet", target="answer", positive="yes")


def test_a_kmer_control_over_another_span_of_the_windows_is_refused(demo_run, tmp_path, capsys):
    """The k-mer embedder's --kmer-bins defaults to full-size Enformer's 896 bins: a control of 2 bins reads 256
    of the tiny Enformer's 1,024 scored bases, and beating it would say nothing about the model."""
    recipe = demo_run / "recipe"
    narrow = tmp_path / "dna-kmer-2bins.zarr"
    args = ["embed", "--input", str(recipe / "cdt" / "dna_windows.parquet"), "--modality", "dna", "--model", "kmer"]
    args += ["--genome", str(recipe / "genome.fa"), "--kmer-bins", "2", "--kmer-bin-bp", "128", "--out", str(narrow)]
    assert main(args) == 0
    labels = recipe / "cdt" / "labels.parquet"
    trunk = demo_run / "cache" / "dna-enformer-trunk.zarr"
    probe = ["probe", "--labels", str(labels), "--id-column", "enhancer", "--target", "beta"]
    capsys.readouterr()
    assert main([*probe, "--caches", f"{trunk},{narrow}", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "covers output_span_bp 256 of each window" in err and "1024" in err
    assert "--kmer-bins 8 --kmer-bin-bp 128" in err
    same = demo_run / "cache" / "dna-kmer.zarr"
    assert main([*probe, "--caches", f"{trunk},{same}", "--out", str(tmp_path / "o2")]) == 0


def _twin_world(root, cross: bool):
    """Noise embeddings and noise labels; every training window embedded twice, under a '+' and a '-' id, with one
    input digest (a forward strand policy reads both the same), and validation and test windows once each. With
    `cross`, the '-' twins of 20 training windows are labelled test instead."""
    rng = np.random.default_rng(1)
    n_train, n_other = 100, 40
    data = rng.standard_normal((n_train + n_other, 200)).astype(np.float32)
    digests = rng.integers(0, 256, (n_train + n_other, 32), dtype=np.uint8)
    ids = [f"w{i}:+" for i in range(n_train + n_other)] + [f"w{i}:-" for i in range(n_train)]
    rows = np.r_[np.arange(n_train + n_other), np.arange(n_train)]
    write_cache(root / "twins.zarr", data[rows], ids=ids, shard_items=60, extras={"item_sha256": digests[rows]})
    write_cache(root / "plain.zarr", data[rows], ids=ids, shard_items=60, layer=1)  # the same, without digests
    split = ["train"] * n_train + ["validation"] * 20 + ["test"] * 20 + ["train"] * n_train
    if cross:
        split[n_train + n_other : n_train + n_other + 20] = ["test"] * 20
    y = rng.standard_normal(n_train + n_other)[rows]
    pd.DataFrame({"item": ids, "split": split, "y": y}).to_parquet(root / "twins.parquet")
    return ProbeConfig(
        caches=(str(root / "twins.zarr"),),
        labels=str(root / "twins.parquet"),
        target="y",
        out=str(root / "out"),
        id_column="item",
    )


def test_one_input_under_two_ids_stays_in_one_split_and_one_fold(tmp_path):
    """Pure noise: a probe that fits a window and is cross-validated on its twin under another id reads a cv R² far
    above zero (0.55 here before the folds were grouped by item digest); grouped, it reads none."""
    config = _twin_world(tmp_path / "a", cross=False)
    (row, *_) = run_probe(config, quiet=True)["rows"]
    assert row["role"] == "model" and row["cv_r2"] < 0.1
    # a cache that records no digests, probed beside one that does, is cross-validated over the same folds
    both = dataclasses.replace(config, caches=(str(tmp_path / "a" / "plain.zarr"), *config.caches))
    models = [r for r in run_probe(both, quiet=True)["rows"] if r["role"] == "model"]
    assert [r["cache"] for r in models] == ["plain", "twins"] and models[0]["cv_r2"] == models[1]["cv_r2"] < 0.1
    config = _twin_world(tmp_path / "b", cross=True)
    with pytest.raises(InputError, match=r"items 'w0:\+' \(train\) and 'w0:-' \(test\) are one input"):
        run_probe(config, quiet=True)


def test_the_folds_used_are_recorded_and_caches_of_one_folder_name_are_told_apart(world, tmp_path, capsys):
    """A classification target whose positives sit in 3 training items gets 3 folds, not 5: each row says so. Two
    caches named x.zarr in two folders are named by the folder too, and one cache written two ways is refused."""
    import shutil

    root, caches = world
    labels = pd.read_parquet(root / "labels.parquet")
    train_items = sorted(labels.loc[labels["split"] == "train", "item"].unique())[:3]
    labels["rare"] = labels["item"].isin(train_items) | (labels["split"] != "train") & (labels["y"] > 0)
    labels.to_parquet(tmp_path / "rare.parquet")
    for folder, name in (("a", "signal"), ("b", "noise")):
        (tmp_path / folder).mkdir()
        shutil.copytree(caches[name], tmp_path / folder / "x.zarr")
    paths = [tmp_path / "a" / "x.zarr", tmp_path / "b" / "x.zarr"]
    config = probe_config(world, tmp_path, labels=tmp_path / "rare.parquet", paths=paths, target="rare")
    result = run_probe(config)
    assert {r["cv_folds"] for r in result["rows"]} == {3}
    out = capsys.readouterr().out
    assert "cross-validation ran 3 folds, not --folds 5" in out
    assert [r["cache"] for r in result["rows"] if r["role"] == "model"] == ["a/x", "b/x"]
    with pytest.raises(InputError, match=r"names .* 2 times; give each once"):
        probe_config(world, tmp_path, paths=[paths[0], f"{paths[0]}/"])


def test_a_kmer_control_is_set_beside_a_pick_of_its_own_span_only():
    from dogmacache.train.probe import kmer_above_chosen

    rows = [
        {
            "cache": "wide",
            "role": "model",
            "chosen": True,
            "validation_r2": 0.212,
            "span": "4096 bp / 128 bp bins, forward",
        },
        {
            "cache": "trunk",
            "role": "model",
            "chosen": False,
            "validation_r2": 0.2,
            "span": "1024 bp / 128 bp bins, forward",
        },
        {
            "cache": "kmer",
            "role": "kmer control",
            "chosen": False,
            "validation_r2": 0.372,
            "span": "1024 bp / 128 bp bins, forward",
        },
    ]
    (line,) = kmer_above_chosen(rows, "validation r2")
    assert "covers 1024 bp / 128 bp bins, forward, the pick wide 4096 bp" in line and "not set beside it" in line
    rows[0]["span"] = rows[2]["span"]
    assert "scores above it" in kmer_above_chosen(rows, "validation r2")[0]
    rows[0]["span"] = ""  # an imported model cache records none: compared as before
    assert "scores above it" in kmer_above_chosen(rows, "validation r2")[0]


def test_a_control_beside_an_imported_model_is_not_refused_and_a_strand_mismatch_names_its_flag(demo_run, tmp_path):
    import shutil

    from dogmacache.cache.manifest import MANIFEST_KEY

    def edited(name, change):
        path = tmp_path / f"{name}.zarr"
        shutil.copytree(demo_run / "cache" / f"{name.split('~')[0]}.zarr", path)
        meta = json.loads((path / "zarr.json").read_text())
        change(meta["attributes"][MANIFEST_KEY]["config"])
        (path / "zarr.json").write_text(json.dumps(meta))
        return str(path)

    imported = edited("dna-enformer-trunk~imported", lambda c: [c.pop(k) for k in ("output_span_bp", "bin_bp")])
    kmer = str(demo_run / "cache" / "dna-kmer.zarr")
    labels = demo_run / "recipe" / "cdt" / "labels.parquet"
    config = ProbeConfig(
        caches=(imported, kmer), labels=str(labels), target="beta", out=str(tmp_path / "o"), id_column="enhancer"
    )
    assert {r["role"] for r in run_probe(config, quiet=True)["rows"]} >= {"model", "kmer control"}
    rc = edited("dna-kmer~rc", lambda c: c["options"].update(strand_policy="rc-average"))
    trunk = str(demo_run / "cache" / "dna-enformer-trunk.zarr")
    config = dataclasses.replace(config, caches=(trunk, rc), out=str(tmp_path / "o2"))
    with pytest.raises(InputError, match=r"covers strand_policy 'rc-average' .* with --strand-policy forward$"):
        run_probe(config, quiet=True)
