"""The registry of training tasks, on top of `train/`: `[task]` names in a config -> the Task class, and what
needs that lookup (reading a config, a task's defaults, rebuilding a model from a checkpoint). `config.py` and
`checkpoint.py` stay leaves below it.

To add a model: its home under `tasks/` (a module, or a package when it has several parts: model, sizes, task,
importers) with its Task subclass (`task.py`), and one line in TASKS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dogmacache.errors import InputError
from dogmacache.train import checkpoint
from dogmacache.train.config import (
    DEFAULT_TASK,
    OutputConfig,
    RunConfig,
    TrainConfig,
    build_section,
    read_config_file,
    to_toml,
)
from dogmacache.train.task import Task
from dogmacache.train.tasks.biodta import BiodtaTask
from dogmacache.train.tasks.cdbridge.task import CdbridgeTask
from dogmacache.train.tasks.cdt.dna_mlp import DnaMlpTask
from dogmacache.train.tasks.cdt.task import CdtTask
from dogmacache.train.tasks.isoformer import IsoformerTask
from torch import nn

TASKS: dict[str, type[Task]] = {
    "cdt": CdtTask,
    "dna_mlp": DnaMlpTask,
    "isoformer": IsoformerTask,
    "cdbridge": CdbridgeTask,
    "biodta": BiodtaTask,
}


def get_task(name: str) -> type[Task]:
    if not isinstance(name, str) or name not in TASKS:
        raise InputError(f'task {name!r} is not one of {", ".join(TASKS)}; set `task = "<name>"` in the config')
    return TASKS[name]


def config_from_dict(raw: dict[str, Any], where: str = "config") -> RunConfig:
    """A parsed configuration checked against the task it names (default cdt)."""
    return RunConfig.from_dict(raw, get_task(raw.get("task", DEFAULT_TASK)), where)


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read, override (`--set`) and check a TOML or YAML configuration file; a bad `--set` is named as such."""
    raw = read_config_file(path)
    task = get_task((overrides or {}).get("task", raw.get("task", DEFAULT_TASK)))
    for dotted, value in (overrides or {}).items():
        if dotted != "task":
            check_override(task, dotted, value)
    return config_from_dict(read_config_file(path, overrides), where=str(path))


def check_override(task: type[Task], dotted: str, value: Any) -> None:
    """One `--set SECTION.KEY=VALUE` checked on its own: a known section and key, a value of the key's type and
    range; otherwise one line that names the --set item rather than the file."""
    section, key = dotted.split(".", 1)
    classes = {"data": task.data_config, "model": task.model_config, "train": TrainConfig, "output": OutputConfig}
    if section not in classes:
        raise InputError(f"--set {dotted}={value!r}: no section [{section}]; sections are {', '.join(classes)}")
    build_section(classes[section], {key: value}, section, where=f"--set {dotted}")


def default_config(task_name: str = DEFAULT_TASK) -> RunConfig:
    task = get_task(task_name)
    return RunConfig(
        task=task.name,
        data=task.data_config(),
        model=task.model_config(),
    )


def example_config(task_name: str = DEFAULT_TASK) -> str:
    """Every section and key of `task_name` with its default, as TOML."""
    return to_toml(
        default_config(task_name), f"dogmacache train configuration for task {task_name!r}: every key with its default"
    )


def load_model(path: str | Path) -> nn.Module:
    """Rebuild a trained model from its checkpoint alone, in eval mode, through the task registry."""
    saved = checkpoint.read(path)
    return checkpoint.rebuild(saved, get_task(saved["task"]).models, path)
