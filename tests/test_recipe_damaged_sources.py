"""Damaged copies of the bundled demo sources: every bad row stops a recipe with one line naming the file, the
line and the column, never a traceback and never a table of NaN labels."""

import gzip
import shutil

import pytest
from dogmacache.cli import main
from dogmacache.data_recipes import gasperini, gtex
from dogmacache.data_recipes.make_demo_data import HERE as DEMO_DATA
from dogmacache.errors import InputError

GCT = gtex.SOURCES["tpm"].filename
GTF = gtex.SOURCES["gtf"].filename
RESULTS = gasperini.SOURCES["results"].filename


@pytest.fixture
def sources(tmp_path):
    folder = tmp_path / "sources"
    shutil.copytree(DEMO_DATA, folder)
    return folder


def damage(path, line: int, edit) -> str:
    """Rewrite 1-based `line` of a gzipped text file with `edit(fields) -> fields`; returns the original line."""
    with gzip.open(path, "rt") as fh:
        lines = fh.read().split("\n")
    original = lines[line - 1]
    lines[line - 1] = "\t".join(edit(original.split("\t")))
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(lines))
    return original


def replaced(index: int, value: str):
    return lambda fields: [*fields[:index], value, *fields[index + 1 :]]


def header_of(path, line: int = 1) -> list[str]:
    with gzip.open(path, "rt") as fh:
        return fh.read().split("\n")[line - 1].split("\t")


def build_gtex(folder, out):
    return gtex.build_gtex({s.key: folder / s.filename for s in gtex.SOURCES.values()}, out, gtex.GtexConfig())


def build_gasperini(folder, out):
    paths = {s.key: folder / s.filename for s in gasperini.SOURCES.values()}
    return gasperini.build_gasperini(paths, out, gasperini.GasperiniConfig())


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_gct_row_cut_short_is_refused_naming_line_and_sample(sources, tmp_path):
    samples = header_of(sources / GCT, line=3)[2:]
    damage(sources / GCT, 6, lambda fields: fields[:12])  # the id columns and 10 of 123 samples
    with pytest.raises(InputError) as err:
        build_gtex(sources, tmp_path / "out")
    message = one_line(err)
    assert GCT in message and "line 6" in message and f"column 13 ({samples[10]!r})" in message
    assert "ends early" in message


@pytest.mark.parametrize("value", ["NaN", "", "abc", "-3.0", "inf"])
def test_gct_cell_that_is_not_a_tpm_is_refused_naming_line_and_sample(sources, tmp_path, value):
    samples = header_of(sources / GCT, line=3)[2:]
    damage(sources / GCT, 9, replaced(2 + 7, value))
    with pytest.raises(InputError) as err:
        build_gtex(sources, tmp_path / "out")
    message = one_line(err)
    assert GCT in message and "line 9" in message and f"column 10 ({samples[7]!r})" in message
    assert "non-negative" in message


def test_recipe_gtex_command_exits_2_on_a_short_gct_row(sources, tmp_path, capsys):
    damage(sources / GCT, 4, lambda fields: fields[:3])
    code = main(
        [
            "recipe",
            "gtex",
            "--out",
            str(tmp_path / "out"),
            "--source-dir",
            str(sources),
            "--cache-dir",
            str(tmp_path / "downloads"),
        ]
    )
    assert code == 2
    assert not (tmp_path / "out" / "labels.parquet").exists()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "line 4" in err


def test_gtf_start_that_is_not_a_number_is_refused(sources, tmp_path):
    assert damage(sources / GTF, 4, replaced(3, "x14094")).split("\t")[3] == "14094"
    with pytest.raises(InputError) as err:
        build_gtex(sources, tmp_path / "out")
    message = one_line(err)
    assert GTF in message and "line 4" in message and "column 4 (start)" in message and "'x14094'" in message


def test_gtf_transcript_without_transcript_id_is_refused(sources, tmp_path):
    def drop_id(fields):
        attributes = [a for a in fields[8].split(";") if "transcript_id" not in a]
        return [*fields[:8], ";".join(attributes)]

    assert "\ttranscript\t" in damage(sources / GTF, 4, drop_id)
    with pytest.raises(InputError) as err:
        build_gtex(sources, tmp_path / "out")
    message = one_line(err)
    assert GTF in message and "line 4" in message and "transcript_id" in message and "column 9" in message


@pytest.mark.parametrize(
    ("column", "value"),
    [("beta", "oops"), ("target_site.start", "abc"), ("target_site.stop", ""), ("pvalue.empirical.adjusted", "oops")],
)
def test_gasperini_value_that_is_not_a_number_is_refused(sources, tmp_path, column, value):
    index = header_of(sources / RESULTS).index(column)
    damage(sources / RESULTS, 7, replaced(index, value))
    with pytest.raises(InputError) as err:
        build_gasperini(sources, tmp_path / "out")
    message = one_line(err)
    assert RESULTS in message and "line 7" in message and f"column {index + 1} ({column!r})" in message
    assert (repr(value) if value else "is empty or NA") in message


@pytest.mark.parametrize("column", ["target_site.start", "target_gene.stop"])
def test_gasperini_position_that_is_not_whole_is_refused_not_truncated(sources, tmp_path, column):
    index = header_of(sources / RESULTS).index(column)
    original = damage(sources / RESULTS, 7, lambda fields: fields).split("\t")[index]
    damage(sources / RESULTS, 7, replaced(index, f"{original}.9"))
    paths = {s.key: sources / s.filename for s in gasperini.SOURCES.values()}
    config = gasperini.GasperiniConfig(max_distance_kb=10_000)  # reads the gene's ends too
    with pytest.raises(InputError) as err:
        gasperini.build_gasperini(paths, tmp_path / "out", config)
    message = one_line(err)
    assert "line 7" in message and f"({column!r})" in message and "whole number" in message


def test_gasperini_row_cut_short_is_refused(sources, tmp_path):
    header = header_of(sources / RESULTS)
    damage(sources / RESULTS, 11, lambda fields: fields[:13])
    with pytest.raises(InputError) as err:
        build_gasperini(sources, tmp_path / "out")
    message = one_line(err)
    assert RESULTS in message and "line 11" in message and f"13 of the header's {len(header)}" in message
    assert repr(header[13]) in message


def test_gasperini_na_beta_stays_a_counted_drop(sources, tmp_path):
    index = header_of(sources / RESULTS).index("beta")
    damage(sources / RESULTS, 7, replaced(index, "NA"))
    manifest = build_gasperini(sources, tmp_path / "out")
    assert manifest["missing"]["beta"] == 1 and manifest["tables"]["labels"]["rows"] == 1059


@pytest.mark.parametrize("block_bytes", [3, 7, 1 << 22])
def test_misshapen_line_found_across_read_blocks(tmp_path, block_bytes):
    from dogmacache.data_recipes.formats import CR_LINE_ENDS, FieldCheck

    def first_misshapen_line(path, n_fields, first_line, block_bytes):
        """FieldCheck over the file's bytes in blocks of `block_bytes`, as a read passes them."""
        check, data = FieldCheck(n_fields, first_line), path.read_bytes()
        for start in range(0, len(data), block_bytes):
            bad = check.feed(data[start : start + block_bytes])
            if bad is not None:
                return bad
        return check.end()

    path = tmp_path / "t.tsv"
    path.write_text("a\tb\tc\n1\t2\t3\n4\t5\t6\n7\t8\n9\t10\t11\n")
    assert first_misshapen_line(path, 3, 2, block_bytes=block_bytes) == (4, 2)
    path.write_text("a\tb\tc\n1\t2\t3\n\n4\t5\t6")  # a blank line; the last line without its newline
    assert first_misshapen_line(path, 3, 2, block_bytes=block_bytes) == (3, 0)
    path.write_text("a\tb\tc\n1\t2\t3\n4\t5")
    assert first_misshapen_line(path, 3, 2, block_bytes=block_bytes) == (3, 2)
    path.write_text("a\tb\tc\n1\t2\t3\n4\t5\t6\n")
    assert first_misshapen_line(path, 3, 2, block_bytes=block_bytes) is None
    path.write_text("a\tb\tc\n1\t2\t3\n4\t0.9\t5\t6\n7\t8\t9\n")  # a field too many
    assert first_misshapen_line(path, 3, 2, block_bytes=block_bytes) == (3, 4)
    path.write_text("a\tb\tc\n1\t2\t3\n4\t5\t6\t7")  # too many on the last line, without its newline
    assert first_misshapen_line(path, 3, 2, block_bytes=block_bytes) == (3, 4)
    path.write_bytes(b"a\tb\tc\r\n1\t2\t3\r\n\r\n4\t5\t6\r\n")  # CRLF: a blank line has no field
    assert first_misshapen_line(path, 3, 2, block_bytes=block_bytes) == (3, 0)
    path.write_bytes(b"a\tb\tc\r1\t2\t3\r4\t5\t6\t7\r")  # lone CR line ends: pandas splits there, a count cannot
    assert first_misshapen_line(path, 3, 2, block_bytes=block_bytes)[1] == CR_LINE_ENDS


def test_a_quote_is_a_character_so_pandas_splits_lines_as_the_field_count_does(tmp_path):
    from dogmacache.data_recipes.formats import read_table

    path = tmp_path / "t.tsv"
    path.write_text('SAMPID\tSMTS\nS1\tHeart\nS2\t"5 in\nS3\tLung\nS4\tBrain\n')  # an unclosed quote
    table = read_table(path, ["SAMPID", "SMTS"])
    assert list(table["SAMPID"]) == ["S1", "S2", "S3", "S4"] and list(table.index) == [2, 3, 4, 5]
    path.write_text('a\tb\n1\t"x\ty"\n')  # a tab inside quotes is a field separator, read and counted alike
    with pytest.raises(InputError, match="line 2 has 3 tab-separated fields"):
        read_table(path, ["a", "b"])


@pytest.mark.parametrize("line", [2, 11])  # the first data row (pandas would take it as an index) and a later one
def test_gasperini_row_with_a_field_too_many_is_refused(sources, tmp_path, line):
    header = header_of(sources / RESULTS)
    index = header.index("beta")
    damage(sources / RESULTS, line, lambda fields: [*fields[:index], "0.9", *fields[index:]])
    with pytest.raises(InputError) as err:
        build_gasperini(sources, tmp_path / "out")
    message = one_line(err)
    assert RESULTS in message and f"line {line} has {len(header) + 1} tab-separated fields" in message
    assert not (tmp_path / "out" / "labels.parquet").exists()


@pytest.mark.parametrize("line", [4, 9])
def test_gct_row_with_a_field_too_many_is_refused(sources, tmp_path, line):
    header = header_of(sources / GCT, line=3)
    damage(sources / GCT, line, lambda fields: [*fields[:2], "0", *fields[2:]])
    with pytest.raises(InputError) as err:
        build_gtex(sources, tmp_path / "out")
    message = one_line(err)
    assert GCT in message and f"line {line} has {len(header) + 1} tab-separated fields" in message


def test_gct_header_naming_a_sample_twice_or_other_than_line_2_counts_is_refused(sources, tmp_path):
    header = header_of(sources / GCT, line=3)
    damage(sources / GCT, 3, lambda fields: [*fields[:-1], fields[2]])
    with pytest.raises(InputError) as err:
        build_gtex(sources, tmp_path / "out")
    assert f"names sample {header[2]!r} twice" in one_line(err)
    shutil.copy(DEMO_DATA / GCT, sources / GCT)
    damage(sources / GCT, 2, lambda fields: [fields[0], "99"])
    with pytest.raises(InputError) as err:
        build_gtex(sources, tmp_path / "out")
    assert f"line 2 declares 99 samples but its header (line 3) names {len(header) - 2}" in one_line(err)


def test_a_recipe_run_leaves_no_table_of_an_earlier_recipe_in_its_folder(tmp_path):
    import pandas as pd
    from dogmacache.data_recipes import tables

    def write(names):
        frames = {name: pd.DataFrame({"id": ["a"]}) for name in names}
        return tables.write_outputs(tmp_path, "x", frames, counts={}, missing={}, sources={}, params={})

    write(["one", "two"])
    (tmp_path / "mine.parquet").write_bytes(b"a user's file")  # no recipe listed it: kept
    write(["one"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.parquet", "one.parquet", "recipe.json"]


def test_recipe_demo_reads_the_source_dir_it_is_given(tmp_path, capsys):
    from dogmacache.data_recipes.make_demo_data import write_demo_data

    null_sources = tmp_path / "null_sources"
    write_demo_data(null_sources, null=True)
    assert main(["recipe", "demo", "--out", str(tmp_path / "null"), "--source-dir", str(null_sources)]) == 0
    recipe = (tmp_path / "null" / "cdt" / "recipe.json").read_text()
    assert str(null_sources / RESULTS) in recipe
    import pandas as pd

    null_beta = pd.read_parquet(tmp_path / "null" / "cdt" / "labels.parquet")["beta"]
    assert main(["recipe", "demo", "--out", str(tmp_path / "real")]) == 0
    assert not null_beta.equals(pd.read_parquet(tmp_path / "real" / "cdt" / "labels.parquet")["beta"])
    capsys.readouterr()
    assert main(["recipe", "demo", "--out", str(tmp_path / "x"), "--source-dir", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "lacks" in err and "--source-dir" in err


def test_recipe_gene_tss_names_a_missing_gtf_and_takes_no_source_dir(tmp_path, capsys):
    genes = tmp_path / "genes.txt"
    genes.write_text("A\n")
    args = ["recipe", "gene_tss", "--out", str(tmp_path / "o"), "--gtf", str(tmp_path / "no.gtf"), "--genes"]
    assert main([*args, str(genes)]) == 2
    assert "--gtf" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, str(genes), "--source-dir", str(tmp_path)])
