"""`dogmacache probe`: which cache (model, layer) predicts a target best, by split-aware linear probes.

For each cache named, each labelled row gets its item's embedding (per-position (L, D) caches pooled over positions:
`mean`, or `center`, the middle one or two positions; a `mask` extra limits both to real tokens) and a linear model
is fitted on the training split alone: scikit-learn ridge for a regression target, L2 logistic regression for a
binary one, features z-scored inside the pipeline (so with training statistics only), the regularisation (ridge
`alpha`, logistic `C`) chosen by seeded, grouped k-fold cross-validation over the training rows (rows of one group,
by default one cache item, stay in one fold; `--group-column` names a coarser unit, such as the gene of several
TSS windows). The chosen model is refitted on all training rows and scores validation and test once each. A label
table whose items or groups sit in more than one split is refused: the same input would be fitted and scored.

Beside every cache, in the same call, two controls fitted and scored exactly as the cache is (seeded, `--seed`, each
its own permutations; an item's rows move together, as in `train/controls.py`):
- permuted labels: the training split's items permuted among themselves, so each training item's labels meet
  another item's features, validation and test as they are. One draw of a permutation null of the whole fit: its
  R² sits near or below 0 unless the fit reads validation or test rows, or the score rewards something other than
  the inputs, but one draw strays on a small test split (its correlations most: a fit on permuted labels still
  lines up with the features' main axis, with either sign), so read it by R² and beside the split's size;
- shuffled inputs: the items permuted within every split, test included: whether any score needs the features;
- and the k-mer control, marked: a cache whose manifest names the `kmer` model (`dogmacache embed --model kmer`);
  a call without one says so.
Of the caches in role `model`, the one with the best validation score (the cross-validation score where there are
no validation rows) is marked `chosen`: that is the pick, and its test score the estimate; the others' test scores
are for reference, not for choosing.

Outputs under `--out`: `probe.tsv` (one row per cache and role), `probe.json` (strict JSON: the settings and the
same rows) and `probe.png` (`plots.probe_scores`).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from dogmacache.cache import EmbeddingCache, open_cache
from dogmacache.cache.storage import check_writable, local_path
from dogmacache.contracts.provenance import KMER_MODEL, is_random_init
from dogmacache.contracts.tables import SPLITS, check_one_split, check_splits, read_table
from dogmacache.errors import InputError
from dogmacache.train.metrics import regression_metrics
from dogmacache.train.task import inputs_across_splits, item_keys

POOLINGS = ("mean", "center")
TASKS = ("auto", "regression", "classification")
PERMUTED, SHUFFLED = CONTROLS = ("permuted labels", "shuffled inputs")  # per cache, in this order after it
ALPHAS = tuple(float(a) for a in 10.0 ** np.arange(-2.0, 6.5, 0.5))  # ridge grid
CS = tuple(float(c) for c in 10.0 ** np.arange(-4.0, 3.0))  # logistic regression grid
# per task: the regularisation's name, the cross-validation score, the scores of each split, the score drawn
REGULARISATION = {"regression": "alpha", "classification": "C"}
CV_SCORE = {"regression": "r2", "classification": "roc_auc"}
SCORES = {"regression": ("r2", "pearson", "spearman"), "classification": ("auroc", "auprc")}
HEADLINE = {"regression": "r2", "classification": "auroc"}
BLOCK_ROWS = 256  # cache rows read and pooled at a time


@dataclass(frozen=True)
class ProbeConfig:
    caches: tuple[str, ...]
    labels: str
    target: str
    out: str
    id_column: str = "id"  # the label table's column holding each row's cache item id
    group_column: str | None = None  # the unit kept within one fold and one split (default: the id column)
    split_column: str = "split"  # train / validation / test per row
    pooling: str = "mean"  # over positions of per-position caches: mean | center
    task: str = "auto"  # auto: classification for a target with two values, else regression
    seed: int = 0  # the controls' permutations and the cross-validation folds
    folds: int = 5  # cross-validation folds over the training rows
    positive: str | None = None  # classification: the target value counted as positive (1, True: without it)

    def __post_init__(self) -> None:
        if not self.caches:
            raise InputError("--caches names no cache; give one or more, e.g. --caches a.zarr,b.zarr")
        same = [_same_cache(c) for c in self.caches]
        repeated = [c for c, key in zip(self.caches, same, strict=True) if same.count(key) > 1]
        if repeated:
            raise InputError(
                f"--caches names {repeated[0]!r} {same.count(_same_cache(repeated[0]))} times; give each once"
            )
        if self.pooling not in POOLINGS:
            raise InputError(f"--pooling {self.pooling!r} is not one of {', '.join(POOLINGS)}; pick one of those")
        if self.task not in TASKS:
            raise InputError(f"--task {self.task!r} is not one of {', '.join(TASKS)}; pick one of those")
        if self.folds < 2:
            raise InputError(f"--folds {self.folds} is below 2; cross-validation needs at least two folds")
        if self.seed < 0:
            raise InputError(f"--seed {self.seed} is negative; give a whole number of 0 or more")


def _same_cache(url: str) -> str:
    """What names one cache, however it is written: a local path resolved, a URL without its trailing slash."""
    local = local_path(url)
    return os.path.realpath(local) if local is not None else url.rstrip("/")


@dataclass
class Labels:
    """The labelled rows: item id, group, split and target (0/1 for classification) per row, in the table's order."""

    ids: np.ndarray  # (R,) str
    groups: np.ndarray  # (R,) str: kept within one cross-validation fold (the item, or --group-column's value)
    split: np.ndarray  # (R,) one of SPLITS
    y: np.ndarray  # (R,) float64
    task: str
    positive: Any = None  # classification: the target value counted as 1


def read_labels(config: ProbeConfig) -> Labels:
    path = config.labels
    if Path(path).is_dir():
        raise InputError(f"labels table {path!r} is a folder, not a file; pass --labels a parquet or .tsv file")
    if not Path(path).is_file():
        raise InputError(f"labels table {path!r} does not exist; fix --labels (parquet, or tab-separated .tsv)")
    group_column = config.group_column or config.id_column
    table = read_table(path, text_columns=(config.id_column, group_column))  # ids as written: "0001" stays "0001"
    for column, flag in (
        (config.id_column, "--id-column"),
        (group_column, "--group-column"),
        (config.target, "--target"),
    ):
        if column not in table.columns:
            raise InputError(
                f"{path} has no column {column!r} ({flag}); its columns are {list(table.columns)}: name one of them"
            )
    if config.split_column not in table.columns:
        raise InputError(
            f"{path} has no split column {config.split_column!r}: the probe fits on train rows and scores validation "
            f"and test once, so add a column {config.split_column!r} holding train, validation or test per row (e.g. "
            "the split of each row's item in the recipe's table), or name another with --split-column"
        )
    for column, flag in dict.fromkeys(((config.id_column, "--id-column"), (group_column, "--group-column"))):
        empty = table[column].isna() | (table[column].astype(str).str.strip() == "")
        if empty.any():
            raise InputError(
                f"{path} column {column!r} ({flag}) is empty in {int(empty.sum())} row(s), e.g. row "
                f"{int(np.flatnonzero(empty.to_numpy())[0])}; fill or drop them"
            )
    checked = table.assign(split=table[config.split_column])
    check_splits(checked, path, config.id_column)
    for column in dict.fromkeys((config.id_column, group_column)):
        check_one_split(checked, column, path)
    if group_column != config.id_column:
        in_groups = table.groupby(config.id_column, sort=False)[group_column].nunique()
        if (in_groups > 1).any():
            item = in_groups.index[in_groups > 1][0]
            raise InputError(
                f"{path}: {int((in_groups > 1).sum())} item(s) of {config.id_column!r} sit in more than one "
                f"{group_column!r} group, e.g. {item!r}; a group must hold whole items (give --group-column a "
                "coarser unit, or leave it out)"
            )
    split = table[config.split_column].to_numpy(dtype=str)
    if not (split == "train").any():
        raise InputError(f"{path} has no train rows in {config.split_column!r}; the probe is fitted on them")
    y, task, positive = _target(table[config.target], config.task, f"{path} column {config.target!r}", config.positive)
    if task == "regression" and len(np.unique(y[split == "train"])) < 2:
        raise InputError(
            f"{path} column {config.target!r} holds one value ({y[split == 'train'][0]:g}) in every train row; a "
            "probe needs a target that varies: pick another --target"
        )
    if task == "classification" and len(np.unique(y[split == "train"])) < 2:
        held = table[config.target][split == "train"].iloc[0]
        held = held.item() if isinstance(held, np.generic) else held
        raise InputError(
            f"{path} column {config.target!r} holds one class ({held!r}) in every train row; a classification probe "
            f"is fitted on both classes (positive {positive!r}): re-split so that train holds both, or pick another "
            "--target"
        )
    for name in ("validation", "test"):  # a score there is undefined (NaN): said, not left to a NaN in the table
        values = np.unique(y[split == name])
        if len(values) == 1:
            if task == "classification":
                held = table[config.target][split == name].iloc[0]
                held = held.item() if isinstance(held, np.generic) else held  # True, not np.True_
                what = f"one class ({held!r}, {'the positive' if values[0] else 'not the positive'} class {positive!r})"
            else:
                what = f"one value ({values[0]:g})"
            raise InputError(
                f"{path} column {config.target!r} holds {what} in every {name} row; its "
                f"{'AUROC and AUPRC' if task == 'classification' else 'R²'} is undefined there: re-split so that "
                f"{name} holds both classes (or several values), or drop its {name} rows"
            )
    ids, groups = (table[c].astype(str).to_numpy() for c in (config.id_column, group_column))
    return Labels(ids, groups, split, y, task, positive)


def _target(values: pd.Series, task: str, where: str, positive: str | None = None) -> tuple[np.ndarray, str, Any]:
    """(y, task, positive value): a target with two distinct values is binary under `auto`. Its positive value is
    `positive` (matched as text), else 1 or True where the values are 0/1 or booleans; two other values need
    `positive`: AUPRC depends on which class it counts."""
    if values.isna().any():
        row = int(np.flatnonzero(values.isna().to_numpy())[0])
        raise InputError(f"{where} has {int(values.isna().sum())} empty value(s), e.g. row {row}; drop or fill them")
    distinct = sorted(pd.unique(values).tolist())
    if task == "auto":
        task = "classification" if len(distinct) == 2 or positive is not None else "regression"
    if task == "classification":
        if len(distinct) != 2:
            raise InputError(f"{where} has {len(distinct)} distinct values; a classification probe needs exactly two")
        if positive is not None:
            named = [v for v in distinct if str(v) == str(positive)]
            if not named:
                raise InputError(
                    f"--positive {positive!r} is not a value of {where}, whose values are {distinct}; name one of them"
                )
            chosen = named[0]
        elif {str(v).lower() for v in distinct} in ({"0", "1"}, {"0.0", "1.0"}, {"false", "true"}):
            chosen = next(v for v in distinct if str(v).lower() in ("1", "1.0", "true"))
        else:
            raise InputError(
                f"{where} has the two values {distinct}: name the positive class with --positive (AUPRC is scored for "
                "it, and its share of the test rows is AUPRC's chance level)"
            )
        return (values == chosen).to_numpy(np.float64), task, chosen
    if positive is not None:
        raise InputError(f"--positive {positive!r} is for a two-valued target; {where} is probed by regression")
    numeric = pd.to_numeric(values, errors="coerce").to_numpy(np.float64)
    if not np.isfinite(numeric).all():
        row = int(np.flatnonzero(~np.isfinite(numeric))[0])
        raise InputError(
            f"{where} row {row} holds {values.iloc[row]!r}, not a finite number; a regression probe needs numbers "
            "(or --task classification for a two-valued target)"
        )
    return numeric, task, None


def item_rows(cache: EmbeddingCache, ids: np.ndarray, id_column: str) -> np.ndarray:
    """The cache row of each labelled row's item; an id the cache lacks is one line naming it and the fix."""
    known = set(cache.ids.tolist())
    missing = [i for i in dict.fromkeys(ids.tolist()) if i not in known]
    if missing:
        raise InputError(
            f"{len(missing)} item id(s) of the labels' {id_column!r} column are not in {cache.url}, e.g. "
            f"{missing[0]!r} (the cache's ids look like {cache.ids[:2].tolist()}); name the column that holds the "
            "cache's ids with --id-column, or embed the labelled items into the cache"
        )
    return cache.rows_of(ids)


def pooled_features(cache: EmbeddingCache, rows: np.ndarray, pooling: str) -> tuple[np.ndarray, str]:
    """(float64 features (len(rows), D), the pooling written in the outputs): per-position caches pooled over their
    positions (`mask` extra: real tokens only), read BLOCK_ROWS rows at a time; pooled caches as stored."""
    if len(cache.item_shape) == 1:
        return cache.read_rows(rows, dtype=np.float32).astype(np.float64), f"cache:{cache.manifest.pooling}"
    mask = np.asarray(cache.extra("mask")[:], bool) if "mask" in cache.manifest.extra_arrays else None
    out = np.empty((len(rows), cache.item_shape[-1]), dtype=np.float64)
    for start in range(0, len(rows), BLOCK_ROWS):
        block_rows = rows[start : start + BLOCK_ROWS]
        block = cache.read_rows(block_rows, dtype=np.float32).astype(np.float64)
        real = np.ones(block.shape[:2], bool) if mask is None else mask[block_rows]
        weights = real.astype(np.float64) if pooling == "mean" else _center_weights(real)
        out[start : start + len(block_rows)] = np.einsum("bl,bld->bd", weights, block) / np.maximum(
            weights.sum(1, keepdims=True), 1.0
        )
    return out, pooling


def _center_weights(real: np.ndarray) -> np.ndarray:
    """One-hot weights (B, L) on the middle real position of each row, or the middle two when their count is even."""
    weights = np.zeros(real.shape, dtype=np.float64)
    for b, positions in enumerate(np.flatnonzero(r) for r in real):
        if len(positions):
            weights[b, positions[[(len(positions) - 1) // 2, len(positions) // 2]]] = 1.0
    return weights


def shuffled_items(
    item: np.ndarray, split: np.ndarray, seed: int, splits: tuple[str, ...] = SPLITS, stream: int = 0
) -> np.ndarray:
    """Each row's item replaced by a seeded permutation of the items of its split (one per split), in `splits`
    only; the rows of other splits keep theirs. `stream` draws other permutations from the same seed."""
    out = item.copy()
    for k, name in enumerate(SPLITS):
        rows = split == name
        if name not in splits:
            continue
        unique, inverse = np.unique(item[rows], return_inverse=True)
        rng = np.random.default_rng([seed, k] if stream == 0 else [seed, stream, k])
        out[rows] = unique[rng.permutation(len(unique))][inverse]
    return out


def fit_probe(
    x: np.ndarray, labels: Labels, seed: int, folds: int
) -> tuple[float, float, dict[str, dict[str, float]], int]:
    """(chosen regularisation, its cross-validation score, {split: scores}, the folds used): the grid searched by
    seeded k-fold cross-validation over the training rows alone, grouped by `labels.groups` (no more folds than
    training groups, nor, for a classification target, than groups holding each class), the chosen model refitted
    on them, validation and test scored."""
    from sklearn.exceptions import FitFailedWarning, UndefinedMetricWarning
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train = labels.split == "train"
    groups = labels.groups
    n_groups = len(np.unique(groups[train]))
    if n_groups < 2:
        raise InputError(f"the train split holds {n_groups} group of items; cross-validation needs at least two")
    classify = labels.task == "classification"
    k = min(folds, n_groups)
    if classify:
        # a fold without a positive (or a negative) has no AUROC: no more folds than groups holding each class
        for value, name in ((1.0, "positive"), (0.0, "negative")):
            holding = len(np.unique(groups[train & (labels.y == value)]))
            if holding < 2:
                raise InputError(
                    f"the train split's {name} rows sit in {holding} group(s) of items; cross-validation needs each "
                    "class in at least two: label more train rows of that class"
                )
            k = min(k, holding)
        cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
        search = GridSearchCV(pipeline, {"logisticregression__C": CS}, scoring=CV_SCORE[labels.task], cv=cv)
        with warnings.catch_warnings():  # a fold left with one class warns per fit; said once below instead
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            warnings.simplefilter("ignore", FitFailedWarning)
            warnings.filterwarnings(
                "ignore", message=r"(?s).*(only one class|Only one class|test scores are non-finite)"
            )
            search.fit(x[train], labels.y[train], groups=groups[train])
        if not np.isfinite(search.best_score_):
            raise InputError(
                f"a cross-validation fold of the train split holds one class only ({int(labels.y[train].sum())} of "
                f"{int(train.sum())} rows positive, {k} folds); use fewer --folds or label more train rows"
            )
        chosen, cv_score, model = float(search.best_params_["logisticregression__C"]), search.best_score_, search
    else:
        chosen, cv_score = ridge_cv(x[train], labels.y[train], groups[train], k, seed)
        model = make_pipeline(StandardScaler(), Ridge(alpha=chosen)).fit(x[train], labels.y[train])
    scores = {}
    for name in ("validation", "test"):
        rows = labels.split == name
        if classify:
            predicted = model.predict_proba(x[rows])[:, 1] if rows.any() else np.zeros(0)
            scores[name] = classification_scores(predicted, labels.y[rows])
        else:
            predicted = model.predict(x[rows]) if rows.any() else np.zeros(0)
            scores[name] = {k: v for k, v in regression_metrics(predicted, labels.y[rows]).items() if k != "mse"}
    return chosen, float(cv_score), scores, k


def ridge_cv(x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int, seed: int = 0) -> tuple[float, float]:
    """(alpha, its mean R² over folds): scikit-learn's GroupKFold (groups shuffled with `seed`) over the rows given
    (the training split), in each
    fold features z-scored with the fold's fitting rows and ridge with an intercept solved for every alpha of
    ALPHAS at once from one SVD (the solution `Ridge` finds, without one fit per alpha); the first best alpha."""
    from sklearn.model_selection import GroupKFold
    from sklearn.preprocessing import StandardScaler

    alphas = np.asarray(ALPHAS)
    r2 = np.zeros((folds, len(alphas)))
    for f, (fit, held) in enumerate(GroupKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, y, groups)):
        scaler = StandardScaler().fit(x[fit])
        u, s, vt = np.linalg.svd(scaler.transform(x[fit]), full_matrices=False)
        offset = y[fit].mean()
        coef = vt.T @ (s[:, None] / (s[:, None] ** 2 + alphas) * (u.T @ (y[fit] - offset))[:, None])  # (D, alphas)
        predicted = scaler.transform(x[held]) @ coef + offset
        sst = np.sum((y[held] - y[held].mean()) ** 2)
        r2[f] = 1.0 - np.sum((y[held, None] - predicted) ** 2, axis=0) / (sst if sst > 0 else np.nan)
    if not np.isfinite(r2).any():
        raise InputError(
            f"no cross-validation fold of the train split scored an R² (each of the {folds} folds' held-out rows "
            "hold one target value); use fewer --folds, a coarser --group-column, or label more train rows"
        )
    mean = np.nanmean(r2, axis=0)
    best = int(np.argmax(mean))
    return float(alphas[best]), float(mean[best])


def classification_scores(predicted: np.ndarray, observed: np.ndarray) -> dict[str, float]:
    """AUROC and AUPRC (average precision); NaN where the split holds one class only."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    both = len(np.unique(observed)) == 2
    return {
        "n": int(len(observed)),
        "auroc": float(roc_auc_score(observed, predicted)) if both else math.nan,
        "auprc": float(average_precision_score(observed, predicted)) if both else math.nan,
    }


def check_inputs_in_one_split(cache: EmbeddingCache, rows: np.ndarray, labels: Labels) -> None:
    """Two ids whose items the model saw as the same input (one window under '+' and '-' ids with a forward strand
    policy, one protein under two names) in two splits would be fitted and scored on one input: InputError naming
    both (`train.task.inputs_across_splits`, the trainer's check). Checked where the cache records item digests."""
    keys = item_keys(cache, rows)
    found = None if keys is None else inputs_across_splits(keys, labels.split, labels.ids)
    if found:
        n, ((a, sa), (b, sb)) = found
        raise InputError(
            f"{cache.url}: items {a!r} ({sa}) and {b!r} ({sb}) are one input to the model (the same item_sha256), in "
            f"two splits ({n} such inputs): put the ids of one input in one split"
        )


def input_groups(caches: list[tuple[EmbeddingCache, np.ndarray]], labels: Labels) -> np.ndarray:
    """(R,) cross-validation groups: `labels.groups` joined wherever two of them share an input (item digest) in
    any cache of the call, so that no input is fitted in one fold and scored in another, and every cache (a model
    and its controls alike) is cross-validated over the same folds."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.get(x, x) != x:
            parent[x] = parent.get(parent[x], parent[x])
            x = parent[x]
        return x

    for n, (cache, rows) in enumerate(caches):
        keys = item_keys(cache, rows)
        if keys is None:
            continue
        for group, key in zip(labels.groups, keys, strict=True):
            a, b = root("g:" + group), root(f"k{n}:" + key)
            if a != b:
                parent[b] = a
    return np.array([root("g:" + g).removeprefix("g:") for g in labels.groups])


def opened(url: str, labels: Labels, config: ProbeConfig) -> tuple[EmbeddingCache, np.ndarray]:
    """The cache and each labelled row's row in it, checked before any probe is fitted; a cache stored pooled under
    a --pooling it cannot take is said in a line."""
    cache = open_cache(url)
    rows = item_rows(cache, labels.ids, config.id_column)
    check_inputs_in_one_split(cache, rows, labels)
    if len(cache.item_shape) == 1 and config.pooling != "mean":
        print(
            f"{url} is stored pooled ({cache.manifest.pooling}): --pooling {config.pooling} does not apply to it, "
            f"and its probe reads the stored {cache.manifest.pooling} (the tables' pooling column says so)"
        )
    return cache, rows


def cache_role(m: Any) -> str:
    """A cache's role in the table: the k-mer control, a random-init control (the model's architecture with random
    weights), or a model; only a model may be chosen."""
    if m.model == KMER_MODEL:
        return "kmer control"
    return "random-init control" if is_random_init(m.model_revision) else "model"


def same_inputs(caches: list[tuple[EmbeddingCache, np.ndarray]], quiet: bool = False) -> None:
    """The caches stand beside each other only over the same items: another modality is refused, and caches embedded
    from other input tables are said in a line (a superset table is legitimate; a control of other windows is not)."""
    first = caches[0][0]
    for cache, _ in caches[1:]:
        if cache.manifest.modality != first.manifest.modality:
            raise InputError(
                f"{cache.url} holds {cache.manifest.modality} embeddings and {first.url} {first.manifest.modality}; "
                "probes stand beside each other over the same items: pass caches of one modality"
            )
    check_same_span(caches, quiet)
    digests = {c.manifest.input_digest for c, _ in caches}
    if len(digests) > 1 and not quiet:
        print(
            f"the {len(caches)} caches were embedded from {len(digests)} different input tables (input digests); each "
            "covers the labels' ids, but check that a control holds the same windows as the models, not others"
        )


SPAN_KEYS = ("output_span_bp", "bin_bp")  # what of a DNA window a cache's positions cover, in its manifest config
SPAN_OPTIONS = ("strand_policy",)  # and how a window's strand is read, in its options


def span_of(cache: EmbeddingCache) -> dict[str, Any]:
    """What of each DNA window `cache`'s rows describe: the bases its positions cover, per position, and the strand
    policy; {} for another modality, or a cache that records no span (one `cache import-h5` wrote)."""
    if cache.manifest.modality != "dna":
        return {}
    config = cache.manifest.config or {}
    if any(config.get(k) is None for k in SPAN_KEYS):
        return {}
    options = config.get("options") or {}
    return {**{k: config.get(k) for k in SPAN_KEYS}, **{k: options.get(k) for k in SPAN_OPTIONS}}


def span_label(cache: EmbeddingCache) -> str:
    """`span_of` in words, for the table ("" where unknown): e.g. "1024 bp / 128 bp bins, forward"."""
    span = span_of(cache)
    if not span:
        return ""
    return f"{span['output_span_bp']} bp / {span['bin_bp']} bp bins, {span.get('strand_policy') or 'forward'}"


def check_same_span(caches: list[tuple[EmbeddingCache, np.ndarray]], quiet: bool = False) -> None:
    """A control (k-mer, random-init) stands beside the models only over the same stretch of each window: one of
    another span reads other bases (the k-mer embedder's --kmer-bins defaults to full-size Enformer's 896 bins), and
    beating or losing to it says nothing about the model. InputError naming both and the flags to use, where no
    model of the call covers the control's span; a line where no model records its span."""
    dna_models = [c for c, _ in caches if cache_role(c.manifest) == "model" and c.manifest.modality == "dna"]
    controls = [c for c, _ in caches if cache_role(c.manifest) != "model" and span_of(c)]
    models = [c for c in dna_models if span_of(c)]
    if not models:
        if controls and dna_models and not quiet:
            print(
                f"{dna_models[0].url} records no span of its windows (an imported cache): whether the controls "
                "cover the bases it read is not checked"
            )
        return
    spans = [span_of(m) for m in models]
    for cache in controls:
        have = span_of(cache)
        if have in spans:
            continue  # models of other architectures may each read their own span; rows are compared by span
        reference, wanted = models[0], spans[0]
        differ = [k for k in wanted if have.get(k) != wanted[k]]
        fixes = []
        if cache_role(cache.manifest) == "kmer control" and {"output_span_bp", "bin_bp"} & set(differ):
            fixes.append(f"--kmer-bins {wanted['output_span_bp'] // wanted['bin_bp']} --kmer-bin-bp {wanted['bin_bp']}")
        if "strand_policy" in differ and wanted.get("strand_policy"):
            fixes.append(f"--strand-policy {wanted['strand_policy']}")
        fix = f"embed the control with {' '.join(fixes)}" if fixes else "embed the control with the model's settings"
        key = differ[0]
        raise InputError(
            f"{cache.url} covers {key} {have.get(key)!r} of each window and {reference.url} {wanted[key]!r}: a "
            f"control stands beside a model only over the same bases; {fix}"
        )


def cache_names(urls: list[str]) -> list[str]:
    """The table's name of each cache: its folder's name without .zarr, or where two share that, the shortest
    ending of their paths that tells them apart (`a/x`, `b/x`)."""
    parts = [[p for p in url.rstrip("/").removesuffix(".zarr").split("/") if p] for url in urls]
    names = []
    for mine in parts:
        depth = 1
        while depth < len(mine) and sum(other[-depth:] == mine[-depth:] for other in parts) > 1:
            depth += 1
        names.append("/".join(mine[-depth:]))
    return names


def probe_cache(
    cache: EmbeddingCache, rows: np.ndarray, labels: Labels, config: ProbeConfig, name: str | None = None
) -> list[dict[str, Any]]:
    """The cache's row (role model or kmer control) and its CONTROLS' rows, in that order; `name` the table's name
    for it (default: its folder's, without .zarr)."""
    m = cache.manifest
    unique, inverse = np.unique(rows, return_inverse=True)
    features, pooling = pooled_features(cache, unique, config.pooling)
    name = name or Path(cache.url.rstrip("/")).name.removesuffix(".zarr")
    base = {"cache": name, "model": m.model, "layer": m.layer, "modality": m.modality, "pooling": pooling}
    base["model_revision"] = m.model_revision  # a --random-init control of one model is another revision
    base["span"] = span_label(cache)  # DNA: the bases each row covers; controls are set beside models of theirs
    base.update({"task": labels.task, "target": config.target})
    base.update({f"n_{s}": int((labels.split == s).sum()) for s in SPLITS})
    out = []
    controls = {  # independent draws: the shuffled-input control's permutations are not the permuted labels'
        PERMUTED: shuffled_items(inverse, labels.split, config.seed, splits=("train",), stream=1),
        SHUFFLED: shuffled_items(inverse, labels.split, config.seed),
    }
    for role, items in ((cache_role(m), inverse), *controls.items()):
        chosen, cv, scores, k = fit_probe(features[items], labels, config.seed, config.folds)
        row = {**base, "role": role, REGULARISATION[labels.task]: chosen, f"cv_{CV_SCORE[labels.task]}": cv}
        row["cv_folds"] = k  # below --folds where the training groups (of a class) are fewer
        for split, values in scores.items():
            row.update({f"{split}_{k}": values[k] for k in SCORES[labels.task]})
        out.append({**row, "url": cache.url})
    return out


COLUMNS = (
    "cache",
    "role",
    "chosen",
    "model",
    "layer",
    "modality",
    "pooling",
    "task",
    "target",
    "n_train",
    "n_validation",
)


def run_probe(config: ProbeConfig, quiet: bool = False) -> dict[str, Any]:
    """Probe every cache, write probe.tsv / probe.json / probe.png under `config.out`, print the table; returns
    {"settings", "rows", "files"}."""
    from dogmacache.train.plots import probe_scores

    check_writable(config.out, "--out", "no probe was fitted")
    labels = read_labels(config)
    caches = [opened(url, labels, config) for url in config.caches]  # every cache checked before any fit
    same_inputs(caches, quiet)
    labels = replace(labels, groups=input_groups(caches, labels))  # one input's ids in one fold, in every cache
    names = cache_names([cache.url for cache, _ in caches])
    rows = [
        row for (c, items), n in zip(caches, names, strict=True) for row in probe_cache(c, items, labels, config, n)
    ]
    fewer = sorted({r["cv_folds"] for r in rows if r["cv_folds"] < config.folds})
    if fewer and not quiet:
        print(
            f"cross-validation ran {', '.join(map(str, fewer))} folds, not --folds {config.folds}: the train split "
            "holds fewer groups of items (of a class, for a classification target); cv_folds per row in probe.tsv"
        )
    chosen_by = mark_chosen(rows, labels.task)
    table = pd.DataFrame(rows)
    table = table[[*COLUMNS, *[c for c in table.columns if c not in COLUMNS]]]
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    kmer = [r["cache"] for r in rows if r["role"] == "kmer control"]
    settings = {**asdict(config), "caches": list(config.caches), "task": labels.task, "positive": labels.positive}
    if labels.task == "classification":  # AUPRC's chance level
        test = labels.split == "test"
        settings["test_positive_share"] = float(labels.y[test].mean()) if test.any() else None
    settings.update({"grid": list(ALPHAS if labels.task == "regression" else CS), "cv_score": CV_SCORE[labels.task]})
    settings.update({"group_column": config.group_column or config.id_column, "chosen_by": chosen_by})
    settings.update({"kmer_controls": kmer, "kmer_above_chosen": kmer_above_chosen(rows, chosen_by)})
    settings["random_init_above_trained"] = random_init_above_trained(rows, chosen_by)
    result = {"settings": settings, "rows": rows}
    files = {"tsv": out / "probe.tsv", "json": out / "probe.json", "png": out / "probe.png"}
    staged = {k: path.with_name(f".{path.name}.partial{path.suffix}") for k, path in files.items()}
    table.to_csv(staged["tsv"], sep="\t", index=False)
    staged["json"].write_text(json.dumps(_strict(result), indent=2, allow_nan=False) + "\n")
    pooling = ", ".join(dict.fromkeys(table["pooling"]))
    probe_scores(
        table, HEADLINE[labels.task], staged["png"], title=f"{config.target} (pooling: {pooling})", chosen_by=chosen_by
    )
    for k, path in files.items():  # all three written before any replaces an earlier run's
        os.replace(staged[k], path)
    if not quiet:
        print_probe(table, labels.task)
        print(f"pooling over positions: {pooling} (each row's in probe.tsv's pooling column)")
        if labels.task == "classification":
            share = settings["test_positive_share"]
            print(
                f"positive class: {labels.positive!r}"
                + (
                    f", {share:.1%} of the test rows (AUPRC's chance level; AUROC's is 0.5)"
                    if share is not None
                    else ""
                )
            )
        if not kmer:
            print(
                "no k-mer control among --caches: embed the same items with `dogmacache embed --model kmer` and "
                "probe it beside them, so that the models stand beside plain sequence features"
            )
        if chosen_by is None:
            print("no cache of role model among --caches: nothing chosen")
        else:
            print(f"chosen by {chosen_by}: " + ", ".join(r["cache"] for r in rows if r["chosen"]))
            for line in [*settings["kmer_above_chosen"], *settings["random_init_above_trained"]]:
                print(line)
        print(f"wrote {', '.join(str(p) for p in files.values())}")
    return {**result, "files": {k: str(v) for k, v in files.items()}}


def mark_chosen(rows: list[dict[str, Any]], task: str) -> str | None:
    """Mark (`chosen`) the row of role `model` with the best validation score, or the best cross-validation score
    where no row has one (no validation rows); returns what it chose by, e.g. "validation r2" (None: no cache of
    role model, nothing chosen)."""
    models = [r for r in rows if r["role"] == "model"]
    for r in rows:
        r["chosen"] = False
    if not models:
        return None
    by = f"validation_{HEADLINE[task]}"
    if not any(math.isfinite(r[by]) for r in models):
        by = f"cv_{CV_SCORE[task]}"
    best = max(models, key=lambda r: r[by] if math.isfinite(r[by]) else -math.inf, default=None)
    for r in rows:
        r["chosen"] = r is best
    return by.replace("_", " ")


def kmer_above_chosen(rows: list[dict[str, Any]], chosen_by: str | None) -> list[str]:
    """One line per k-mer control that beats the chosen model cache on the score it was chosen by: the chosen
    cache is the best model, not the best predictor, and here k-mer frequencies alone predict more."""
    if chosen_by is None:
        return []
    key = chosen_by.replace(" ", "_")
    chosen = next(r for r in rows if r["chosen"])
    lines = []
    for r in rows:
        if r["role"] != "kmer control" or not math.isfinite(r[key]):
            continue
        if not same_span(r, chosen):
            lines.append(
                f"the k-mer control {r['cache']} covers {r['span']}, the pick {chosen['cache']} {chosen['span']}: "
                "not set beside it; embed a k-mer control of the pick's span to compare them"
            )
        elif r[key] > chosen[key]:
            lines.append(
                f"the k-mer control {r['cache']} scores above it: {chosen_by} {r[key]:.3f} against {chosen[key]:.3f} "
                f"({chosen['cache']}): on this target the model's features predict less than k-mer frequencies alone"
            )
    return lines


def same_span(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two table rows cover the same bases of each window (true where either records no span)."""
    return not a.get("span") or not b.get("span") or a["span"] == b["span"]


def random_init_above_trained(rows: list[dict[str, Any]], chosen_by: str | None) -> list[str]:
    """One line per random-init control that scores at least as high as the best trained cache of its own model (on
    the score the pick was made by): that model's training added nothing this probe can read."""
    if chosen_by is None:
        return []
    key = chosen_by.replace(" ", "_")
    chosen = next((t for t in rows if t["chosen"]), None)
    lines = []
    for r in rows:
        if r["role"] != "random-init control" or not math.isfinite(r[key]):
            continue
        trained = [t for t in rows if t["role"] == "model" and t["model"] == r["model"] and math.isfinite(t[key])]
        best = max(trained, key=lambda t: t[key], default=None)
        if best is not None and r[key] >= best[key]:
            lines.append(
                f"the random-init control {r['cache']} scores {chosen_by} {r[key]:.3f}, at least the best trained "
                f"{r['model']} cache's {best[key]:.3f} ({best['cache']}): the same architecture with random weights "
                "predicts as much here"
            )
        if chosen is not None and chosen is not best and same_span(r, chosen) and r[key] > chosen[key]:
            lines.append(
                f"the random-init control {r['cache']} scores above the pick: {chosen_by} {r[key]:.3f} against "
                f"{chosen[key]:.3f} ({chosen['cache']})"
                + ("" if trained else f"; no trained {r['model']} cache was probed beside it")
            )
    return lines


def print_probe(table: pd.DataFrame, task: str) -> None:
    """A small table: one line per cache and role with its chosen regularisation and validation/test scores."""
    reg = REGULARISATION[task]
    scores = [f"{s}_{k}" for s in ("validation", "test") for k in SCORES[task]]
    heads = [s.replace("validation_", "val_") for s in scores]
    width = max(26, 3 + max((len(str(c)) for c in table["cache"]), default=0))
    layer = max(8, 1 + max((len(str(x)) for x in table["layer"]), default=0))
    print(
        f"{'cache':<{width}}{'role':<20}{'layer':>{layer}}{reg:>9}"
        + "".join(f"{h:>14}" for h in heads)
        + f"{'n_test':>8}"
    )
    for _, r in table.iterrows():
        cache = ("* " if r["chosen"] else "  ") + str(r["cache"])
        print(
            f"{cache:<{width}}{r['role']:<20}{str(r['layer']):>{layer}}{r[reg]:>9.3g}"
            + "".join(f"{r[s]:>14.3f}" for s in scores)
            + f"{r['n_test']:>8}"
        )


def _strict(value: Any) -> Any:
    """NaN and infinities as null, numpy scalars as Python ones (strict JSON)."""
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    return None if isinstance(value, float) and not math.isfinite(value) else value
