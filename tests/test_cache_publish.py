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


def _files(operations):
    """A commit's operations as {path in the repo: bytes}."""
    return {op.path_in_repo: op.path_or_fileobj for op in operations}


def test_uploaded_manifests_carry_no_local_paths(tmp_path, rng, monkeypatch):
    import huggingface_hub

    calls = []
    monkeypatch.setenv("HF_TOKEN", "hf_test")  # publish asks for a token before it sends anything
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo, **kw: None)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_large_folder", lambda self, **kw: calls.append(kw))
    monkeypatch.setattr(
        huggingface_hub.HfApi, "create_commit", lambda self, **kw: calls.append(_files(kw["operations"]))
    )
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, **kw: [])
    path = _local_cache(tmp_path, rng)
    assert main(["cache", "publish", str(path.parent), "--repo", "lab/x"]) == 0
    first, large, last = calls
    unfinished = json.loads(first["dna.zarr/zarr.json"])["attributes"]["dogmacache"]  # first, over any earlier
    assert unfinished["complete"] is False and "in progress" in first["README.md"].decode()
    assert large["ignore_patterns"] == [
        "dna.zarr/zarr.json",
        "*.lock",
        "*shard_notes.partial*",
        "*.partial",
        "*.creating-*",
        ".cache",
    ]  # root: below
    uploaded = {k: v.decode() for k, v in last.items()}
    assert sorted(uploaded) == ["README.md", "dna.zarr/zarr.json"]  # one commit: the card with its manifests
    assert "in progress" not in uploaded["README.md"]
    manifest = json.loads(uploaded["dna.zarr/zarr.json"])["attributes"]["dogmacache"]
    assert manifest["model"] == "enformer-official-rough" and manifest["config"]["out"] == "dna.zarr"
    assert all("/home/me" not in text and "/scratch" not in text for text in uploaded.values())
    assert manifest["shards"] == list(open_cache(path).manifest.shards)


def test_a_republish_stopped_midway_leaves_no_finished_manifest_over_new_files(tmp_path, folder_hub, monkeypatch):
    """The Hub as a folder: a cache published, re-created with other rows, and published again with a Ctrl-C once
    the folder is sent. The repository's manifest then says unfinished (a reader refuses it), not the first cache's
    complete manifest over the second one's shards; the same command again finishes it."""
    import shutil

    import huggingface_hub
    from dogmacache.errors import IncompleteCacheError

    hub, stop = folder_hub, []
    send, commit = huggingface_hub.HfApi.upload_large_folder, huggingface_hub.HfApi.create_commit

    def upload_large_folder(self, **kwargs):
        send(self, **kwargs)
        stop.append("sent")

    def create_commit(self, **kwargs):
        if stop == ["stop", "sent"]:
            raise KeyboardInterrupt
        commit(self, **kwargs)

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_large_folder", upload_large_folder)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", create_commit)
    write_cache(tmp_path / "c.zarr", np.full((4, 3), 1.0, np.float32), shard_items=2)
    assert main(["cache", "publish", str(tmp_path / "c.zarr"), "--repo", "lab/x"]) == 0
    assert open_cache(hub)[0].tolist() == [1.0, 1.0, 1.0]
    shutil.rmtree(tmp_path / "c.zarr")
    write_cache(tmp_path / "c.zarr", np.full((4, 3), 2.0, np.float32), shard_items=2, model="test/model-v2")
    stop[:] = ["stop"]
    assert main(["cache", "publish", str(tmp_path / "c.zarr"), "--repo", "lab/x"]) != 0  # "interrupted; re-run"
    with pytest.raises(IncompleteCacheError):
        open_cache(hub)
    assert "in progress" in (hub / "README.md").read_text()  # the card says so, not the first cache's table alone
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


@pytest.fixture
def folder_hub(tmp_path, monkeypatch):
    """The Hub as the folder tmp_path/hub: uploads copy into it (honouring the ignore patterns as the library
    does), the listing lists it, a download copies it."""
    import shutil

    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    hub = tmp_path / "hub"
    hub.mkdir()

    def upload_large_folder(self, repo_id, folder_path, repo_type, ignore_patterns):
        files = [p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*") if p.is_file()]
        for name in filter_repo_objects(files, ignore_patterns=ignore_patterns):
            (hub / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(Path(folder_path) / name, hub / name)

    def create_commit(self, operations, **kwargs):
        for name, data in _files(operations).items():
            (hub / name).parent.mkdir(parents=True, exist_ok=True)
            (hub / name).write_bytes(data)

    def download(repo_id, repo_type, local_dir, revision=None):
        shutil.copytree(hub, local_dir, dirs_exist_ok=True)
        return local_dir

    monkeypatch.setenv("HF_TOKEN", "hf_test")
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo, **kw: None)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_large_folder", upload_large_folder)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", create_commit)
    monkeypatch.setattr(
        huggingface_hub.HfApi,
        "list_repo_files",
        lambda self, **kw: [p.relative_to(hub).as_posix() for p in hub.rglob("*") if p.is_file()],
    )
    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    return hub


def test_a_cache_the_repo_holds_and_the_folder_lacks_is_refused_before_anything_is_sent(tmp_path, folder_hub, capsys):
    """An upload never deletes: a cache dropped from the folder, or one at the repo's top level beside a folder of
    caches, would stay and be pulled as published."""
    write_cache(tmp_path / "one" / "a.zarr", np.ones((4, 3), np.float32), shard_items=2)
    write_cache(tmp_path / "one" / "b.zarr", np.ones((4, 3), np.float32), shard_items=2)
    assert main(["cache", "publish", str(tmp_path / "one"), "--repo", "lab/x"]) == 0
    (tmp_path / "two").mkdir()
    (tmp_path / "one" / "a.zarr").rename(tmp_path / "two" / "a.zarr")
    before = sorted(p.as_posix() for p in folder_hub.rglob("*"))
    assert main(["cache", "publish", str(tmp_path / "two"), "--repo", "lab/x"]) == 2
    assert "dataset repo lab/x holds Zarr metadata" in (err := capsys.readouterr().err) and "b.zarr/zarr.json" in err
    assert sorted(p.as_posix() for p in folder_hub.rglob("*")) == before
    assert main(["cache", "publish", str(tmp_path / "two" / "a.zarr"), "--repo", "lab/x"]) == 2  # a root cache
    assert "a.zarr/zarr.json, b.zarr/zarr.json" in capsys.readouterr().err


def test_a_cache_folder_named_with_pattern_characters_sends_no_local_manifest(tmp_path, folder_hub, monkeypatch):
    """The upload's ignore patterns are fnmatch patterns: `dna[v2].zarr/zarr.json` as a pattern matches other names
    and not its own, and the local manifest (complete, with local paths) went up with the shards."""
    path = tmp_path / "caches" / "dna[v2].zarr"
    write_cache(path, np.ones((4, 3), np.float32), shard_items=2, config=LOCAL)
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    large = huggingface_hub.HfApi.upload_large_folder

    def checked(self, **kw):  # the library's own matching of the ignore patterns
        files = [p.relative_to(kw["folder_path"]).as_posix() for p in Path(kw["folder_path"]).rglob("*")]
        assert "dna[v2].zarr/zarr.json" not in list(filter_repo_objects(files, ignore_patterns=kw["ignore_patterns"]))
        large(self, **kw)

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_large_folder", checked)
    assert main(["cache", "publish", str(path.parent), "--repo", "lab/x"]) == 0
    assert "/home/me" not in (folder_hub / "dna[v2].zarr" / "zarr.json").read_text()


def test_pull_refuses_a_repo_with_a_stale_top_level_cache_and_names_an_unfinished_publish(tmp_path, folder_hub, capsys):
    import shutil

    write_cache(tmp_path / "root.zarr", np.ones((4, 3), np.float32), shard_items=2)
    shutil.copytree(tmp_path / "root.zarr", folder_hub, dirs_exist_ok=True)  # an earlier publish's top-level cache
    write_cache(folder_hub / "a.zarr", np.ones((4, 3), np.float32), shard_items=2)
    assert main(["cache", "pull", "lab/x", str(tmp_path / "got")]) == 2
    assert "holds a cache at its top level and 1 in its folders (a.zarr)" in capsys.readouterr().err

    hub_meta = folder_hub / "a.zarr" / "zarr.json"
    meta = json.loads(hub_meta.read_text())
    meta["attributes"]["dogmacache"]["complete"] = False
    meta["attributes"]["dogmacache"]["n_items"] = 6  # a republish of more rows, stopped midway
    hub_meta.write_text(json.dumps(meta))
    for path in [*folder_hub.glob("*")]:
        if path.name != "a.zarr":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    assert main(["cache", "pull", "lab/x", str(tmp_path / "got2")]) == 2
    assert "a.zarr from lab/x is unfinished: its publish stopped midway" in capsys.readouterr().err


def test_a_re_pull_of_a_repo_mixing_a_top_level_cache_with_others_is_refused_too(tmp_path, folder_hub, capsys):
    import shutil

    write_cache(folder_hub / "a.zarr", np.ones((4, 3), np.float32), shard_items=2)
    assert main(["cache", "pull", "lab/x", str(tmp_path / "got")]) == 0  # an earlier, clean pull
    write_cache(tmp_path / "root.zarr", np.ones((4, 3), np.float32), shard_items=2)
    shutil.copytree(tmp_path / "root.zarr", folder_hub, dirs_exist_ok=True)  # a stale top-level cache appears
    capsys.readouterr()
    assert main(["cache", "pull", "lab/x", str(tmp_path / "got")]) == 2
    assert "holds a cache at its top level and 1 in its folders (a.zarr)" in capsys.readouterr().err
