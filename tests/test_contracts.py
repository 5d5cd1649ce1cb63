"""The shared contracts: split checks."""

import pytest


def test_split_check_names_rows_and_ids():
    import pandas as pd
    from dogmacache.contracts import check_splits
    from dogmacache.errors import InputError

    table = pd.DataFrame({"id": ["a", "b", "c"], "split": ["train", "tran", "test"]})
    with pytest.raises(InputError, match=r"t.parquet: 1 row\(s\) have a split other than .*: row 1 \('tran', id 'b'\)"):
        check_splits(table, "t.parquet", "id")
    check_splits(table.iloc[[0, 2]], "t.parquet")  # known splits pass
