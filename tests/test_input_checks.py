"""The checks embed makes of an input table before any work: every row has an id (and a DNA row its chrom and a
whole-number centre), a strand is '+', '-' or none ('.' or empty: read as '+', kept as written), and start/end are
BED coordinates. Each bad value is one line naming the row."""

import math

import numpy as np
import pandas as pd
import pytest
from dogmacache.cache.layout import check_ids
from dogmacache.cli import main
from dogmacache.embed.genome import Genome
from dogmacache.embed.inputs import read_input_table
from dogmacache.errors import CacheError, InputError

SEQ = "".join(np.random.default_rng(0).choice(list("ACGT"), 600))


def _table(tmp_path, name: str, **columns) -> str:
    path = tmp_path / name
    table = pd.DataFrame(columns)
    if name.endswith(".tsv"):
        table.to_csv(path, sep="\t", index=False)
    else:
        table.to_parquet(path, index=False)
    return str(path)


def _one_line(err: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.mark.parametrize(
    ("name", "columns", "message"),
    [
        ("t.parquet", {"id": ["a", None], "chrom": ["chr1"] * 2, "center": [100, 200]}, r"t.parquet row 1 has no id"),
        ("t.tsv", {"id": ["a", np.nan], "chrom": ["chr1"] * 2, "center": [100, 200]}, r"t.tsv line 3 has no id"),
        ("t.tsv", {"id": ["a", "b"], "chrom": ["chr1", None], "center": [100, 200]}, r"line 3 \(id 'b'\) has no chrom"),
        ("t.parquet", {"id": ["a", "b"], "chrom": ["chr1"] * 2, "center": [np.nan, 2.0]}, r"row 0 \(id 'a'\) has no c"),
    ],
    ids=["parquet-id", "tsv-id", "chrom", "center"],
)
def test_an_empty_id_chrom_or_centre_cell_is_one_line_naming_the_row(tmp_path, name, columns, message):
    with pytest.raises(InputError, match=message + r".*fill it in or drop the row") as err:
        read_input_table(_table(tmp_path, name, **columns), "dna")
    _one_line(err)


def test_an_empty_id_of_an_rna_table_is_refused_too(tmp_path):
    with pytest.raises(InputError, match=r"row 1 has no id"):
        read_input_table(_table(tmp_path, "r.parquet", id=["a", None], sequence=["ACG", "TTA"]), "rna")


def test_check_ids_takes_none_and_nan_for_empty_ids():
    for missing in (None, math.nan, np.float64("nan")):
        with pytest.raises(CacheError, match=r"ids at rows \[1\] are empty"):
            check_ids(["a", missing, "c"])
    assert check_ids(["a", 7]) == ["a", "7"]


def test_strands_are_plus_or_minus_or_none_and_none_is_kept_as_written(tmp_path):
    strands = ["+", "-", ".", None]
    for name in ("s.tsv", "s.parquet"):
        table = read_input_table(
            _table(tmp_path, name, id=list("abcd"), chrom=["1"] * 4, center=[5] * 4, strand=strands), "dna"
        )
        assert table["strand"].tolist() == ["+", "-", ".", "."]  # no strand kept as written: the digest holds it
    plain = read_input_table(_table(tmp_path, "p.tsv", id=["a"], chrom=["1"], center=[5]), "dna")
    assert plain["strand"].tolist() == ["+"]


@pytest.mark.parametrize(
    ("name", "strand", "message"),
    [
        ("s.tsv", ["+", "-1"], r"s.tsv line 3 \(id 'b'\): strand '-1' is not '\+' or '-' \(1 such rows\)"),
        ("s.parquet", [1, -1], r"s.parquet row 0 \(id 'a'\): strand 1 is not '\+' or '-' \(2 such rows\)"),
        ("s.tsv", ["+", "minus"], r"line 3 \(id 'b'\): strand 'minus' is not"),
    ],
    ids=["biomart-text", "biomart-numbers", "word"],
)
def test_another_strand_is_one_line_naming_the_value_and_row(tmp_path, name, strand, message):
    path = _table(tmp_path, name, id=["a", "b"], chrom=["1", "1"], center=[5, 6], strand=strand)
    with pytest.raises(InputError, match=message + r".*'\.' or an empty cell .*write 1 / -1 as \+ / -") as err:
        read_input_table(path, "dna")
    _one_line(err)


@pytest.mark.parametrize(
    ("name", "center", "shown"),
    [("c.tsv", ["100", "abc"], "'abc'"), ("c.tsv", [100.0, 200.7], "200.7"), ("c.parquet", [100.0, 200.5], "200.5")],
    ids=["text", "fraction-tsv", "fraction-parquet"],
)
def test_a_centre_that_is_not_a_whole_number_is_one_line(tmp_path, name, center, shown):
    path = _table(tmp_path, name, id=["a", "b"], chrom=["1", "1"], center=center)
    with pytest.raises(
        InputError, match=rf"\(id 'b'\): center is {shown} .*expected a whole number, the 1-based"
    ) as err:
        read_input_table(path, "dna")
    _one_line(err)


def test_whole_number_centres_are_taken_as_written(tmp_path):
    floats = read_input_table(_table(tmp_path, "f.parquet", id=["a"], chrom=["1"], center=[100.0]), "dna")
    assert floats["center"].tolist() == [100.0]  # as it was: the input digest is unchanged
    text = read_input_table(_table(tmp_path, "t.parquet", id=["a"], chrom=["1"], center=["100"]), "dna")
    assert text["center"].tolist() == [100] and text["center"].dtype == np.int64


def test_start_and_end_are_bed_coordinates_and_the_window_is_centred_on_the_interval(tmp_path):
    """[start, end) 0-based: a window as long as the interval holds exactly its bases, for odd and even lengths."""
    (tmp_path / "g.fa").write_text(">chr1\n" + "\n".join(SEQ[i : i + 60] for i in range(0, len(SEQ), 60)) + "\n")
    genome = Genome(tmp_path / "g.fa")
    starts, ends = [99, 99, 99, 99, 0], [100, 101, 102, 103, 8]
    path = _table(tmp_path, "bed.tsv", id=list("abcde"), chrom=["chr1"] * 5, start=starts, end=ends)
    table = read_input_table(path, "dna")
    assert table["center"].tolist() == [100, 101, 101, 102, 5]
    for start, end, center in zip(starts, ends, table["center"], strict=True):
        assert genome.window("chr1", center, end - start) == (SEQ[start:end], 0)


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        ([99, "x"], [101, 201], r"line 3 \(id 'b'\): start is 'x' .*a 0-based BED coordinate"),
        ([99, 200], [101, 200], r"line 3 \(id 'b'\): start 200 and end 200 are no interval.*0 <= start < end"),
        ([-1, 200], [1, 300], r"line 2 \(id 'a'\): start -1 and end 1 are no interval"),
        ([99, 200.5], [101, 300], r"start is 200.5 .*whole number"),
    ],
    ids=["text", "empty", "negative", "fraction"],
)
def test_bad_start_or_end_is_one_line(tmp_path, start, end, message):
    path = _table(tmp_path, "bed.tsv", id=["a", "b"], chrom=["chr1"] * 2, start=start, end=end)
    with pytest.raises(InputError, match=message) as err:
        read_input_table(path, "dna")
    _one_line(err)


def test_embed_refuses_a_bad_strand_in_one_line_and_embeds_no_strand_as_plus(tmp_path, capsys):
    (tmp_path / "g.fa").write_text(">chr1\n" + "\n".join(SEQ[i : i + 60] for i in range(0, len(SEQ), 60)) + "\n")
    base = ["embed", "--modality", "dna", "--model", "kmer", "--kmer-bins", "2", "--kmer-bin-bp", "16"]
    base += ["--genome", str(tmp_path / "g.fa"), "--no-progress", "--num-workers", "0"]
    bad = _table(tmp_path, "bad.tsv", id=["a", "b"], chrom=["chr1"] * 2, center=[100, 200], strand=["+", "-1"])
    assert main([*base, "--input", bad, "--out", str(tmp_path / "bad.zarr")]) == 2
    err = capsys.readouterr().err
    assert "strand '-1' is not '+' or '-'" in err and "Traceback" not in err
    none = _table(tmp_path, "none.parquet", id=["a", "b"], chrom=["chr1"] * 2, center=[100, 200], strand=["+", None])
    plus = _table(tmp_path, "plus.parquet", id=["a", "b"], chrom=["chr1"] * 2, center=[100, 200], strand=["+", "+"])
    assert main([*base, "--input", none, "--out", str(tmp_path / "none.zarr")]) == 0
    assert main([*base, "--input", plus, "--out", str(tmp_path / "plus.zarr")]) == 0
    from dogmacache.cache import open_cache

    a, b = open_cache(tmp_path / "none.zarr"), open_cache(tmp_path / "plus.zarr")
    np.testing.assert_array_equal(a[:], b[:])
    # the same numbers; the tables differ (one says no strand), and so do their digests, as the files wrote them
    assert a.manifest.input_digest != b.manifest.input_digest
