"""`cache publish`: the card and the uploaded manifests name no file of this machine."""

import json

import numpy as np
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
    assert calls[0]["ignore_patterns"] == [
        "dna.zarr/zarr.json",
        "*.lock",
        "*shard_notes.partial*",
        "*.partial",
        "*.creating-*",
    ]  # root: below
    uploaded = {c["path_in_repo"]: c["path_or_fileobj"].decode() for c in calls[1:]}
    assert sorted(uploaded) == ["README.md", "dna.zarr/zarr.json"]
    manifest = json.loads(uploaded["dna.zarr/zarr.json"])["attributes"]["dogmacache"]
    assert manifest["model"] == "enformer-official-rough" and manifest["config"]["out"] == "dna.zarr"
    assert all("/home/me" not in text and "/scratch" not in text for text in uploaded.values())
    assert manifest["shards"] == list(open_cache(path).manifest.shards)
