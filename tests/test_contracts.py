"""The shared contracts: split checks and the one table reader."""

import pytest


def test_split_check_names_rows_and_ids():
    import pandas as pd
    from dogmacache.contracts import check_splits
    from dogmacache.errors import InputError

    table = pd.DataFrame({"id": ["a", "b", "c"], "split": ["train", "tran", "test"]})
    with pytest.raises(InputError, match=r"t.parquet: 1 row\(s\) have a split other than .*: row 1 \('tran', id 'b'\)"):
        check_splits(table, "t.parquet", "id")
    check_splits(table.iloc[[0, 2]], "t.parquet")  # known splits pass


def test_one_table_reader_for_every_stage(tmp_path):
    import pandas as pd
    from dogmacache.contracts import read_table
    from dogmacache.embed.inputs import read_input_table
    from dogmacache.errors import InputError
    from dogmacache.train.task import read_table as task_read_table

    assert task_read_table is read_table
    table = pd.DataFrame({"id": ["a", "b"], "split": ["train", "test"], "sequence": ["ACG", "TT"]})
    table.to_parquet(tmp_path / "t.parquet")
    table.to_csv(tmp_path / "t.tsv", sep="\t", index=False)
    table.to_csv(tmp_path / "t.tsv.gz", sep="\t", index=False)
    for name in ("t.parquet", "t.tsv", "t.tsv.gz"):
        assert read_table(tmp_path / name, ("id", "split")).to_dict("list") == table.to_dict("list")
        assert read_input_table(tmp_path / name, "rna")["id"].tolist() == ["a", "b"]
    with pytest.raises(InputError, match=r"^windows table '.*none.tsv' does not exist; run `dogmacache recipe gtex`"):
        read_table(tmp_path / "none.tsv", recipe="gtex", what="windows table")
    with pytest.raises(InputError, match=r"t.tsv has no column 'beta'; a pairs table has beta$"):
        read_table(tmp_path / "t.tsv", ("id", "beta"), expected="a pairs table has beta")
    table.assign(split=["train", "dev"]).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(InputError, match=r"row 1 \('dev', id 'b'\)"):
        read_table(tmp_path / "bad.parquet", ("split",))
    with pytest.raises(InputError, match=r"input table '.*none.tsv' does not exist"):
        read_input_table(tmp_path / "none.tsv", "rna")


def test_text_columns_stay_text_and_an_unreadable_table_is_one_line(tmp_path):
    import pandas as pd
    from dogmacache.contracts import read_table
    from dogmacache.errors import InputError

    (tmp_path / "w.tsv").write_text("id\tchrom\tcenter\tgene_id\tbeta\n0001\t1\t500\t007\t0.5\n")
    table = read_table(tmp_path / "w.tsv", ("id", "chrom"))
    assert table.loc[0, ["id", "chrom", "gene_id"]].tolist() == ["0001", "1", "007"]
    assert table["center"].dtype.kind == "i" and table["beta"].dtype.kind == "f"  # numbers stay numbers
    (tmp_path / "labels.csv").write_text("id,split\na,train\n")
    with pytest.raises(
        InputError, match=r"labels table '.*labels.csv' is not a readable parquet table .*tab-separated"
    ):
        read_table(tmp_path / "labels.csv")
    (tmp_path / "bin.tsv").write_bytes(b"\xe0\xff\x00\x01\n\xfe")
    with pytest.raises(InputError, match=r"is not a readable tab-separated text table"):
        read_table(tmp_path / "bin.tsv")
    pd.DataFrame({"id": ["a"]}).to_parquet(tmp_path / "fine.parquet")
    assert read_table(tmp_path / "fine.parquet")["id"].tolist() == ["a"]


def test_a_row_with_a_field_more_than_the_header_is_one_line_not_a_shifted_table(tmp_path):
    """pandas would take the first column as the index and name every other column after its neighbour."""
    from dogmacache.contracts import read_table
    from dogmacache.embed.inputs import read_input_table
    from dogmacache.errors import InputError

    (tmp_path / "l.tsv").write_text("id\tsplit\na\ttrain\textra\n")
    with pytest.raises(InputError, match=r"not a readable .*the first row under the header has 3 fields, the header 2"):
        read_table(tmp_path / "l.tsv", ("id", "split"))
    (tmp_path / "w.tsv").write_text("id\tchrom\tcenter\na\tchr1\t100\tchr1\n")
    with pytest.raises(InputError, match=r"has 4 fields, the header 3") as err:
        read_input_table(tmp_path / "w.tsv", "dna")
    assert "\n" not in str(err.value)
    (tmp_path / "later.tsv").write_text("id\tsplit\na\ttrain\nb\ttest\textra\n")
    with pytest.raises(InputError, match=r"Expected 2 fields in line 3, saw 3"):
        read_table(tmp_path / "later.tsv")
    (tmp_path / "trailing.tsv").write_text("id\tsplit\na\ttrain\t\nb\ttest\t\n")  # empty last fields: read
    assert read_table(tmp_path / "trailing.tsv").to_dict("list") == {"id": ["a", "b"], "split": ["train", "test"]}
