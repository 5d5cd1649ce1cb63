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
def test_short_line_found_across_read_blocks(tmp_path, block_bytes):
    from dogmacache.data_recipes.formats import first_short_line

    path = tmp_path / "t.tsv"
    path.write_text("a\tb\tc\n1\t2\t3\n4\t5\t6\n7\t8\n9\t10\t11\n")
    assert first_short_line(path, 3, 2, block_bytes=block_bytes) == (4, 2)
    path.write_text("a\tb\tc\n1\t2\t3\n\n4\t5\t6")  # a blank line; the last line without its newline
    assert first_short_line(path, 3, 2, block_bytes=block_bytes) == (3, 0)
    path.write_text("a\tb\tc\n1\t2\t3\n4\t5")
    assert first_short_line(path, 3, 2, block_bytes=block_bytes) == (3, 2)
    path.write_text("a\tb\tc\n1\t2\t3\n4\t5\t6\n")
    assert first_short_line(path, 3, 2, block_bytes=block_bytes) is None
