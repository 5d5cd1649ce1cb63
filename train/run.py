"""`dogmacache train`: any registered task (`registry.TASKS`) from caches, with its baselines in the same run.

Outputs in [output].dir: `<model>_best.pt` / `<model>_last.pt` for the model and each trained baseline,
`metrics.json` (validation and test for the model and each baseline), `log.csv`, `learning_curves.png`,
`test_scatter.png`. Checkpoints rebuild their model alone (`registry.load_model`). A model's
prerequisite runs (CDBridge's stage 1) train first, into their own folder under [output].dir.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from dogmacache.cache import open_cache
from dogmacache.cache.lock import WriterLock, lock_file, lock_holder
from dogmacache.cache.storage import replace_whole
from dogmacache.contracts.provenance import package_versions
from dogmacache.devices import (
    apply_cpu_allocator,
    busy_note,
    cpu_plan,
    pick_device,
    torch_threads,
)
from dogmacache.errors import CacheError, InputError
from dogmacache.train import checkpoint, plots
from dogmacache.train.config import RunConfig, changed_keys
from dogmacache.train.controls import (
    NULL_BASELINE,
    NULL_MARGIN,
    check_controls,
    control_configs,
    controls,
    null_names,
    null_summary,
)
from dogmacache.train.loop import evaluate, fit, world
from dogmacache.train.registry import TASKS, get_task
from dogmacache.train.task import (
    FittedBaseline,
    FixedBaseline,
    Prerequisite,
    Task,
    TaskData,
    check_examples,
    check_inputs_in_one_split,
)


def _fit_task(
    task: Task, data: TaskData, name: str, out: Path, progress: bool, done: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Train one model: its prerequisites first (each configuration once per call, kept in `done`), then the
    model through the shared loop; its `inspect` numbers before and after training ride along in the result."""
    finished = {
        role: _prerequisite(p, f"{name}_{role}", out, progress, done) for role, p in task.prerequisites(data).items()
    }
    handed = {role: r["handed"] for role, r in finished.items()}  # the weights each prerequisite gives this model
    torch.manual_seed(task.config.train.seed)  # the initial weights are part of the seeded run
    model, model_class, model_config = task.build_model(data, finished)
    device = pick_device(task.config.train.device)
    untrained = task.inspect(model.to(device), data, device)
    meta = {
        "task": task.name,
        "model_class": model_class,
        "model_config": model_config,
        "config": task.config.to_dict(),
        "fingerprints": data.fingerprints,
        "splits": data.split_digests(),  # the examples it was trained and chosen on
        "data_files": checkpoint.data_files(task.config.to_dict(), data.files_read),  # files it read, by sha256
        "files_read": data.files_read,  # those read from a default place
        "versions": package_versions(),
        "extras": data.extras,
        "prerequisites": handed,
    }
    result = fit(task, model, data, name, out, meta, progress=progress)
    result.update(model_config=model_config, prerequisites=finished)
    result["inspect"] = {"untrained": untrained, "trained": task.inspect(model, data, device)}
    return result


def _handed_on(result: dict[str, Any], read: Callable[..., dict[str, Any]] | None = None, **how: str) -> dict:
    """What a finished prerequisite run hands on: its best checkpoint (path), that file's weights digest and
    epoch. `how`: `checkpoint.read`'s `what` and `fix` for a file that is missing or torn."""
    path = result["checkpoint"]
    saved = (read or (lambda p, **k: checkpoint.read(p, map_location="cpu", **k)))(path, **how)
    return {
        "checkpoint": str(result["checkpoint"]),
        "weights": checkpoint.weights_digest(saved["model"]),
        "epoch": (saved.get("state") or {}).get("epoch"),
    }


def _handed_on_now(
    role: str, p: Prerequisite, folder: Path, recorded: dict[str, Any], read: Callable[..., dict[str, Any]]
) -> dict:
    """Before anything trains: what prerequisite `p` will hand on in this run, where that is known already (a
    finished checkpoint named, or the one `recorded` trained to its end, looked up by its name in this run's
    `folder` for it: a resume may move the run's folder); {"weights": None} where it will train (further, or anew:
    its best or last checkpoint is gone)."""
    if p.checkpoint:
        return _handed_on({"checkpoint": p.checkpoint}, read, **_named_how(role))
    best = folder / Path(recorded.get("checkpoint") or "").name
    last = best.with_name(best.name.removesuffix("_best.pt") + "_last.pt")
    if not best.name.endswith("_best.pt") or not best.is_file() or not last.is_file() or _will_train(p, last, read):
        return {"weights": None}
    fix = (  # removing it alone would leave the models that started from it without it
        "start the run over with --set output.resume=false --set output.overwrite=true (the models that started from "
        "this prerequisite need it whole)"
    )
    return _handed_on({"checkpoint": best}, read, fix=fix)


def _named_how(role: str) -> dict[str, str]:
    """How a finished prerequisite checkpoint named in [data] is said where it is missing or torn."""
    return {
        "what": f"[data] {role}_checkpoint",
        "fix": f"name a finished {role} checkpoint (<name>_{role}_best.pt), or leave [data] {role}_checkpoint empty "
        "to train it in this run",
    }


def _will_train(p: Prerequisite, last: Path, read: Callable[[str], dict[str, Any]]) -> bool:
    """Whether prerequisite `p`, resumed from `last`, trains further in this run (its epochs not run out, and it
    has not stopped early)."""
    state, t = read(str(last), fix=checkpoint.resume_fix(last)).get("state") or {}, p.task.config.train
    return state.get("epoch", 0) < t.epochs and state.get("stale", 0) < t.early_stop_patience


def _own_prerequisite(name: str, role: str, p: Prerequisite, out: Path, read: Callable[..., dict]) -> list[Path]:
    """The last checkpoint of the prerequisite run model `name` gets ([] for a named finished one): its own, else
    the one of that configuration another model ran first (a run shared by several models goes by the first's
    name, as CDBridge's ablations share the model's stage 1)."""
    if p.checkpoint:
        return []
    own = out / p.folder / f"{name}_{role}_last.pt"
    if own.is_file():
        return [own]
    wanted = p.task.config.to_dict()
    return [
        x
        for x in sorted((out / p.folder).glob(f"*_{role}_last.pt"))
        if not changed_keys(read(str(x), fix=checkpoint.resume_fix(x)).get("config") or {}, wanted)
    ][:1]


def _check_handed_on(
    name: str,
    t: Task,
    data: TaskData,
    out: Path,
    last: Path,
    saved: dict[str, Any],
    read: Callable[..., dict[str, Any]],
) -> None:
    """A model resumed from `last` (`saved`) gets the prerequisites it started from, or is refused
    (`checkpoint.check_prerequisites_kept`); one whose checkpoint predates that record, where a prerequisite of
    its kind in the run's folder would train further."""
    needed = t.prerequisites(data)
    if not needed:
        return
    recorded = saved.get("prerequisites")
    if recorded is None:  # written before models recorded what they were handed
        for role, p in needed.items():
            trains = [x for x in _own_prerequisite(name, role, p, out, read) if _will_train(p, x, read)]
            if trains:
                raise InputError(
                    f"{last} records no {role} it started from (an earlier version wrote it), and {trains[0]} trains "
                    f"further in this run (train.epochs above the epochs it ran): the model would keep the old {role} "
                    f"while the run reports the new one; keep train.epochs, or start over with --set "
                    "output.resume=false --set output.overwrite=true"
                )
        return
    now = {role: _handed_on_now(role, p, out / p.folder, recorded.get(role) or {}, read) for role, p in needed.items()}
    checkpoint.check_prerequisites_kept(saved, last, now)


def _prerequisite(
    p: Prerequisite, name: str, out: Path, progress: bool, done: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """A declared prerequisite run, named after the model that needs it and its role (`cdbridge_stage1`): trained
    into `<out>/<folder>/<name>_best.pt` (its own log.csv), or evaluated from the finished checkpoint it names; a
    configuration already run in this call is reused under the name it was first run as."""
    key = json.dumps([p.task.config.to_dict(), p.checkpoint], sort_keys=True, default=str)
    if key not in done:
        if p.checkpoint:
            device = pick_device(p.task.config.train.device)
            saved = checkpoint.read(p.checkpoint, map_location=device)  # checked against this run by `preflight`
            model = checkpoint.rebuild(saved, p.task.models, p.checkpoint).to(device)
            result = {"name": name, "checkpoint": p.checkpoint, **evaluate(p.task, model, p.data, device)}
            result["inspect"] = {"trained": p.task.inspect(model, p.data, device)}
        else:
            folder = out / p.folder
            folder.mkdir(parents=True, exist_ok=True)
            result = {"name": name, **_fit_task(p.task, p.data, name, folder, progress, done)}
        result["handed"] = _handed_on(result)  # read and digested once, for every model that starts from it
        done[key] = result
    return done[key]


def run_training(
    config: RunConfig, progress: bool = True, on_cleared: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Train `config`'s model, baselines and controls; `on_cleared` is called once the run has passed its refusals
    and removed the earlier run's outputs (`--seeds` removes its seeds.json then)."""
    rank, _ = world()
    apply_cpu_allocator(config.train.cpu_allocator, pick_device(config.train.device))  # once per process
    config = with_cpu_plan(config)
    out = Path(config.output.dir)
    lock = claim_output(out, config) if rank == 0 else None
    try:
        with torch_threads(config.train.threads):
            return _run(config, out, rank, progress, on_cleared)
    finally:
        if lock is not None:
            lock.release()


def with_cpu_plan(config: RunConfig) -> RunConfig:
    """`config` with [train] num_workers and threads decided for this process where unset (`devices.cpu_plan`),
    so checkpoints and metrics.json record the counts used; under torchrun the processes of one machine
    (LOCAL_WORLD_SIZE) share its cores."""
    t = config.train
    local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))  # torchrun's processes on this machine split its cores
    device = pick_device(t.device).type
    plan = cpu_plan(device, t.num_workers, t.threads, ceiling=torch.get_num_threads(), share=local)
    note = busy_note(plan, "--set train.threads=N")
    if note:
        print(note)
    return dataclasses.replace(config, train=dataclasses.replace(t, num_workers=plan.workers, threads=plan.threads))


def claim_output(out: Path, config: RunConfig) -> WriterLock:
    """Before any data loads: the output folder exists and is writable, no other training holds it (a lock
    beside it, naming the holder's pid), and a fresh start (resume = false) does not silently replace another
    run's outputs."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise InputError(
            f"[output] dir {str(out)!r} is not writable ({reason}); choose another folder with --set output.dir=PATH"
        ) from None
    try:
        lock = WriterLock.acquire(out)
    except CacheError:
        raise InputError(
            f"{out} is being trained into by process {lock_holder(out)} (lock {lock_file(out.absolute())}); wait "
            "for it or stop it, or choose another [output] dir"
        ) from None
    earlier = sorted(p.name for p in out.glob("*_last.pt")) + (
        ["metrics.json"] if (out / "metrics.json").exists() else []
    )
    replacing = config.output.overwrite and not config.output.resume
    other = _task_of(out / "metrics.json")
    if other not in (None, config.task) and not replacing:
        lock.release()
        raise InputError(
            f"{out} holds a {other} run (metrics.json) and this run is {config.task}: their checkpoints, log and "
            "figures would mix; choose another [output] dir (--set output.dir=PATH), or replace it with --set "
            "output.resume=false --set output.overwrite=true"
        )
    if not config.output.resume and not config.output.overwrite and earlier:
        lock.release()
        raise InputError(
            f"{out} holds another run ({', '.join(earlier[:3])}{' ...' if len(earlier) > 3 else ''}) and "
            "output.resume is false; --set output.overwrite=true replaces it, or choose another [output] dir"
        )
    return lock


def _task_of(metrics: Path) -> str | None:
    """The task a finished run's metrics.json names (None without one, or when it cannot be read)."""
    try:
        return json.loads(metrics.read_text()).get("task")
    except (OSError, ValueError, AttributeError):
        return None


def _check_prerequisite(saved: dict[str, Any], p: Prerequisite, fingerprints: dict[str, Any], **fix: str) -> None:
    checkpoint.check_prerequisite(
        saved,
        p.checkpoint,
        p.task.config.to_dict(),
        fingerprints,
        p.reads,
        p.data.split_digests(),
        model_keys=p.model_keys,
        defaults=dataclasses.asdict(type(p.task.config.model)()) if p.model_keys else None,
        **fix,
    )


def preflight(task: Task, data: TaskData, out: Path) -> None:
    """The refusals a run would meet later, met before it removes anything (`clear_outputs`) or trains: the resume
    of every model it trains (the model, its trained baselines, its controls and their prerequisite runs: each
    last checkpoint against that model's config and caches) and every finished prerequisite checkpoint named (a
    cache control's by the swapped cache's fingerprint). Each checkpoint file is read once."""
    config = task.config
    read = functools.cache(lambda path, **how: checkpoint.read(path, map_location="cpu", **how))

    def resumed(last: Path) -> dict[str, Any]:  # a model's last checkpoint, which the resume goes on from
        return read(last, fix=checkpoint.resume_fix(last))

    # (name, its task, its caches' fingerprints, what to do where a named prerequisite does not fit it: a template
    # of {role}, "" for the checkpoint's default advice)
    models: list[tuple[str, Task, dict[str, Any], str]] = [(config.task, task, data.fingerprints, "")]
    for name, b in task.baselines(data).items():
        if isinstance(b, FittedBaseline):  # an ablation that changes what its stage 1 is
            fix = (
                f"the ablation {name} trains another {{role}} than the model (its [model] changes it): drop {name} "
                "from [model] ablations, or leave [data] {role}_checkpoint empty so that each trains its own"
            )
            models.append((name, b.task, data.fingerprints, fix))
    for name, (kind, control, what) in control_configs(config, data).items():
        if kind != "cache":
            models.append((name, type(task)(control), data.fingerprints, ""))
            continue
        key, path = what
        fingerprints = {**data.fingerprints, key.removesuffix("_cache"): open_cache(path).fingerprint()}
        fix = (
            f"the control {name} ([train] control_caches {key}={path}) cannot start from the {{role}} checkpoint the "
            "model does: drop that control_caches entry, or leave the {role} checkpoint empty so that each model "
            "trains its own"
        )
        models.append((name, type(task)(control), fingerprints, fix))
    splits = data.split_digests()  # a control moves labels or inputs, never which examples
    for name, t, fingerprints, fix in models:
        last = out / f"{name}_last.pt"
        if config.output.resume and last.is_file():
            checkpoint.check_resume(resumed(last), last, t.config.to_dict(), fingerprints, splits, data.files_read)
            _check_handed_on(name, t, data, out, last, resumed(last), read)  # the prerequisites it started from
        for role, p in t.prerequisites(data).items():
            if not p.checkpoint:
                last = out / p.folder / f"{name}_{role}_last.pt"
                if config.output.resume and last.is_file():
                    checkpoint.check_resume(
                        resumed(last),
                        last,
                        p.task.config.to_dict(),
                        fingerprints,
                        p.data.split_digests(),
                        p.data.files_read,
                    )
                continue
            named = read(p.checkpoint, **_named_how(role))
            _check_prerequisite(named, p, fingerprints, **({"fix": fix.replace("{role}", role)} if fix else {}))


SHARED_FIGURES = ("learning_curves.png", "test_scatter.png")  # every task's, beside its own `figure_names`


def clear_outputs(out: Path, config: RunConfig, figures: tuple[str, ...] = ()) -> None:
    """Once the data has loaded and the controls are checked, before anything trains: metrics.json and the
    figures go (metrics.json is written last, after the figures, so a run stopped midway leaves no earlier run's
    results or figures beside its own checkpoints), and with output.overwrite (and no resume) the other run's
    checkpoints and log go too (its best checkpoint would otherwise be read where this run never beats it, its log
    rows mixed with this run's)."""
    other = _task_of(out / "metrics.json")  # a run of another task this one replaces: its own figures go too
    if other in TASKS and other != config.task:
        figures = (*figures, *get_task(other).figure_names)
    gone = [out / "metrics.json", *(out / name for name in (*SHARED_FIGURES, *figures))]
    if not config.output.resume and config.output.overwrite:
        gone += [out / "log.csv", *out.glob("*_last.pt"), *out.glob("*_best.pt")]
    named = {os.path.realpath(v) for v in dataclasses.asdict(config.data).values() if isinstance(v, str) and v}
    for path in gone:
        if os.path.realpath(path) not in named:  # a file this run reads (a stage-1 checkpoint kept there) stays
            path.unlink(missing_ok=True)


def _run(
    config: RunConfig, out: Path, rank: int, progress: bool, on_cleared: Callable[[], None] | None = None
) -> dict[str, Any]:
    task = get_task(config.task)(config)
    data = task.load()
    check_examples(task, data, getattr(config.data, "labels", None) or "labels")
    check_inputs_in_one_split(task, data, getattr(config.data, "labels", None) or "labels")
    check_controls(task, data)  # a control that cannot run is refused before the model trains, not after
    preflight(task, data, out)
    if rank == 0:
        clear_outputs(out, config, task.figure_names)
        if on_cleared is not None:
            on_cleared()

    done: dict[str, dict[str, Any]] = {}  # prerequisite runs of this call, by configuration
    results: dict[str, Any] = {config.task: _fit_task(task, data, config.task, out, progress, done)}
    fixed: dict[str, FixedBaseline] = {}
    for name, baseline in task.baselines(data).items():
        if isinstance(baseline, FittedBaseline):
            results[name] = _fit_task(baseline.task, data, name, out, progress, done)
        elif isinstance(baseline, FixedBaseline):
            fixed[name] = baseline
            predictions = {s: baseline.predict(data, s) for s in ("validation", "test")}
            results[name] = {s: task.metrics(p, data, s) for s, p in predictions.items()}
            results[name]["predictions"] = predictions
    no_input = fixed.get(task.no_input_baseline)
    nulls = set(null_names(config.train.null_draws))
    for name, (control, control_data) in controls(task, data).items():
        results[name] = _fit_task(control, control_data, name, out, progress, done)
        if no_input is not None and name in nulls:  # the no-input baseline fitted on this draw's permuted labels
            results[name][NULL_BASELINE] = control.metrics(no_input.predict(control_data, "test"), control_data, "test")
    summary = {
        "task": config.task,
        "metric": task.metric,  # the validation metric that chose each checkpoint
        "models": {
            name: {k: r[k] for k in ("validation", "test", "best_epoch", "epochs_run") if k in r}
            for name, r in results.items()
        },
        "counts": {s: int(len(p)) for s, p in data.splits.items()},
        "model_config": results[config.task]["model_config"],
        "fingerprints": data.fingerprints,
        "cpu": {"num_workers": config.train.num_workers, "torch_threads": config.train.threads},
        "config": config.to_dict(),  # the run as resolved: what these numbers are of
    }
    draws = config.train.null_draws if "permuted_labels" in config.train.controls else 1
    if "permuted_labels" in config.train.controls:  # one draw too: its p, and what it cannot be compared by
        summary["null"] = null_summary(
            results, config.task, draws, task.null_metrics or (task.metric,), task.no_input_baseline
        )
    if rank == 0:
        summary.update(task.summary(results, data))
        shown = {n: r for n, r in results.items() if n not in null_names(draws)[1:]}  # the null's first draw drawn
        log = pd.read_csv(out / "log.csv")  # this run's models only: the folder may hold another task's rows
        plots.learning_curves(log[log["model"].isin(shown)], out / "learning_curves.png", task.metric)
        plots.predicted_vs_observed(
            task.observed(data, "test"),
            {n: task.plotted(r["predictions"]["test"]) for n, r in shown.items()},
            {n: r["test"] for n, r in shown.items()},
            out / "test_scatter.png",
        )
        task.figures(shown, data, out)
        write_json(out / "metrics.json", summary)  # last: its presence says the run finished
        print_table({**summary, "models": {n: summary["models"][n] for n in shown}}, task.metric)
        if "null" in summary:
            print_null(summary["null"], config.task)
    return summary


def strict(value: Any) -> Any:
    """`value` with every non-finite float as None, so the JSON is strict (any reader opens it)."""
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


NULL_MEANS = (
    "not defined for this model and split (fewer than 2 examples, one class absent, no such tissue); a correlation "
    "with constant predictions or labels is reported as 0"
)


def write_json(path: Path, summary: dict[str, Any]) -> None:
    """metrics.json as strict JSON: a metric that is not defined (one class absent, fewer than 2 examples, no such
    tissue) is null, and `null_means` says so in the file; a correlation of a constant is 0 (`regression_metrics`)."""
    payload = {**strict(summary), "null_means": NULL_MEANS}
    text = json.dumps(payload, indent=2, allow_nan=False)
    with replace_whole(path) as tmp:
        tmp.write_text(text)


def print_null(null: dict[str, Any], model: str) -> None:
    """The permutation null's draws beside the model, a line per metric."""
    draws = f"{null['draws']} draw{'s' if null['draws'] != 1 else ''}"
    print(f"permutation null: {draws} of control_permuted_labels (in metrics.json: null)")
    for metric, n in null["test"].items():
        if "not_scored" in n:
            print(f"  test {metric}: not scored ({n['not_scored']})")
            continue
        scored = "" if n["draws_scored"] == null["draws"] else f" ({n['draws_scored']} draws with a value)"
        spread = (
            f"null mean {n['null_mean']:.3f}, sd {n['null_sd']:.3f}, max {n['null_max']:.3f}"
            if n["draws_scored"] > 1
            else f"null {n['null_mean']:.3f}"
        )
        print(
            f"  test {metric}: {model} {n['model']:.3f}; {spread}; {n['draws_reaching_the_model']} of "
            f"{n['draws_scored']} reach it, p = {n['p']:.3f}{scored}"
        )
        if n.get("not_compared"):
            print(f"    ({n['not_compared']})")
        if n.get("null_reaches_model"):
            print(
                f"    WARNING: every draw of the null reaches {model}'s test {metric}: trained on labels permuted "
                "apart from its inputs, the same model scores as well; the model's number is no evidence that it "
                "reads its inputs (a leak of the test labels, or a metric that rewards no signal)"
            )
        if n.get("null_above_baseline"):
            print(
                f"    WARNING: the null's draws score {n['null_gain_over_baseline']:+.3f} above the no-input baseline "
                f"{n['baseline']} fitted on {n['baseline_fitted_on']} ({n['baseline_value']:.3f}), beyond "
                f"{NULL_MARGIN} and {n.get('flagged_by', 'the 97.5 % t bound of their mean')}: with "
                "labels permuted apart from the inputs, something else reaches the labels (test labels read at "
                "evaluation, an answer joined into the inputs); the model's number and this p are not evidence"
            )


def print_table(summary: dict[str, Any], metric: str = "pearson") -> None:
    """Pooled metrics per model and split, and the task's selection metric when it is another one."""
    extra = [] if metric in ("pearson", "spearman", "r2") else [metric]
    w = max(16, 2 + max(map(len, summary["models"])))
    print(
        f"{'model':<{w}}{'split':<12}{'pearson':>9}{'spearman':>10}{'r2':>9}{'mse':>9}{'mae':>9}{'n':>7}"
        + "".join(f"{k:>22}" for k in extra)
    )
    for name, result in summary["models"].items():
        for split in ("validation", "test"):
            m = result[split]
            print(
                f"{name:<{w}}{split:<12}{m['pearson']:>9.3f}{m['spearman']:>10.3f}{m['r2']:>9.3f}"
                f"{m['mse']:>9.4f}{m['mae']:>9.4f}{m['n']:>7}" + "".join(f"{m[k]:>22.3f}" for k in extra)
            )


def setup_distributed() -> bool:
    """Join the torchrun process group when launched by torchrun (gloo on CPU, nccl on CUDA)."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", 1)) < 2:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    torch.distributed.init_process_group(backend)
    return True
