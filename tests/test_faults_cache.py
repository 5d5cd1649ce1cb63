"""Faults around caches that a user meets: no network or token for the Hub, a corrupted shard under
`cache verify`, and an import refused half-way. Each is one line saying what to do, and leaves nothing behind."""

import subprocess
import sys

import h5py
import huggingface_hub
import numpy as np
import pytest
import requests
from conftest import write_cache
from dogmacache.cache import h5import, open_cache, verify_cache
from dogmacache.cli import main
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    LocalTokenNotFoundError,
    RepositoryNotFoundError,
)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture
def sent(monkeypatch):
    """Every call that would reach the Hub, recorded instead of sent."""
    calls = []
    for name in ("create_repo", "upload_large_folder", "create_commit"):
        monkeypatch.setattr(huggingface_hub.HfApi, name, lambda self, *a, _n=name, **kw: calls.append(_n))
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, **kw: calls.append("list") or [])
    return calls


@pytest.fixture
def cache_dir(tmp_path, rng):
    write_cache(tmp_path / "caches" / "c.zarr", rng.standard_normal((4, 3)).astype(np.float32), shard_items=2)
    return tmp_path / "caches"


def test_publish_without_a_token_says_how_to_log_in_before_any_upload(cache_dir, sent, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(cache_dir / "no-token"))
    assert main(["cache", "publish", str(cache_dir), "--repo", "lab/x"]) == 2
    err = _one_line(capsys)
    assert "lab/x" in err and "huggingface-cli login" in err and "HF_TOKEN" in err
    assert sent == []


@pytest.mark.parametrize(
    "raised, expected",
    [
        (requests.ConnectionError("Max retries exceeded with url: /api/repos/create\n" * 20), "resumes"),
        (LocalTokenNotFoundError("Token is required (`token=True`), but no token found."), "huggingface-cli login"),
        (HfHubHTTPError("403 Forbidden: You don't have the rights\nfor url: x", response=None), "lab/x"),
    ],
)
def test_publish_with_no_network_is_one_line_naming_the_repo(cache_dir, monkeypatch, capsys, raised, expected):
    monkeypatch.setenv("HF_TOKEN", "hf_test")

    def fail(self, *args, **kwargs):
        raise raised

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", fail)
    assert main(["cache", "publish", str(cache_dir), "--repo", "lab/x"]) == 2
    err = _one_line(capsys)
    assert "dataset repo lab/x" in err and expected in err


@pytest.mark.parametrize(
    "raised, expected",
    [
        (RepositoryNotFoundError("404 Client Error.\n\nRepository Not Found for url: x", response=None), "spelling"),
        (LocalEntryNotFoundError("An error happened while trying to locate the files on the Hub"), "network"),
        (requests.ConnectionError("Max retries exceeded\n" * 20), "network"),
        (HfHubHTTPError("500 Server Error\n\nInternal Error", response=None), "token for a private repo"),
    ],
)
def test_pull_failure_names_the_repo_and_what_to_check(tmp_path, monkeypatch, capsys, raised, expected):
    def fail(**kwargs):
        raise raised

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fail)
    assert main(["cache", "pull", "lab/x", str(tmp_path / "d")]) == 2
    err = _one_line(capsys)
    assert "dataset repo lab/x" in err and expected in err
    if isinstance(raised, RepositoryNotFoundError):
        assert "private" in err and "huggingface-cli login" in err


def _flip_bytes(path, at=100):
    raw = bytearray(path.read_bytes())
    raw[at : at + 4] = b"\xff" * 4
    path.write_bytes(bytes(raw))


def test_verify_of_a_corrupted_shard_prints_the_report_only_and_what_to_do_next(tmp_path, rng):
    # 200 one-item chunks per shard: when one fails, zarr's reads of the others are still running, and the
    # last shard failing leaves them pending at exit unless verify waits for them
    write_cache(tmp_path / "c.zarr", rng.standard_normal((400, 8, 8)).astype(np.float32), shard_items=200)
    _flip_bytes(tmp_path / "c.zarr" / "embeddings" / "c" / "1" / "0" / "0")
    done = subprocess.run(
        [sys.executable, "-m", "dogmacache.cli", "cache", "verify", str(tmp_path / "c.zarr")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    assert "Task was destroyed" not in done.stderr and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert (
        len(lines) == 2
        and lines[0].startswith("BROKEN shard 1 cannot be read: array `embeddings`")
        and "FAILED" in lines[1]
    )
    assert "cache verify" not in lines[0]  # the advice is the next step, not the command that is running
    assert "cache pull" in lines[0] and "--overwrite" in lines[0] and "embeddings/c/1/0/0" in lines[0]


def test_verify_reports_unreadable_ids_instead_of_stopping(tmp_path, rng):
    write_cache(tmp_path / "c.zarr", rng.standard_normal((6, 3)).astype(np.float32), shard_items=3)
    _flip_bytes(tmp_path / "c.zarr" / "ids" / "c" / "0", at=10)
    report = verify_cache(tmp_path / "c.zarr", progress=False)
    assert not report.ok and report.checked == 2
    assert (
        report.problems[0].startswith("`ids` cannot be read: array `ids`") and "cache verify" not in report.problems[0]
    )


def _h5(path, bad_row, value):
    """8 rows (N, 3, 4) with ids, one row holding `value` (beyond float16, NaN, ...)."""
    data = np.random.default_rng(0).standard_normal((8, 3, 4)).astype(np.float32)
    data[bad_row, 1, 2] = value
    with h5py.File(path, "w") as h5:
        h5.create_dataset("embeddings", data=data)
        h5.create_dataset("names", data=np.array([f"r{i}".encode() for i in range(8)]))
    return data


def _import(src, dest, *flags):
    args = ["cache", "import-h5", str(src), str(dest), "--dataset", "embeddings", "--ids", "names"]
    return main([*args, "--modality", "dna", "--model", "m", "--shard-items", "2", *flags])


def test_import_h5_refused_for_float16_overflow_then_the_suggested_dtype_into_the_same_dest_succeeds(tmp_path, capsys):
    data = _h5(tmp_path / "e.h5", bad_row=5, value=1e6)  # shards 0 and 1 are written before row 5 is refused
    dest = tmp_path / "c.zarr"
    assert _import(tmp_path / "e.h5", dest) == 2
    assert "--dtype float32" in _one_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.h5"]  # neither the cache nor its lock is left
    assert _import(tmp_path / "e.h5", dest, "--dtype", "float32") == 0
    np.testing.assert_array_equal(open_cache(dest)[:], data)


def test_import_h5_refused_for_nan_removes_only_what_it_created(tmp_path, capsys):
    _h5(tmp_path / "e.h5", bad_row=6, value=np.nan)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert _import(tmp_path / "e.h5", tmp_path / "out" / "new" / "c.zarr") == 2
    assert "NaN" in _one_line(capsys)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["notes.txt"]


def test_import_h5_refused_while_resuming_keeps_the_earlier_shards_and_says_overwrite(tmp_path, capsys, monkeypatch):
    data = _h5(tmp_path / "e.h5", bad_row=5, value=1e6)
    dest = tmp_path / "c.zarr"
    real = h5import._check_range

    def interrupted(block, rows, *args):  # an earlier run stopped after its first shard
        if rows[0] >= 2:
            raise KeyboardInterrupt
        real(block, rows, *args)

    monkeypatch.setattr(h5import, "_check_range", interrupted)
    assert _import(tmp_path / "e.h5", dest) == 130  # Ctrl-C: one line, exit 130
    assert "interrupted" in _one_line(capsys)
    monkeypatch.setattr(h5import, "_check_range", real)
    assert _import(tmp_path / "e.h5", dest) == 2
    err = _one_line(capsys)
    assert "--dtype float32" in err and "--overwrite" in err and dest.is_dir()
    assert _import(tmp_path / "e.h5", dest, "--dtype", "float32", "--overwrite") == 0
    np.testing.assert_array_equal(open_cache(dest)[:], data)
