"""The `dogmacache train` configuration: which task, and one frozen dataclass per section, every default
visible, unknown keys rejected, types and ranges checked when the file is read (before any cache is opened).

A file is TOML or YAML:

    task = "cdt"        # a name in train.registry.TASKS
    [data]              # the task's inputs and batching: its `data_config` dataclass
    [model]             # the task's model sizes: its `model_config` dataclass
    [train]             # the shared loop: TrainConfig (defaults: docs/papers.md#cdt-training-recipe)
    [output]            # OutputConfig

`dogmacache train --config F --print-config` prints the resolved configuration, which is also written into
every checkpoint; `--example-config [--task NAME]` prints every key with its default.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml
from dogmacache.devices import CPU_ALLOCATORS
from dogmacache.errors import InputError

DEFAULT_TASK = "cdt"
CONTROL_KINDS = ("permuted_labels", "shuffled_inputs")  # [train] controls (train/controls.py)


@dataclass(frozen=True)
class TrainConfig:
    """The shared loop's settings; the defaults are the CDT authors' recipe."""

    epochs: int = 50  # at most
    batch_size: int = 8  # examples per optimiser step (summed over processes under torchrun)
    lr: float = 1e-4  # AdamW
    weight_decay: float = 1e-5  # AdamW
    clip_norm: float = 1.0  # gradient norm clip
    smooth_l1_beta: float = 1.0  # SmoothL1 (Huber) transition point, for tasks with a regression loss
    plateau_factor: float = 0.5  # ReduceLROnPlateau on the task's validation metric (mode max)
    plateau_patience: int = 5  # epochs
    early_stop_patience: int = 10  # epochs in a row below reference + min_delta (the authors' EarlyStopping)
    early_stop_min_delta: float = 0.001  # gain over the reference that moves it and resets the count
    seed: int = 0  # initial weights, batch order, dropout
    # DataLoader processes prefetching batches (0 = read in the training process) and torch intra-op threads; unset:
    # decided from the cores the process may use (devices.cpu_plan; threads: OMP_NUM_THREADS when set)
    num_workers: int | None = None
    threads: int | None = None
    device: str = "auto"  # auto = cuda when available, else cpu; or cpu, cuda, cuda:1 ...
    precision: str = "fp32"  # fp32 (the authors') | bf16 (autocast on CUDA; an option, not the paper's)
    cpu_allocator: str = "keep"  # keep | system: on CPU, keep freed memory (devices.keep_freed_memory)
    baselines: bool = True  # the task's baselines, trained and reported in the same run
    # torch.compile the training forward: no | default | reduce-overhead (CUDA graphs). A CDT paper bf16 step on one
    # H100: 22-28 steps/s uncompiled, 49 default, 63 reduce-overhead; the first steps pay the compilation
    compile: str = "no"
    # controls trained beside the model in the same run (train/controls.py): permuted_labels (the null),
    # shuffled_inputs; and control_caches "KEY=PATH": the same task with a [data] cache swapped (k-mer features)
    controls: tuple[str, ...] = ()
    control_caches: tuple[str, ...] = ()
    # permutations of the null (permuted_labels), each trained as the model is: metrics.json's "null" gives the
    # draws' mean, sd and max and the empirical p-value (1 + draws >= the model) / (1 + draws); the leak flag
    # against the no-input baseline needs 2 or more scored draws
    null_draws: int = 1

    def __post_init__(self) -> None:
        unknown = [c for c in self.controls if c not in CONTROL_KINDS]
        if unknown:
            raise InputError(f"[train] controls names {unknown[0]!r}; expected some of {list(CONTROL_KINDS)}")

    LIMITS: ClassVar[dict[str, str]] = {
        "epochs": ">=1",
        "batch_size": ">=1",
        "lr": ">0",
        "weight_decay": ">=0",
        "clip_norm": ">0",
        "smooth_l1_beta": ">0",
        "null_draws": "[1,1000]",
        "plateau_factor": "(0,1)",
        "plateau_patience": ">=0",
        "early_stop_patience": ">=1",
        "early_stop_min_delta": ">=0",
        "seed": "[0,9223372036854775807]",  # below 2**63 (torch.manual_seed refuses 2**64 and above)
        "num_workers": ">=0",
        "threads": ">=1",
    }
    CHOICES: ClassVar[dict[str, tuple]] = {
        "precision": ("fp32", "bf16"),
        "cpu_allocator": CPU_ALLOCATORS,
        "compile": ("no", "default", "reduce-overhead"),
    }


@dataclass(frozen=True)
class OutputConfig:
    dir: str = ""  # checkpoints, metrics.json, log.csv, figures; "" = runs/<task> (`RunConfig`)
    resume: bool = True  # continue from dir/<model>_last.pt when it exists (refused if the run differs)
    # with resume = false: replace another run's outputs in dir (its checkpoints, log.csv and metrics.json are
    # removed once this run's data has loaded; refused otherwise). metrics.json is written last by every run
    overwrite: bool = False


# Keys that may change between a run and its resume: they change neither the numbers nor what is trained.
# (`train.epochs` may grow, to continue a finished run for more epochs.)
# (`train.threads` moves values by float rounding only, and a resume on another machine may have other cores.)
# keys a resume may change: where outputs go, how many epochs (more), the machine's share; and which baselines and
# controls run beside a model, which never change that model's own numbers
RESUME_FREE = (
    "output.dir",
    "output.resume",
    "output.overwrite",
    "train.num_workers",
    "train.threads",
    "train.epochs",
    "train.baselines",
    "train.controls",
    "train.control_caches",
    "train.null_draws",
)


@dataclass(frozen=True)
class RunConfig:
    task: str = DEFAULT_TASK
    data: Any = None  # the task's data_config instance
    model: Any = None  # the task's model_config instance
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def __post_init__(self):
        if not self.output.dir:  # each task its own default folder: two tasks' runs never share one by default
            object.__setattr__(self, "output", dataclasses.replace(self.output, dir=f"runs/{self.task}"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            **{name: dataclasses.asdict(getattr(self, name)) for name in ("data", "model", "train", "output")},
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any], task: Any, where: str = "config") -> RunConfig:
        """Check `raw` (a parsed file: `task` and the four sections) against `task`'s [data] and [model]
        dataclasses and the shared ones; `task` is the Task class `raw["task"]` names (looked up by the registry,
        `train/registry.py`, which sits above this module)."""
        sections = ("data", "model", "train", "output")
        unknown = sorted(set(raw) - {"task", *sections})
        if unknown:
            raise InputError(
                f"{where}: unknown key(s) or section(s) {unknown}; a config has `task` and [{'], ['.join(sections)}]"
            )
        classes = {"data": task.data_config, "model": task.model_config, "train": TrainConfig, "output": OutputConfig}
        built = {name: build_section(classes[name], raw.get(name) or {}, name, where) for name in sections}
        config = cls(task=task.name, **built)
        required = [
            f.name
            for f in dataclasses.fields(config.data)
            if f.metadata.get("required") and not getattr(config.data, f.name)
        ]
        if required:
            raise InputError(
                f"{where}: [data] needs {required} for task {task.name!r}; see "
                f"`dogmacache train --example-config --task {task.name}`"
            )
        return config


def required(default: str = "") -> Any:
    """A [data] key that must be set (a path): `field(default="", metadata={"required": True})`."""
    return field(default=default, metadata={"required": True})


_RANGE = re.compile(r"^(>=|>|<=|<)(-?[\d.e+-]+)$|^([\[(])(-?[\d.e+-]+),(-?[\d.e+-]+)([\])])$")


def _in_range(value: float, spec: str) -> bool:
    m = _RANGE.match(spec.replace(" ", ""))
    assert m, f"bad range spec {spec!r}"
    if m.group(1):
        op, bound = m.group(1), float(m.group(2))
        return {">=": value >= bound, ">": value > bound, "<=": value <= bound, "<": value < bound}[op]
    lo, hi = float(m.group(4)), float(m.group(5))
    above = value >= lo if m.group(3) == "[" else value > lo
    below = value <= hi if m.group(6) == "]" else value < hi
    return above and below


def _describe(hint: Any) -> str:
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return " or ".join("null (unset)" if a is type(None) else _describe(a) for a in args)
    if typing.get_origin(hint) is tuple:
        plural = {int: "integers", float: "numbers", bool: "true or false values", str: "strings"}.get(args[0])
        return f"a list of {plural or _describe(args[0])}" if args[-1] is Ellipsis else f"a list of {len(args)} numbers"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))


def _coerce(value: Any, hint: Any) -> tuple[bool, Any]:
    """(ok, value converted to the field's type) without guessing: "no" is not a bool, 6.5 is not an int."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        for option in typing.get_args(hint):
            if option is type(None):
                if value is None:
                    return True, None
                continue
            ok, converted = _coerce(value, option)
            if ok:
                return True, converted
        return False, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        return ok, float(value) if ok else value
    if hint is str:
        return isinstance(value, str), value
    if typing.get_origin(hint) is tuple and typing.get_args(hint)[-1] is Ellipsis:
        if not isinstance(value, list | tuple):
            return False, value
        converted = [_coerce(v, typing.get_args(hint)[0]) for v in value]
        return all(ok for ok, _ in converted), tuple(v for _, v in converted)
    if typing.get_origin(hint) is tuple:
        items = typing.get_args(hint)
        if not isinstance(value, list | tuple) or len(value) != len(items):
            return False, value
        converted = [_coerce(v, h) for v, h in zip(value, items, strict=True)]
        return all(ok for ok, _ in converted), tuple(v for _, v in converted)
    return True, value


def build_section(cls: type, values: dict[str, Any], section: str, where: str = "config") -> Any:
    """`cls(**values)` with every key known, every value of its field's type and within the class's LIMITS /
    CHOICES; otherwise an InputError naming the key, the value and what is expected."""
    if not isinstance(values, dict):
        raise InputError(f"{where}: [{section}] must be a table of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(values) - known)
    if bad:
        raise InputError(f"{where}: unknown key(s) {bad} in [{section}]; known keys: {sorted(known)}")
    limits, choices = getattr(cls, "LIMITS", {}), getattr(cls, "CHOICES", {})
    checked = {}
    for key, value in values.items():
        ok, converted = _coerce(value, hints[key])
        if not ok:
            example = json.dumps(value if isinstance(value, list) else [value])
            quoted = f" (on the command line, as JSON in quotes: --set '{section}.{key}={example}')"
            raise InputError(
                f"{where}: [{section}] {key} = {value!r} is not {_describe(hints[key])}; "
                f"the default is {getattr(cls(), key)!r}"
                + (quoted if isinstance(value, str) and typing.get_origin(hints[key]) is tuple else "")
            )  # every section has defaults
        if key in limits and converted is not None and not _in_range(converted, limits[key]):
            raise InputError(f"{where}: [{section}] {key} = {value!r} is out of range; expected {key} {limits[key]}")
        if key in choices and converted not in choices[key]:
            raise InputError(f"{where}: [{section}] {key} = {value!r} is not one of {list(choices[key])}")
        if section in ("data", "output") and isinstance(converted, str) and converted.startswith("~"):
            converted = os.path.expanduser(converted)  # a path from the home folder, as a shell would read it
        checked[key] = converted
    return cls(**checked)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`--set SECTION.KEY=VALUE` (or `task=NAME`) -> {dotted key: value}; values parse as JSON, else strings."""
    overrides = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or ("." not in key and key != "task"):
            raise InputError(f"--set {item!r}: expected SECTION.KEY=VALUE (e.g. train.epochs=5) or task=NAME")
        try:
            overrides[key] = json.loads(text)
        except json.JSONDecodeError:
            overrides[key] = text
    return overrides


def read_config_file(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A config file (TOML, or YAML by suffix) parsed, with `--set` overrides applied: the raw dict that
    `RunConfig.from_dict` checks."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file {str(path)!r} does not exist")
    text = path.read_text()
    kind = {".toml": "TOML", ".json": "JSON"}.get(path.suffix, "YAML")
    try:
        raw = {"TOML": tomllib.loads, "JSON": json.loads, "YAML": _yaml}[kind](text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, yaml.YAMLError) as err:
        raise InputError(f"{path} is not valid {kind}: {str(err).splitlines()[0]}") from err
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise InputError(
            f"{path} reads as a {type(raw).__name__}, not a table of sections and keys; a config is TOML (.toml) or "
            "a YAML mapping (.yaml): `dogmacache train --example-config` prints one"
        )
    for dotted, value in (overrides or {}).items():
        if dotted == "task":
            raw["task"] = value
            continue
        section, key = dotted.split(".", 1)
        if raw.get(section) is None:  # absent, or a YAML section whose keys are all commented out
            raw[section] = {}
        if not isinstance(raw[section], dict):
            raise InputError(
                f"{path}: {section} = {raw[section]!r} is not a section of keys, so --set {dotted} has nowhere to go; "
                f"make [{section}] a table (see --example-config)"
            )
        raw[section][key] = value
    return raw


def _yaml(text: str) -> Any:
    """YAML as a config reads: numbers in exponent form (1e-4, as TOML and JSON write them) are numbers, where YAML
    1.1's rule takes "1e-4" for text."""
    loader = type("ConfigLoader", (yaml.SafeLoader,), {})
    loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
        list("-+0123456789."),
    )
    return yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader with one more number form


def to_toml(config: RunConfig, header: str = "") -> str:
    """The configuration as a TOML file that `load_config` reads back to an equal RunConfig (None = unset)."""
    lines = [f"# {line}" for line in header.splitlines()]
    lines.append(f"task = {json.dumps(config.task)}")
    for name, section in config.to_dict().items():
        if name == "task":
            continue
        lines.append(f"\n[{name}]")
        for key, value in section.items():
            if value is None:
                lines.append(f"# {key} unset")
            else:
                lines.append(f"{key} = {json.dumps(list(value) if isinstance(value, tuple) else value)}")
    return "\n".join(lines) + "\n"


def changed_keys(old: dict[str, Any], new: dict[str, Any], free: tuple[str, ...] = RESUME_FREE) -> list[str]:
    """Dotted keys whose values differ between two `RunConfig.to_dict()`s, ignoring `free`, in file order."""
    flat_old, flat_new = _flatten(old), _flatten(new)
    keys = list(dict.fromkeys([*flat_new, *flat_old]))
    return [k for k in keys if k not in free and flat_old.get(k, "<absent>") != flat_new.get(k, "<absent>")]


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat
