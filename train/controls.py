"""Controls that can refute a result, run by the loop for every task in the same call as the model and its
baselines (`[train] controls`, `[train] control_caches`), scored on the same test split once:

- `permuted_labels`, the null: the same model trained and selected on labels permuted within the training and
  validation splits (the test split keeps its real targets); every column a loss reads as a target moves
  together (the task's `target_columns`: CDBridge's contrastive protein too). A model that scores well on test
  here reads something other than its inputs.
- `shuffled_inputs`: each input cache's rows permuted across the items of each split (the task's
  `input_columns`; an item keeps one row, so the marginal distribution and any grouping of examples by item stay,
  while the item-embedding link is broken). A model that scores as well as here does not use the embeddings.
- `control_caches`: the same task with a [data] cache key pointing at another cache, e.g. the k-mer features
  of `dogmacache embed --model kmer` in place of a foundation model's: does the foundation model help?

Each is another task instance on its own `TaskData`, so the model's own run is untouched.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from dogmacache.errors import DogmaError, InputError
from dogmacache.train.config import build_section, parse_overrides
from dogmacache.train.task import Task, TaskData, present_rows

NULL_STREAM = 1001  # the tag of the permutation null's further draws (`null_rng`)


def _salt(data: TaskData) -> list[int]:
    """The run's examples as numbers (its split digests), so that each fold of a leave-tissues-out run draws its
    own null."""
    return [int(d.split(":")[-1][:8], 16) for d in (data.split_digests() or {}).values()]


def null_rng(seed: int, draw: int, data: TaskData, key: list[int]) -> np.random.Generator:
    """The generator of the permutation null's `draw` for one table (`key`). Draw 0 is the run's plain null, on
    the stream [seed, 1, *key] (numpy's SeedSequence reads trailing zeros as absent, so that stream is also the
    loop's epoch-1 batch order, which moves no label onto its own input). Each further draw has a stream of its
    own: tagged, salted with the run's examples (`_salt`) and with the key's length, so that no trailing zero can
    join two."""
    if draw == 0:
        return np.random.default_rng([seed, 1, *key])
    return np.random.default_rng([seed, NULL_STREAM, *_salt(data), draw, len(key), *key])


def null_seed(seed: int, draw: int, data: TaskData) -> int:
    """The [train] seed a further draw of the null trains with (its initial weights, batch order and dropout), so
    that the draws' spread holds the training's randomness as well as the labels'; draw 0 trains with the run's."""
    if draw == 0:
        return seed
    return int(np.random.SeedSequence([seed, NULL_STREAM, *_salt(data), draw]).generate_state(1)[0])


def null_config(config: Any, draw: int, data: TaskData) -> Any:
    """The run configuration the null's `draw` trains with: the run's, without ablations, at `null_seed`."""
    plain = without_ablations(config)
    train = dataclasses.replace(plain.train, seed=null_seed(plain.train.seed, draw, data))
    return dataclasses.replace(plain, train=train)


def null_names(draws: int) -> list[str]:
    """The permutation null's model names: control_permuted_labels, then control_permuted_labels_2 ... _<draws>."""
    return ["control_permuted_labels", *(f"control_permuted_labels_{k + 1}" for k in range(1, draws))]


def permuted_labels(data: TaskData, seed: int, columns: tuple[str, ...] = ("target",), draw: int = 0) -> TaskData:
    """The training and validation splits' target `columns` permuted across each split's rows, all with one seeded
    permutation per split (a row's targets move together); the test split as it is. Validation is permuted too: it
    chooses the checkpoint, and a checkpoint chosen on real labels carries them into the null (measured on the
    demo's CDBridge, whose frozen stage-1 features are informative: Spearman up to 0.43 with real validation).
    A `variants` table of those splits is permuted across its own rows likewise. `draw`: which of the null's
    permutations ([train] null_draws; `null_rng`)."""

    def permuted(table: pd.DataFrame, key: list[int]) -> pd.DataFrame:
        order = null_rng(seed, draw, data, key).permutation(len(table))
        moved = {}
        for column in columns:
            values = table[column].to_numpy()[order]
            moved[column] = pd.Series(list(values) if values.dtype == object else values, index=table.index)
        return table.assign(**moved)

    splits = dict(data.splits)
    variants = dict(data.variants)
    for k, name in enumerate(("train", "validation")):
        splits[name] = permuted(splits[name], [k])
        for j, (variant, (split, table)) in enumerate(sorted(data.variants.items())):
            if split == name:
                variants[variant] = (split, permuted(table, [k, 1 + j]))
    return dataclasses.replace(data, splits=splits, variants=variants)


def shuffled_inputs(data: TaskData, columns: tuple[str, ...], seed: int) -> TaskData:
    """Within each split, each `<modality>_row` column remapped by a seeded permutation of the rows that split's
    items use (only rows flagged present, where a `<modality>_present` column says which); a `variants` table of
    the split is remapped with the same permutation (drawn over the rows either uses)."""
    if not columns:
        raise InputError("this task declares no input columns to shuffle; drop shuffled_inputs from [train] controls")
    absent = [c for c in columns if not any(c in t.columns for t in data.splits.values())]
    if absent:  # shuffling nothing, the control would be the model itself
        raise InputError(
            f"shuffled_inputs: the task's input column {absent[0]!r} is in none of its split tables (they have "
            f"{sorted(set().union(*(t.columns for t in data.splits.values())))[:8]}); the task's input_columns "
            "must name the row columns its data holds"
        )
    splits, variants = {}, dict(data.variants)
    for k, (name, table) in enumerate(data.splits.items()):
        names = [v for v, (split, _) in sorted(data.variants.items()) if split == name]
        tables = [table.copy(), *(data.variants[v][1].copy() for v in names)]
        for j, column in enumerate(columns):
            present = [(t, present_rows(t, column)) for t in tables if column in t.columns]
            if not present:
                continue
            used = np.unique(np.concatenate([t[column].to_numpy()[p] for t, p in present]))
            moved = np.random.default_rng([seed, 2, k, j]).permutation(used)
            mapping = dict(zip(used.tolist(), moved.tolist(), strict=True))
            for t, p in present:
                t.loc[p, column] = [mapping[r] for r in t[column].to_numpy()[p].tolist()]
        splits[name] = tables[0]
        variants.update({v: (name, t) for v, t in zip(names, tables[1:], strict=True)})
    return dataclasses.replace(data, splits=splits, variants=variants)


# what a control_caches entry may set beside its cache: the preprocessing and optimisation suited to other features
# (a k-mer cache trained with the settings chosen for a foundation model's embeddings overfits): [data] keys that
# scale or batch what is read (`standardize*`, `eval_batch`, `eval_enhancers`, `preload_bytes`) and [train] keys
# but those below; never the model, which examples, labels, tissues or caches it reads, the seed or the controls
CONTROL_FIXED = ("controls", "control_caches", "null_draws", "seed", "device", "precision")
CONTROL_DATA = ("eval_batch", "eval_enhancers", "preload_bytes")


def _settable(dotted: str) -> bool:
    section, _, field = dotted.partition(".")
    if section == "train":
        return bool(field) and field not in CONTROL_FIXED
    return section == "data" and (field.startswith("standardize") or field in CONTROL_DATA)


def cache_swap(entry: str) -> tuple[str, str, dict[str, Any]]:
    """`KEY=PATH[; SECTION.FIELD=VALUE ...]` of [train] control_caches -> (KEY, PATH, {"SECTION.FIELD": value});
    `;` separates the settings, so PATH holds none."""
    first, *rest = [part.strip() for part in entry.split(";")]
    key, sep, path = first.partition("=")
    if not sep or not key.strip() or not path.strip():
        raise InputError(
            f"[train] control_caches entry {entry!r} is not KEY=PATH[; SECTION.FIELD=VALUE ...] (e.g. "
            "dna_cache=caches/kmer.zarr, or 'dna_cache=caches/kmer.zarr; data.standardize_dna=false; train.lr=0.001')"
        )
    settings: dict[str, Any] = {}
    for part in filter(None, rest):
        dotted, sep, _ = part.partition("=")
        dotted = dotted.strip()
        if not sep or not _settable(dotted):
            raise InputError(
                f"[train] control_caches entry {entry!r}: {part!r} is no setting a cache control may have: "
                f"data.standardize*, data.{', data.'.join(CONTROL_DATA)} or train.FIELD other than "
                f"{', '.join(CONTROL_FIXED)} (';' separates settings, so a path holds none)"
            )
        if dotted in settings:
            raise InputError(f"[train] control_caches entry {entry!r} sets {dotted} twice; give it once")
        settings.update(parse_overrides([part]))  # as --set reads a value: JSON, else text
    return key.strip(), path.strip(), settings


def cache_control_config(plain: Any, key: str, path: str, settings: dict[str, Any], name: str) -> Any:
    """The run's configuration (without ablations) with [data] KEY = PATH and the entry's settings, each checked as
    `--set` checks a value (its section's type and range)."""
    config = dataclasses.replace(plain, data=dataclasses.replace(plain.data, **{key: path}))
    for dotted, value in settings.items():
        section_name, field = dotted.split(".", 1)
        section = getattr(config, section_name)
        where = f"[train] control_caches {key}={path} (the control {name})"
        checked = getattr(build_section(type(section), {field: value}, section_name, where=where), field)
        config = dataclasses.replace(config, **{section_name: dataclasses.replace(section, **{field: checked})})
    return config


def control_configs(config: Any, data: TaskData) -> dict[str, tuple[str, Any, Any]]:
    """name -> (kind, configuration, what) of every control the run's [train] asks for, in the order they train:
    kind "null" (what: the draw), "shuffled" (what: None) or "cache" (what: (KEY, PATH) of its control_caches
    entry). `controls` trains them; `run.preflight` checks their resumes against the same configurations."""
    t = config.train
    plain = without_ablations(config)
    found: dict[str, tuple[str, Any, Any]] = {}
    if "permuted_labels" in t.controls:
        for draw, name in enumerate(null_names(t.null_draws)):
            found[name] = ("null", null_config(config, draw, data), draw)
    if "shuffled_inputs" in t.controls:
        found["control_shuffled_inputs"] = ("shuffled", plain, None)
    for name, (key, path, settings) in cache_controls(config).items():
        found[name] = ("cache", cache_control_config(plain, key, path, settings, name), (key, path))
    return found


def controls(task: Task, data: TaskData) -> dict[str, tuple[Task, TaskData]]:
    """name -> (task, data) of every control the run's [train] asks for (`control_configs`)."""
    seed = task.config.train.seed
    found: dict[str, tuple[Task, TaskData]] = {}
    for name, (kind, config, what) in control_configs(task.config, data).items():
        other = type(task)(config)
        if kind == "null":
            found[name] = (other, permuted_labels(data, seed, type(task).target_columns, what))
        elif kind == "shuffled":
            found[name] = (other, shuffled_inputs(data, type(task).input_columns, seed))
        else:
            try:
                found[name] = (other, other.load())
            except DogmaError as err:  # said as the control's, not the model's, which trained on its own cache
                key, path = what
                raise InputError(f"[train] control_caches {key}={path} (the control {name}): {err}") from None
    return found


def cache_controls(config: Any) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """Each [train] control_caches entry by its control's name: control_<key>_<cache name> -> (key, path, its
    settings); an entry that is not KEY=PATH[; SECTION.FIELD=VALUE ...], names no [data] key, sets what a control
    may not, or gives a name another entry gives is refused."""
    found: dict[str, tuple[str, str, dict[str, Any]]] = {}
    for entry in config.train.control_caches:
        key, path, settings = cache_swap(entry)
        known = [f.name for f in dataclasses.fields(config.data) if f.name.endswith("_cache")]
        if key not in known:  # a control swaps a cache; another [data] key (labels, tissues) it may not
            what = "a [data] key that names no cache" if hasattr(config.data, key) else "not a [data] key"
            raise InputError(f"[train] control_caches names {key!r}, which is {what}; expected one of {known}")
        name = f"control_{key.removesuffix('_cache')}_{Path(path.rstrip('/')).name.removesuffix('.zarr')}"
        if name in found:
            raise InputError(
                f"[train] control_caches entries {found[name][0]}={found[name][1]} and {entry} both make the control "
                f"{name!r} (named by key and cache name); give one cache another name, or drop the repeat"
            )
        found[name] = (key, path, settings)
        cache_control_config(without_ablations(config), key, path, settings, name)  # each setting checked now
    return found


def check_controls(task: Task, data: TaskData | None = None) -> None:
    """Refuse, before anything trains, a control the run could not run: null_draws without the null, the
    control_caches entries' syntax, keys
    and names (`cache_controls`), each cache's presence, completeness and kind (its manifest read), and with the
    run's `data` whether it holds every item the run reads from the cache it swaps (`Task.items_read`); the rest
    is checked when the control loads its data, after the model has trained."""
    from dogmacache.cache import open_cache

    t = task.config.train
    if t.null_draws > 1 and "permuted_labels" not in t.controls:  # here: a --set is checked alone, without the file
        raise InputError(
            f"[train] null_draws = {t.null_draws} draws the permutation null, which [train] controls does not run; "
            'add "permuted_labels" to controls, or set null_draws = 1'
        )
    for name, (key, path, _) in cache_controls(task.config).items():
        if key in type(task).target_caches:
            raise InputError(
                f"[train] control_caches {key}={path} (the control {name}): [data] {key} holds {task.name}'s targets, "
                "and a control scored against other targets stands beside nothing; swap an input cache"
            )
        try:
            swapped = open_cache(path)
        except (DogmaError, FileNotFoundError) as err:
            raise InputError(f"[train] control_caches {key}={path} (the control {name}): {err}") from None
        original = getattr(task.config.data, key, "")
        try:
            real = open_cache(original) if original else None
        except (DogmaError, FileNotFoundError):
            continue  # the run's own cache is refused when the data load, in its own words
        if real is None:
            continue
        theirs, ours = swapped.manifest, real.manifest
        if theirs.modality != ours.modality or len(theirs.item_shape) != len(ours.item_shape):
            raise InputError(
                f"[train] control_caches {key}={path} (the control {name}) holds {theirs.modality} embeddings of shape "
                f"{tuple(theirs.item_shape)}, where [data] {key} holds {ours.modality} embeddings of shape "
                f"{tuple(ours.item_shape)}; a cache control swaps in another model's cache of the same items and kind"
            )
        if theirs.shards and theirs.shards == ours.shards:  # the same rows: a control that matches by construction
            raise InputError(
                f"[train] control_caches {key}={path} (the control {name}) holds the same rows as [data] {key} "
                f"{original} (the same shard checksums): it would score as the model does by construction; swap in "
                "another model's cache of the same items (e.g. `dogmacache embed --model kmer`)"
            )
        genomes = [(m.config or {}).get("genome") or {} for m in (theirs, ours)]
        if all(g.get("sha256") for g in genomes) and genomes[0]["sha256"] != genomes[1]["sha256"]:
            raise InputError(
                f"[train] control_caches {key}={path} (the control {name}) was cut from the genome file "
                f"{genomes[0].get('name')!r}, and [data] {key} {original} from {genomes[1].get('name')!r}, of other "
                "bases (sha256 differs): the same ids stand for other windows; embed the control from the genome the "
                "run's cache was cut from"
            )
        if data is not None:
            wanted = np.asarray(task.items_read(data, key, real))
            missing = wanted[~np.isin(wanted, np.asarray(swapped.ids))]
            if len(missing):
                raise InputError(
                    f"[train] control_caches {key}={path} (the control {name}) lacks {len(missing):,} of the "
                    f"{len(wanted):,} items the run reads from [data] {key} {original}, e.g. {str(missing[0])!r}; "
                    "embed the same input table into it"
                )


def without_ablations(config: Any) -> Any:
    """The run's configuration with no ablations of its own (a control is one model; the loop asks only the run's
    own task for baselines)."""
    model = config.model
    if any(f.name == "ablations" for f in dataclasses.fields(model)):
        model = dataclasses.replace(model, ablations=())
    return dataclasses.replace(config, model=model)


# how far the null's draws may score above the task's no-input baseline (on the metric's own scale: a correlation,
# a cosine, R²) before `null_summary` flags them, beyond the one-sided 97.5 % t bound of their mean: labels
# permuted apart from the inputs leave a model nothing to score on but what reaches it some other way (test labels
# read at evaluation, a table that joins the answer in)
NULL_MARGIN = 0.05
NULL_BASELINE = "no_input_test"  # a null draw's results: the no-input baseline fitted on its labels, test metrics


def null_summary(
    results: dict[str, Any], model: str, draws: int, metrics: tuple[str, ...], baseline: str = ""
) -> dict[str, Any]:
    """The permutation null's draws against the model, per test metric of `metrics` (each higher = better): the
    model's value, the draws' mean, sd and max, how many reach the model, and the empirical p-value
    (1 + that count) / (1 + draws) (never 0: the model counts as one draw of the null, Phipson and Smyth 2010).
    Beside them the no-input `baseline` (an R² against the better of it and a constant, which scores 0), and
    `null_above_baseline`: the draws above it by more than NULL_MARGIN on average and by more than t(0.975,
    draws - 1) standard errors of that mean (4.3 of them for 3 draws, 2.1 for 19: a few draws are no evidence of a
    leak unless they agree), or, against baselines refitted per draw, with every draw above every draw's baseline by
    more than NULL_MARGIN (a rank test: 1 chance in 20 without a leak for 3 draws; `flagged_by` says which). With one
    draw there is no spread to judge by (`not_compared`); `null_reaches_model` says that no draw fell below the
    model, whose number then shows nothing whatever the baseline. Then the null itself reads something beyond its
    inputs, the model likely too, and its p measures nothing. Each draw is set beside the baseline fitted on that
    draw's own permuted labels (`NULL_BASELINE` in its results, which the loop adds): what a model with no input
    scores with the labels the draw had, about 0 for a correlation. Only where the draws lack it, beside the
    baseline fitted on the real labels, which a per-gene mean lifts to about 0.4 on the demo's CDT, so that only a
    larger leak shows."""
    names = [n for n in null_names(draws) if n in results]
    out: dict[str, Any] = {"draws": len(names), "models": names, "test": {}}
    for metric in metrics:
        value = results[model].get("test", {}).get(metric)
        scored = [results[n].get("test", {}).get(metric) for n in names]
        null = np.array([np.nan if v is None else v for v in scored], dtype=float)
        paired = [results[n].get(NULL_BASELINE, {}).get(metric) for n in names]
        paired = np.array([np.nan if v is None else v for v in paired], dtype=float)
        finite = np.isfinite(null)
        null, paired = null[finite], paired[finite]  # a draw with no such number (one class absent) is not one
        if value is None or not np.isfinite(value) or not len(null):
            out["test"][metric] = {
                "model": value,
                "draws_scored": int(len(null)),
                "not_scored": "the model has no finite value" if len(null) else "no draw has a finite value",
            }
            continue
        reached = int((null >= value).sum())
        out["test"][metric] = {
            "model": float(value),
            "draws_scored": int(len(null)),
            "null_mean": float(null.mean()),
            "null_sd": float(null.std(ddof=1)) if len(null) > 1 else float("nan"),
            "null_max": float(null.max()),
            "draws_reaching_the_model": reached,
            "null_reaches_model": bool(reached == len(null)),  # no draw below the model: it shows nothing
            "p": (1 + reached) / (1 + len(null)),
            **_against_baseline(null, results.get(baseline, {}).get("test", {}).get(metric), metric, baseline, paired),
        }
    return out


def gain_over_baseline(value: float, base: float, metric: str) -> float:
    """How far `value` of `metric` lies above the no-input baseline's `base`: for an R², above the better of the
    baseline and a constant (R² 0; on labels drawn apart from the inputs a per-gene mean fits noise and falls below
    a constant)."""
    return value - (max(base, 0.0) if metric.startswith("r2") else base)


def _against_baseline(
    null: np.ndarray, base: float | None, metric: str, name: str, paired: np.ndarray | None = None
) -> dict[str, Any]:
    """The null's draws against the no-input baseline (see `null_summary`): per draw against `paired`, the
    baseline fitted on that draw's permuted labels, where every draw has it; else against `base`, its value on
    the real labels."""
    if not name:
        return {}
    from scipy import stats

    per_draw = paired is not None and len(paired) == len(null) and len(null) and np.isfinite(paired).all()
    if per_draw:
        gains = np.array([gain_over_baseline(float(v), float(b), metric) for v, b in zip(null, paired, strict=True)])
        found = {"baseline": name, "baseline_fitted_on": "each draw's permuted labels"}
        found["baseline_value"] = float(paired.mean())  # the baseline's mean over the draws' labels
    elif base is None or not np.isfinite(base):
        why = "it has no finite value" if base is not None else "it was not scored ([train] baselines = false)"
        return {"baseline": name, "not_compared": f"not set beside the no-input baseline {name}: {why}"}
    else:
        gains = np.array([gain_over_baseline(float(v), float(base), metric) for v in null])
        found = {"baseline": name, "baseline_fitted_on": "the real labels", "baseline_value": float(base)}
    gain = float(gains.mean())
    if len(null) < 2:  # one scored draw has no spread to judge its mean by
        return {
            **found,
            "null_gain_over_baseline": gain,
            "not_compared": f"one draw scored: the leak flag against {name} needs two or more (null_draws >= 3)",
        }
    bound = float(stats.t.ppf(0.975, len(gains) - 1)) * float(gains.std(ddof=1)) / np.sqrt(len(gains))
    by = []
    if gain > NULL_MARGIN and gain > bound:
        by.append("the 97.5 % t bound of their mean")
    if gain > NULL_MARGIN and per_draw:
        # a rank test beside the t bound: a baseline refitted on noise swings (a per-gene mean on permuted labels
        # reads -0.4 to 0.4 on a small test split) and widens the paired bound past a leak that lifts every draw
        # to 1.0. Were the draws and their baselines exchangeable without a leak (both score labels drawn apart
        # from the inputs), every draw above every baseline would happen with probability 1 / C(2K, K): 1 in 20
        # for 3 draws, 1 in 252 for 5
        if min(gain_over_baseline(float(v), float(b), metric) for v in null for b in paired) > NULL_MARGIN:
            by.append(
                f"every draw above every draw's baseline (a rank test, p = 1/{math.comb(2 * len(null), len(null))})"
            )
    flagged = {"flagged_by": " and ".join(by)} if by else {}
    return {**found, "null_gain_over_baseline": gain, "null_above_baseline": bool(by), **flagged}
