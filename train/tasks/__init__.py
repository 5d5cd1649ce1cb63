"""The registry of training tasks: `[task]` names in a config -> the Task class (see `base.py`).
To add a model: one file here with its Task subclass (data, batches, model, loss, metrics, baselines) and a line
in TASKS."""

from dogmacache.errors import InputError
from dogmacache.train.tasks.base import Chunk, FittedBaseline, FixedBaseline, Task, TaskData
from dogmacache.train.tasks.biodta import BiodtaTask
from dogmacache.train.tasks.cdbridge import CdbridgeTask
from dogmacache.train.tasks.cdt import CdtTask
from dogmacache.train.tasks.dna_mlp import DnaMlpTask
from dogmacache.train.tasks.isoformer import IsoformerTask

TASKS: dict[str, type[Task]] = {
    "cdt": CdtTask,
    "dna_mlp": DnaMlpTask,
    "isoformer": IsoformerTask,
    "cdbridge": CdbridgeTask,
    "biodta": BiodtaTask,
}


def get_task(name: str) -> type[Task]:
    if name not in TASKS:
        raise InputError(f'task {name!r} is not one of {", ".join(TASKS)}; set `task = "<name>"` in the config')
    return TASKS[name]


__all__ = ["TASKS", "Chunk", "FittedBaseline", "FixedBaseline", "Task", "TaskData", "get_task"]
