"""A genome FASTA without its `.fai` in a folder that cannot be written: the index is built in the user's cache
folder, or the error says how to make one. An index that no longer describes its FASTA (the FASTA replaced in place)
is built again; a FASTA that cannot be indexed is one line saying how to mend it."""

import os
from pathlib import Path

import pytest
from dogmacache.embed.genome import Genome
from dogmacache.errors import InputError

SEQ = "ACGTTGCA" * 40


@pytest.fixture
def read_only_fasta(tmp_path):
    folder = tmp_path / "genomes"
    folder.mkdir()
    fasta = folder / "g.fa"
    fasta.write_text(">chr1\n" + "\n".join(SEQ[i : i + 60] for i in range(0, len(SEQ), 60)) + "\n")
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as root: a read-only folder can still be written")
        yield fasta
    finally:
        folder.chmod(0o755)


def test_fasta_in_a_read_only_folder_is_indexed_in_the_cache_folder(read_only_fasta, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert Genome(read_only_fasta).window("chr1", 5, 8) == (SEQ[:8], 0)
    assert sorted(p.name for p in read_only_fasta.parent.iterdir()) == ["g.fa"]  # nothing written beside it
    fai_dir = tmp_path / "cache" / "dogmacache" / "fai"
    kept = list(fai_dir.iterdir())
    assert len(kept) == 1 and kept[0].name.startswith("g.fa.") and kept[0].name.endswith(".fai")
    assert Genome(read_only_fasta).length("1") == len(SEQ)  # the kept index is reused
    assert list(fai_dir.iterdir()) == kept


def test_fasta_in_a_read_only_folder_without_a_writable_cache_says_how_to_index_it(
    read_only_fasta, tmp_path, monkeypatch
):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o555)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    try:
        with pytest.raises(InputError, match=r"samtools faidx .*g\.fa.*writable folder") as err:
            Genome(read_only_fasta).window("chr1", 5, 8)
        assert "\n" not in str(err.value) and "g.fa" in str(err.value)
        assert list(cache.iterdir()) == []
    finally:
        cache.chmod(0o755)


def _write_fasta(path: Path, records: dict[str, str], width: int = 60) -> None:
    path.write_text(
        "".join(
            f">{name}\n" + "".join(seq[i : i + width] + "\n" for i in range(0, len(seq), width))
            for name, seq in records.items()
        )
    )


def _replaced_in_place(folder: Path) -> tuple[Path, str]:
    """g.fa indexed beside it, then replaced by a FASTA with another record before chr1 (so chr1's bytes lie
    elsewhere) and the old index left behind; returns the FASTA and the new chr1."""
    fasta = folder / "g.fa"
    _write_fasta(fasta, {"chr1": SEQ})
    assert Genome(fasta).window("chr1", 5, 8) == (SEQ[:8], 0)  # indexes it beside the FASTA
    new_chr1 = SEQ[::-1]
    _write_fasta(fasta, {"chr0": "A" * 130, "chr1": new_chr1})
    return fasta, new_chr1


def test_an_index_older_than_its_fasta_is_built_again(tmp_path):
    fasta, new_chr1 = _replaced_in_place(tmp_path)
    fai = tmp_path / "g.fa.fai"
    old = fasta.stat().st_mtime_ns - 10**9
    os.utime(fai, ns=(old, old))
    assert Genome(fasta).window("chr1", 5, 8) == (new_chr1[:8], 0)
    assert fai.read_text().splitlines()[0].split("\t")[0] == "chr0"  # the index beside it was replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.fa", "g.fa.fai"]  # no part file left


def test_an_index_that_does_not_match_the_file_size_is_built_again_though_newer(tmp_path):
    fasta, new_chr1 = _replaced_in_place(tmp_path)
    fai = tmp_path / "g.fa.fai"
    newer = fasta.stat().st_mtime_ns + 10**9
    os.utime(fai, ns=(newer, newer))  # e.g. the FASTA copied back with its old mtime kept
    assert Genome(fasta).length("chr1") == len(new_chr1)
    assert Genome(fasta).window("chr1", 5, 8) == (new_chr1[:8], 0)


def test_an_out_of_date_index_in_a_read_only_folder_is_passed_over_for_the_cache_folder(tmp_path, monkeypatch):
    folder = tmp_path / "genomes"
    folder.mkdir()
    fasta, new_chr1 = _replaced_in_place(folder)
    fai = folder / "g.fa.fai"
    old = fasta.stat().st_mtime_ns - 10**9
    os.utime(fai, ns=(old, old))
    stale = fai.read_text()
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == folder else access(p, mode))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert Genome(fasta).window("chr1", 5, 8) == (new_chr1[:8], 0)
    assert fai.read_text() == stale  # the read-only folder is left alone
    assert len(list((tmp_path / "cache" / "dogmacache" / "fai").iterdir())) == 1


def test_a_fasta_with_two_records_of_one_name_is_one_line(tmp_path):
    fasta = tmp_path / "dup.fa"
    _write_fasta(fasta, {"chr1": SEQ[:20]})
    fasta.write_text(fasta.read_text() + ">chr1\n" + SEQ[:10] + "\n")
    for _ in range(2):  # without an index, then with one samtools wrote (two chr1 lines)
        with pytest.raises(InputError, match=r"more than one record named 'chr1'.*rename") as err:
            Genome(fasta).window("chr1", 5, 8)
        assert "\n" not in str(err.value) and "dup.fa" in str(err.value)
        (tmp_path / "dup.fa.fai").write_text("chr1\t20\t6\t20\t21\nchr1\t10\t33\t10\t11\n")


def test_a_fasta_with_ragged_lines_is_one_line(tmp_path):
    fasta = tmp_path / "ragged.fa"
    fasta.write_text(">chr1\nACGTACGTAC\nACGTAC\nACGTACGTAC\n")
    with pytest.raises(InputError, match=r"ragged\.fa.*cannot be indexed.*seqkit seq -w 60") as err:
        Genome(fasta).window("chr1", 5, 4)
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ragged.fa"]  # no index or part file left


@pytest.mark.parametrize("last_line_end", ["", "\n"])
def test_an_index_just_built_fits_with_or_without_a_last_line_end(tmp_path, last_line_end):
    """A last record whose length is a whole number of lines, without a line end after it: its index fits (it was
    taken for out of date and built again on every open)."""
    from dogmacache.embed.genome import Genome, index_fits

    fasta = tmp_path / "g.fa"
    fasta.write_text(">chr1\n" + "ACGT" * 15 + "\n" + ">chr2\n" + "ACGTAC" * 10 + "\n" + "GATTAC" * 10 + last_line_end)
    assert Genome(fasta).length("chr2") == 120  # builds g.fa.fai
    fai = tmp_path / "g.fa.fai"
    assert index_fits(fasta, fai)
    built = fai.stat().st_mtime_ns
    assert Genome(fasta).window("chr2", 61, 2) == ("CG", 0)  # across the line end
    assert fai.stat().st_mtime_ns == built  # not built again


def test_an_index_fits_a_fasta_that_ends_in_an_empty_record(tmp_path):
    from dogmacache.embed.genome import Genome, index_fits

    fasta = tmp_path / "g.fa"
    fasta.write_text(">a\nACGTACGT\nACG\n>b\n")
    assert Genome(fasta).length("a") == 11
    assert index_fits(fasta, tmp_path / "g.fa.fai")


def test_a_span_past_either_end_is_padded_with_n_to_its_length(tmp_path):
    fasta = tmp_path / "g.fa"
    fasta.write_text(">chr1\n" + SEQ + "\n")
    genome = Genome(fasta)
    n = len(SEQ)
    assert genome.span("chr1", -3, 8) == ("NNN" + SEQ[:5], 3)
    assert genome.span("chr1", n - 2, 8) == (SEQ[-2:] + "N" * 6, 6)
    # wholly off the chromosome, on either side: all N, still `length` long (a window cut short would shift the rest)
    assert genome.span("chr1", n + 5, 8) == ("N" * 8, 8)
    assert genome.span("chr1", -20, 8) == ("N" * 8, 8)
