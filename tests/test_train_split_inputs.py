"""One input under two ids (a window under a '+' and a '-' id read forward, a copy under another name) in two splits
is refused before a model trains: the ids differ, the cache's item digests do not."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import write_cache
from dogmacache.errors import InputError
from dogmacache.train.task import TaskData, check_inputs_in_one_split


class _Task:
    one_split_caches = ("dna_cache",)

    def __init__(self, url):
        self.config = SimpleNamespace(data=SimpleNamespace(dna_cache=url))


def _data(train_rows, test_rows):
    return TaskData(
        splits={
            "train": pd.DataFrame({"dna_row": train_rows}),
            "validation": pd.DataFrame({"dna_row": np.zeros(0, np.int64)}),
            "test": pd.DataFrame({"dna_row": test_rows}),
        },
        fingerprints={},
    )


def test_one_window_under_two_ids_in_two_splits_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    digests = rng.integers(0, 256, (3, 32), dtype=np.uint8)
    digests[1] = digests[0]  # w1:- reads the bases w1:+ reads
    ids = ["w1:+", "w1:-", "w2:+"]
    write_cache(tmp_path / "dna.zarr", np.ones((3, 4), np.float32), ids=ids, extras={"item_sha256": digests})
    task = _Task(str(tmp_path / "dna.zarr"))
    with pytest.raises(InputError, match=r"'w1:\+' \(train\) and 'w1:-' \(test\) are one input to the model"):
        check_inputs_in_one_split(task, _data([0, 2], [1]), "labels.parquet")
    check_inputs_in_one_split(task, _data([0, 1], [2]), "labels.parquet")  # both in train: nothing scored on it
    write_cache(tmp_path / "imported.zarr", np.ones((3, 4), np.float32), ids=ids)  # no digests: not checked
    check_inputs_in_one_split(_Task(str(tmp_path / "imported.zarr")), _data([0, 2], [1]), "labels.parquet")
