"""Local path or URL, and disk errors as one line: decided once in `cache/storage.py`."""

import errno
import os

import pytest
from dogmacache.cache.storage import disk_error, local_path
from dogmacache.errors import CacheError, InputError


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("out/c.zarr", "out/c.zarr"),
        ("/abs/c.zarr", "/abs/c.zarr"),
        ("file:///abs/c.zarr", "/abs/c.zarr"),
        ("https://host/c.zarr", None),
        ("http://host/c.zarr", None),
        ("hf://datasets/me/caches/c.zarr", None),
    ],
)
def test_local_path_or_url(url, local):
    assert local_path(url) == local


def test_a_disk_error_anywhere_in_the_chain_is_one_line():
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "out/c.zarr/embeddings")
    try:
        try:
            raise full
        except OSError as err:
            raise RuntimeError("shard write failed") from err
    except RuntimeError as wrapped:
        line = disk_error(wrapped, "write out/c.zarr", "1 of 2 shards are kept")
    assert isinstance(line, CacheError) and "\n" not in str(line)
    assert str(line) == (
        "cannot write out/c.zarr: No space left on device (ENOSPC) on out/c.zarr/embeddings; 1 of 2 shards are "
        "kept; free some space, then re-run the same command to resume"
    )
    read_only = disk_error(OSError(errno.EROFS, os.strerror(errno.EROFS)), "create x", "nothing was written")
    assert "(EROFS); nothing was written; make it writable" in str(read_only)
    as_input = disk_error(OSError(errno.EDQUOT, "quota"), "download u into d", "what arrived is kept", InputError)
    assert type(as_input) is InputError and "(EDQUOT); what arrived is kept; free some space" in str(as_input)
    assert disk_error(OSError(errno.ENOENT, "gone"), "create x", "nothing was written") is None
    assert disk_error(ValueError("no disk here"), "create x", "nothing was written") is None


def test_replace_whole_leaves_the_old_file_whole_when_the_write_stops(tmp_path):
    from dogmacache.cache.storage import replace_whole

    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), replace_whole(target) as tmp:
        tmp.write_text("half of the ne")
        raise KeyboardInterrupt  # Ctrl-C midway
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    with replace_whole(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name == ".metrics.json.tmp"
        tmp.write_text("new")
        assert target.read_text() == "old"  # replaced only once the block ends
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
