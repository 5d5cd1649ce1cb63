"""`cache publish`: the card and the uploaded manifests name no file of this machine."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import write_cache
from dogmacache.cache import open_cache
from dogmacache.cli import main

LOCAL = {
    "genome": "/home/me/data/hg38.fa",
    "input": "/home/me/recipe/dna_windows.parquet",
    "out": "/scratch/me/caches/dna.zarr",
    "nested": {"paths": ["/home/me/a.txt", "relative/b.txt"]},
    "window_bp": 196608,
}


def _local_cache(tmp_path, rng):
    path = tmp_path / "caches" / "dna.zarr"
    write_cache(
        path,
        rng.standard_normal((4, 3)).astype(np.float32),
        shard_items=2,
        config=LOCAL,
        model="/home/me/models/enformer-official-rough",
    )
    return path


def test_dry_run_card_shows_a_portable_model_and_no_local_paths(tmp_path, rng, capsys):
    path = _local_cache(tmp_path, rng)
    assert main(["cache", "publish", str(path.parent), "--repo", "lab/x", "--dry-run"]) == 0
    card = capsys.readouterr().out
    assert "| enformer-official-rough | r1 |" in card
    assert "/home/me" not in card and "/scratch" not in card and str(tmp_path) not in card.split("--- README.md")[1]
    assert '"genome": "hg38.fa"' in card and '"relative/b.txt"' in card and '"window_bp": 196608' in card
    assert open_cache(path).manifest.config == LOCAL  # the local cache is unchanged


def test_uploaded_manifests_carry_no_local_paths(tmp_path, rng, monkeypatch):
    import huggingface_hub

    calls = []
    monkeypatch.setenv("HF_TOKEN", "hf_test")  # publish asks for a token before it sends anything
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo, **kw: None)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_large_folder", lambda self, **kw: calls.append(kw))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_file", lambda self, **kw: calls.append(kw))
    path = _local_cache(tmp_path, rng)
    assert main(["cache", "publish", str(path.parent), "--repo", "lab/x"]) == 0
    unfinished = json.loads(calls[0]["path_or_fileobj"])["attributes"]["dogmacache"]  # first, over any earlier
    assert calls[0]["path_in_repo"] == "dna.zarr/zarr.json" and unfinished["complete"] is False
    assert calls[1]["ignore_patterns"] == [
        "dna.zarr/zarr.json",
        "*.lock",
        "*shard_notes.partial*",
        "*.partial",
        "*.creating-*",
        ".cache",
    ]  # root: below
    uploaded = {c["path_in_repo"]: c["path_or_fileobj"].decode() for c in calls[2:]}
    assert sorted(uploaded) == ["README.md", "dna.zarr/zarr.json"]
    manifest = json.loads(uploaded["dna.zarr/zarr.json"])["attributes"]["dogmacache"]
    assert manifest["model"] == "enformer-official-rough" and manifest["config"]["out"] == "dna.zarr"
    assert all("/home/me" not in text and "/scratch" not in text for text in uploaded.values())
    assert manifest["shards"] == list(open_cache(path).manifest.shards)


def test_a_republish_stopped_midway_leaves_no_finished_manifest_over_new_files(tmp_path, monkeypatch):
    """The Hub as a folder: a cache published, re-created with other rows, and published again with a Ctrl-C once
    the folder is sent. The repository's manifest then says unfinished (a reader refuses it), not the first cache's
    complete manifest over the second one's shards; the same command again finishes it."""
    import shutil

    import huggingface_hub
    from dogmacache.errors import IncompleteCacheError
    from huggingface_hub.utils import filter_repo_objects

    hub = tmp_path / "hub"
    stop = []

    def upload_large_folder(self, repo_id, folder_path, repo_type, ignore_patterns):
        files = [p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*") if p.is_file()]
        for name in filter_repo_objects(files, ignore_patterns=ignore_patterns):
            (hub / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(Path(folder_path) / name, hub / name)
        stop.append("sent")

    def upload_file(self, path_or_fileobj, path_in_repo, **kwargs):
        if stop == ["stop", "sent"]:
            raise KeyboardInterrupt
        (hub / path_in_repo).parent.mkdir(parents=True, exist_ok=True)
        (hub / path_in_repo).write_bytes(path_or_fileobj)

    monkeypatch.setenv("HF_TOKEN", "hf_test")
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo, **kw: None)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_large_folder", upload_large_folder)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_file", upload_file)
    write_cache(tmp_path / "c.zarr", np.full((4, 3), 1.0, np.float32), shard_items=2)
    assert main(["cache", "publish", str(tmp_path / "c.zarr"), "--repo", "lab/x"]) == 0
    assert open_cache(hub)[0].tolist() == [1.0, 1.0, 1.0]
    shutil.rmtree(tmp_path / "c.zarr")
    write_cache(tmp_path / "c.zarr", np.full((4, 3), 2.0, np.float32), shard_items=2, model="test/model-v2")
    stop[:] = ["stop"]
    assert main(["cache", "publish", str(tmp_path / "c.zarr"), "--repo", "lab/x"]) != 0  # "interrupted; re-run"
    with pytest.raises(IncompleteCacheError):
        open_cache(hub)
    stop.clear()
    assert main(["cache", "publish", str(tmp_path / "c.zarr"), "--repo", "lab/x"]) == 0
    finished = open_cache(hub)
    assert finished.manifest.model == "test/model-v2" and finished[0].tolist() == [2.0, 2.0, 2.0]


def test_a_cache_deeper_down_or_behind_a_link_is_refused_before_anything_is_sent(tmp_path, rng):

    from dogmacache.cache.hub import plan_publish
    from dogmacache.errors import CacheError

    share = tmp_path / "share"
    write_cache(share / "dna.zarr", rng.standard_normal((4, 3)).astype(np.float32), shard_items=2)
    write_cache(share / "protein" / "esm2.zarr", rng.standard_normal((4, 3)).astype(np.float32), shard_items=2)
    with pytest.raises(CacheError, match=r"esm2.zarr is a cache below a subfolder of .*share; .* move it up a level"):
        plan_publish(share, "lab/x")
    (share / "protein" / "esm2.zarr").rename(tmp_path / "esm2.zarr")
    (share / "protein").rmdir()
    (share / "esm2.zarr").symlink_to(tmp_path / "esm2.zarr")
    with pytest.raises(CacheError, match=r"esm2.zarr is a symbolic link to .*; the upload does not follow links"):
        plan_publish(share, "lab/x")
    (share / "esm2.zarr").unlink()
    caches, _, n_files, _ = plan_publish(share, "lab/x")
    assert [c.relpath for c in caches] == ["dna.zarr"] and n_files > 0
