"""A genome FASTA without its `.fai` in a folder that cannot be written: the index is built in the user's cache
folder, or the error says how to make one."""

import os

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
