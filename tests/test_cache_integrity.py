"""A cache altered or damaged after it was written: one line naming the file and the fix, never numbers read as
another type or a traceback; and what `cache info`, the card and `pull` say of it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import write_cache
from dogmacache.cache import open_cache, verify_cache
from dogmacache.cache.layout import SHARD_SHA256
from dogmacache.cache.manifest import ceiling_2e, cosine_floor, describe_fidelity, describe_reused
from dogmacache.errors import CacheError


def _edit_manifest(path, **changes):
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["dogmacache"].update(changes)
    (path / "zarr.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("edited", ["bfloat16", "float32"])
def test_a_manifest_dtype_edited_by_hand_is_refused_not_read_as_another_type(tmp_path, edited):
    write_cache(tmp_path / "c.zarr", np.random.default_rng(0).normal(size=(4, 3)).astype(np.float16), dtype="float16")
    _edit_manifest(tmp_path / "c.zarr", dtype=edited)
    with pytest.raises(
        CacheError, match=f"stores float16 but the manifest says {edited}.*altered after it was written"
    ):
        open_cache(tmp_path / "c.zarr")


@pytest.mark.parametrize("removed", ["embeddings", "n_padded/zarr.json"])
def test_a_missing_array_is_one_line_naming_its_zarr_json(tmp_path, removed):
    extras = {"n_padded": np.zeros(4, np.int32)}
    write_cache(tmp_path / "c.zarr", np.ones((4, 3), np.float32), extras=extras, dtype="float32")
    target = tmp_path / "c.zarr" / removed
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(CacheError, match=r"zarr.json is missing .*copy or pull the cache again"):
        verify_cache(tmp_path / "c.zarr", progress=False) if removed != "embeddings" else open_cache(
            tmp_path / "c.zarr"
        )


def test_verify_reads_the_per_shard_digests_that_info_and_a_resume_read(tmp_path):
    write_cache(tmp_path / "c.zarr", np.ones((6, 2), np.float32), shard_items=3, dtype="float32")
    assert verify_cache(tmp_path / "c.zarr", progress=False).ok
    chunk = next(p for p in (tmp_path / "c.zarr" / SHARD_SHA256).rglob("*") if p.is_file() and p.name != "zarr.json")
    raw = bytearray(chunk.read_bytes())
    raw[-1] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    report = verify_cache(tmp_path / "c.zarr", progress=False)
    assert not report.ok and SHARD_SHA256 in report.problems[0]  # a chunk that no longer decodes
    write_cache(tmp_path / "d.zarr", np.ones((6, 2), np.float32), shard_items=3, dtype="float32")
    import zarr

    zarr.open_group(str(tmp_path / "d.zarr"), mode="r+")[SHARD_SHA256][1] = np.arange(32, dtype=np.uint8)
    report = verify_cache(tmp_path / "d.zarr", progress=False)  # decodes, but another digest than the manifest's
    assert (
        not report.ok
        and "disagrees with the manifest's checksums for 1 shard(s) (first: shard 1)" in report.problems[0]
    )


def test_the_fidelity_bounds_are_rounded_outward_and_a_damaged_receipt_is_said_so():
    assert cosine_floor(0.9999999980057906) == "0.99999999" and ceiling_2e(0.00024417817065033095) == "2.45e-04"
    receipt = {
        "items": 16,
        "reference": "float32 forward",
        "cosine_min": 0.9999999980057906,
        "cosine_median": 1.0,
        "relative_l2_max": 0.00024417817065033095,
        "relative_l2_median": 1e-4,
    }
    line = describe_fidelity(receipt)
    assert "cosine >= 0.99999999" in line and "relative L2 <= 2.45e-04" in line
    assert "malformed receipt (no finite number for cosine_min)" in describe_fidelity({**receipt, "cosine_min": "0.9"})
    assert "malformed receipt" in describe_fidelity({**receipt, "cosine_min": float("nan")})
    assert "malformed receipt (no finite number for items)" in describe_fidelity({**receipt, "items": 10**400})
    assert describe_reused([{"rows": 3}])[0].startswith("malformed record of reused rows")


def test_the_card_says_how_to_read_bfloat16_bits_with_plain_zarr(tmp_path):
    from dogmacache.cache.hub import dataset_card, find_caches

    write_cache(tmp_path / "c.zarr", np.ones((4, 3), np.float32), dtype="bfloat16")
    card = dataset_card("me/x", find_caches(tmp_path / "c.zarr"))
    assert "x = x.view(ml_dtypes.bfloat16)" in card
    write_cache(tmp_path / "d.zarr", np.ones((4, 3), np.float32), dtype="float16")
    assert "ml_dtypes" not in dataset_card("me/x", find_caches(tmp_path / "d.zarr"))
    both = tmp_path / "both"  # a float16 cache first, a bfloat16 one second: the snippet opens the first
    write_cache(both / "a.zarr", np.ones((4, 3), np.float32), dtype="float16")
    write_cache(both / "b.zarr", np.ones((4, 3), np.float32), dtype="bfloat16")
    card = dataset_card("me/x", find_caches(both, root=False))
    assert "/a.zarr" in card and "x = x.view(ml_dtypes.bfloat16)" not in card  # not applied to the float16 one
    assert "bfloat16 caches here (`b.zarr`): plain zarr returns their bits as uint16" in card


def test_pull_of_an_unfinished_publish_says_so_to_the_puller(tmp_path, monkeypatch, capsys):
    import huggingface_hub
    from dogmacache.cli import main

    hub = tmp_path / "hub"
    write_cache(hub / "c.zarr", np.ones((4, 3), np.float32), dtype="float32")
    _edit_manifest(hub / "c.zarr", complete=False)  # what a publish stopped midway leaves on the Hub
    monkeypatch.setattr(
        huggingface_hub,
        "snapshot_download",
        lambda repo_id, repo_type, local_dir, revision=None: shutil.copytree(hub, local_dir, dirs_exist_ok=True),
    )
    assert main(["cache", "pull", "lab/x", str(tmp_path / "pulled")]) == 2
    assert "publish stopped midway or is still running; pull again later" in capsys.readouterr().err


def test_the_published_manifest_keeps_no_relative_or_unc_local_path():
    from dogmacache.cache.hub import _portable_value

    local = ["dna/../models/enf", "../models/enf", "./m", "\\\\server\\share\\x.fa", "/home/me/x.fa", "C:\\d\\x"]
    assert [_portable_value(v) for v in local] == ["enf", "enf", "m", "x.fa", "x.fa", "x"]
    assert _portable_value("facebook/esm2_t6_8M_UR50D") == "facebook/esm2_t6_8M_UR50D"  # a hub id stays


def test_a_float32_value_beyond_bfloat16s_range_is_refused_not_stored_as_inf(tmp_path):
    data = np.ones((3, 2), np.float32)
    data[1, 0] = 3.4e38  # finite in float32, inf once cast to bfloat16
    with pytest.raises(CacheError, match="after the cast to bfloat16"):
        write_cache(tmp_path / "c.zarr", data, dtype="bfloat16")
