"""`dogmacache embed --layers`: one forward pass, one ordinary cache per layer, each the cache `--layer L` alone
writes (bytes, extras and manifest); unknown layers and layer-less adapters refused in one line; an interrupted
run and lost shards resume to the same caches. Tiny models of the real architectures, inputs made by hand."""

import numpy as np
import pandas as pd
import pytest
import zarr
from conftest import interrupt_on_call
from dogmacache.cache import open_cache
from dogmacache.cli import main
from dogmacache.embed.adapters import EnformerAdapter, ScGPTContextAdapter
from dogmacache.embed.layers import layer_out, parse_layers
from dogmacache.embed.tiny import make_tiny
from dogmacache.errors import InputError

GENES = ["TP53", "MYC", "ALB", "GAPDH"]
PROTEINS = ["MKV", "MKVLA", "ACDEFGHIK", "MK", "MKVLAAGG", "W", "MKKKKKKKKKKKKV"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("layers")
    rng = np.random.default_rng(0)
    (root / "g.fa").write_text(">chr1\n" + "".join(rng.choice(list("ACGT"), 5000)) + "\n")
    centers = [1200, 2000, 2600, 3000, 4000, 4999]
    pd.DataFrame(
        {"id": [f"w{i}" for i in range(6)], "chrom": "chr1", "center": centers, "strand": ["+", "-"] * 3}
    ).to_parquet(root / "dna.parquet")
    pd.DataFrame({"id": [f"p{i}" for i in range(len(PROTEINS))], "sequence": PROTEINS}).to_parquet(
        root / "protein.parquet"
    )
    pd.DataFrame({"id": GENES}).to_parquet(root / "gene.parquet")
    profiles = {g: rng.integers(0, 50, 5).astype(float) for g in GENES}
    pd.DataFrame({"id": [f"t{i}" for i in range(5)], **profiles}).to_parquet(root / "context.parquet")
    return root, make_tiny(root / "models", GENES)


def args(inputs, model, modality, out, *extra):
    root, models = inputs
    argv = ["embed", "--input", str(root / f"{modality}.parquet"), "--modality", modality, "--model", model]
    argv += ["--out", str(out), "--num-workers", "0", "--no-progress", "--shard-items", "2", *extra]
    if model != "kmer":
        argv += ["--model-path", str(models[model])]
    return argv + (["--genome", str(root / "g.fa")] if modality == "dna" else [])


CASES = {
    "enformer": ("enformer", "dna", ["conv_tower", "transformer.0", "trunk"], ["--strand-policy", "rc-average"]),
    "esm2": ("esm2", "protein", ["0", "1", "2", "-1"], ["--pooling", "none", "--max-positions", "6"]),
    "esm2-mean": ("esm2", "protein", ["1", "-1"], []),
    "scgpt-context": ("scgpt", "context", ["encoder", "layer.0", "layer.1", "cls_last_layer"], []),
    "scgpt-gene": ("scgpt", "gene", ["gene_embedding", "gene_embedding+enc_norm"], ["--scgpt-no-l2"]),
}


def arrays(path) -> dict[str, np.ndarray]:
    group = zarr.open_group(path, mode="r")
    return {name: group[name][:] for name in group.array_keys()}


def manifest(path) -> dict:
    found = dict(zarr.open_group(path, mode="r").attrs["dogmacache"])
    found.pop("created_at")
    # a resumed cache's receipt is drawn from all its rows, a fresh one's from the rows embedded: compared apart
    found.pop("fidelity")
    return found


def assert_same_cache(a, b) -> None:
    left, right = arrays(a), arrays(b)
    assert sorted(left) == sorted(right)
    for name in left:
        assert left[name].dtype == right[name].dtype, name
        if left[name].dtype.kind in "fc":  # floats compared by their bits
            left[name], right[name] = left[name].view(np.uint8), right[name].view(np.uint8)
        np.testing.assert_array_equal(left[name], right[name], err_msg=name)
    assert manifest(a) == manifest(b)  # shard digests included: the same bytes


@pytest.mark.parametrize("case", list(CASES))
def test_each_layer_cache_is_the_single_layer_run(inputs, tmp_path, capsys, case):
    model, modality, layers, extra = CASES[case]
    out = tmp_path / "multi"
    assert main(args(inputs, model, modality, out, f"--layers={','.join(layers)}", *extra)) == 0
    summary = capsys.readouterr().out
    assert f"one forward pass for {len(layers)} layers" in summary
    for layer in layers:
        assert f"{layer} -> {out}/layer_{layer}" in summary
        assert f"fidelity of layer {layer}: " in summary  # each receipt printed, as a single-layer run prints its own
        single = tmp_path / "single" / f"layer_{layer}"  # the same folder name: the manifests record it
        assert main(args(inputs, model, modality, single, f"--layer={layer}", *extra)) == 0
        assert manifest(out / f"layer_{layer}")["layer"] == (int(layer) if model == "esm2" else layer)
        assert_same_cache(out / f"layer_{layer}", single)
        receipts = [open_cache(path).manifest.fidelity for path in (out / f"layer_{layer}", single)]
        assert receipts[0] == receipts[1] and receipts[0]["items"] > 0, layer  # this layer's rows, measured alike
    first, second = (arrays(out / f"layer_{layer}")["embeddings"] for layer in layers[:2])
    assert first.shape != second.shape or not np.array_equal(first, second)  # the layers differ


def test_the_default_layer_is_todays_output(inputs, tmp_path):
    """No --layer: the cache of the model's usual output, its manifest naming it as before."""
    for model, modality, name in [("enformer", "dna", "trunk"), ("scgpt", "context", "cls_last_layer")]:
        assert main(args(inputs, model, modality, tmp_path / model, "--layers", name)) == 0
        assert main(args(inputs, model, modality, tmp_path / f"{model}-default")) == 0
        plain, picked = manifest(tmp_path / f"{model}-default"), manifest(tmp_path / model / f"layer_{name}")
        assert plain["layer"] == picked["layer"] == name
        assert arrays(tmp_path / f"{model}-default")["embeddings"].tobytes() == (
            arrays(tmp_path / model / f"layer_{name}")["embeddings"].tobytes()
        )


def test_out_with_a_placeholder_names_each_cache(inputs, tmp_path, capsys):
    out = tmp_path / "caches" / "protein-esm2-{layer}.zarr"
    assert main(args(inputs, "esm2", "protein", out, "--layers=-1,1")) == 0
    assert sorted(p.name for p in (tmp_path / "caches").iterdir()) == ["protein-esm2--1.zarr", "protein-esm2-1.zarr"]
    assert open_cache(tmp_path / "caches" / "protein-esm2-1.zarr").manifest.layer == 1
    assert layer_out("c/x", "trunk") == "c/x/layer_trunk" and layer_out("c/{layer}.zarr", "t") == "c/t.zarr"


@pytest.mark.parametrize(
    ("model", "modality", "flag", "listed"),
    [
        ("enformer", "dna", "--layers=trunk,transformer.7", "conv_tower, transformer.0, trunk"),
        ("esm2", "protein", "--layers=1,9", "0, 1, 2, -1"),
        ("scgpt", "context", "--layers=layer.2", "encoder, layer.0, layer.1, cls_last_layer"),
        ("scgpt", "gene", "--layer=cls", "gene_embedding, gene_embedding+enc_norm"),
        ("enformer", "dna", "--layer=stem", "conv_tower, transformer.0, trunk"),
    ],
)
def test_an_unknown_layer_is_one_line_listing_the_valid_ones(inputs, tmp_path, capsys, model, modality, flag, listed):
    assert main(args(inputs, model, modality, tmp_path / "c", flag)) == 2
    err = capsys.readouterr().err.strip()
    assert "does not exist" in err and f"its layers: {listed}." in err and "\n" not in err
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())  # nothing written


def test_layers_on_kmer_and_other_misuse_are_one_line(inputs, tmp_path, capsys):
    assert main(args(inputs, "kmer", "protein", tmp_path / "k", "--layers", "composition")) == 2
    err = capsys.readouterr().err.strip()
    assert "--layers does not apply to --model kmer" in err and "no layers" in err and "\n" not in err
    assert main(args(inputs, "esm2", "protein", tmp_path / "e", "--layers", "1", "--layer", "2")) == 2
    assert "give one of them" in capsys.readouterr().err
    assert main(args(inputs, "esm2", "protein", tmp_path / "e", "--layers", "1", "--workers", "2")) == 2
    assert "--layers runs in one process" in capsys.readouterr().err
    assert main(args(inputs, "esm2", "protein", tmp_path / "e", "--layer", "top")) == 2
    assert "--layer 'top' is not a layer number" in capsys.readouterr().err
    for text in ["1,,2", "1,2,1"]:
        with pytest.raises(InputError):
            parse_layers(text)


def test_an_interrupt_mid_run_resumes_to_the_same_caches(inputs, tmp_path, capsys, monkeypatch):
    model, modality, layers, extra = CASES["enformer"]
    argv = [f"--layers={','.join(layers)}", *extra]
    assert main(args(inputs, model, modality, tmp_path / "fresh", *argv)) == 0
    calls, embed_layers = [], EnformerAdapter.embed_layers
    killed = tmp_path / "killed"
    with monkeypatch.context() as patched:
        patched.setattr(
            EnformerAdapter, "embed_layers", lambda self, b, w: _maybe_stop(calls, embed_layers, self, b, w)
        )
        assert main(args(inputs, model, modality, killed, *argv)) == 130  # Ctrl-C
    assert "interrupted; re-run the same command" in capsys.readouterr().err
    for layer in layers:
        state = open_cache(killed / f"layer_{layer}", allow_partial=True).manifest
        assert not state.complete
        assert 1 <= int(np.count_nonzero(zarr.open_group(killed / f"layer_{layer}")["shard_sha256"][:].any(1))) < 3
    assert main(args(inputs, model, modality, killed, *argv)) == 0
    assert "resuming" in capsys.readouterr().out
    for layer in layers:
        assert_same_cache(killed / f"layer_{layer}", tmp_path / "fresh" / f"layer_{layer}")
        assert open_cache(killed / f"layer_{layer}").manifest.fidelity["items"] == 6  # every item of the table
    assert main(args(inputs, model, modality, killed, *argv)) == 0
    assert "all 3 caches are already complete" in capsys.readouterr().out


def test_a_resume_left_to_the_default_matches_the_uninterrupted_run(inputs, tmp_path, capsys, monkeypatch):
    """Begun at 1 thread and interrupted, resumed with no thread count chosen on two idle cores (where the plan
    would take both): the same bytes as the uninterrupted 1-thread run. The control: a fresh 2-thread run of these
    rc-average windows (float16) differs from the 1-thread one; where it does not, nothing here tells them apart."""
    from dogmacache import devices
    from dogmacache.devices import torch_threads

    model, modality, layers, extra = CASES["enformer"]
    argv = [f"--layers={','.join(layers)}", *extra]
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(devices, "usable_cores", lambda *a, **k: 2)
    monkeypatch.setattr(devices.CoreWatch, "busy", lambda self, seconds=0.1: 0.0)
    with torch_threads(2):
        for threads in (1, 2):
            assert main(args(inputs, model, modality, tmp_path / f"t{threads}", "--threads", str(threads), *argv)) == 0
        control = [arrays(tmp_path / "t2" / f"layer_{layer}") for layer in layers]
        if all(
            np.array_equal(a["embeddings"].view(np.uint8), b["embeddings"].view(np.uint8))
            for a, b in zip(control, [arrays(tmp_path / "t1" / f"layer_{layer}") for layer in layers], strict=True)
        ):
            pytest.skip("1 and 2 threads give the same bytes on this machine: a resume at either would pass")
        calls, embed_layers = [], EnformerAdapter.embed_layers
        killed = tmp_path / "killed"
        with monkeypatch.context() as patched:
            patched.setattr(
                EnformerAdapter, "embed_layers", lambda self, b, w: _maybe_stop(calls, embed_layers, self, b, w)
            )
            assert main(args(inputs, model, modality, killed, "--threads", "1", *argv)) == 130
        capsys.readouterr()
        assert main(args(inputs, model, modality, killed, *argv)) == 0
        assert "torch threads: 1, as the cache was begun with" in capsys.readouterr().out
    for layer in layers:
        assert_same_cache(killed / f"layer_{layer}", tmp_path / "t1" / f"layer_{layer}")


def _maybe_stop(calls, embed_layers, self, batch, wanted):
    calls.append(len(batch))
    # windows under rc-average: two forwards per shard (two items each); a batch's outputs reach the host once the
    # next batch is launched, so the 5th call comes after the first shard was handed to its writer, not the second
    if len(calls) == 5:
        raise KeyboardInterrupt
    return embed_layers(self, batch, wanted)


def test_caches_missing_different_shards_are_finished_together(inputs, tmp_path, capsys, monkeypatch):
    """One layer complete, one missing a shard, one missing two: only those shards are computed and written."""
    model, modality, layers, extra = CASES["scgpt-context"]
    argv = [f"--layers={','.join(layers[:3])}", "--fidelity-items", "0", *extra]  # no receipt's forward asked
    out = tmp_path / "c"
    assert main(args(inputs, model, modality, out, *argv)) == 0
    first = {layer: manifest(out / f"layer_{layer}") for layer in layers[:3]}
    for layer, lost in zip(layers[:3], [[], [1], [0, 2]], strict=True):
        group = zarr.open_group(out / f"layer_{layer}", mode="r+")
        if lost:
            group.attrs["dogmacache"] = {**dict(group.attrs["dogmacache"]), "complete": False, "shards": []}
        for shard in lost:
            group["shard_sha256"][shard] = np.zeros(32, dtype=np.uint8)
    asked, embed_layers = [], ScGPTContextAdapter.embed_layers
    monkeypatch.setattr(
        ScGPTContextAdapter, "embed_layers", lambda self, b, w: asked.append(w) or embed_layers(self, b, w)
    )
    capsys.readouterr()
    assert main(args(inputs, model, modality, out, *argv)) == 0
    assert asked == [("layer.1",), ("layer.0",), ("layer.1",)]  # shards 0, 1, 2: only the layers lacking them
    assert "(0 shards)" in capsys.readouterr().out
    assert {layer: manifest(out / f"layer_{layer}") for layer in layers[:3]} == first


def test_a_run_stopped_in_a_receipt_finishes_on_the_next(inputs, tmp_path, monkeypatch, capsys):
    """Every shard written, the first layer's manifest final, the run stopped in the second layer's receipt: the
    caches left unfinished say so, and the same command finishes them (it used to call them complete)."""
    from dogmacache.embed import layers as layers_module

    layers, out = ["0", "1", "-1"], tmp_path / "stopped"
    argv = args(inputs, "esm2", "protein", out, f"--layers={','.join(layers)}")
    plain = interrupt_on_call(monkeypatch, layers_module, "receipt", 2)
    assert main(argv) == 130
    finished = {layer: open_cache(out / f"layer_{layer}", allow_partial=True).manifest.complete for layer in layers}
    assert finished == {"0": True, "1": False, "-1": False}
    capsys.readouterr()
    assert main(["cache", "info", str(out / "layer_1")]) == 0
    assert "not yet measured (the cache is unfinished" in capsys.readouterr().out
    monkeypatch.setattr(layers_module, "receipt", plain)
    assert main(argv) == 0
    assert "nothing to do" not in capsys.readouterr().out
    for layer in layers:
        cache = open_cache(out / f"layer_{layer}")
        assert cache.manifest.complete and cache.manifest.fidelity["items"] == len(PROTEINS), layer
        single = tmp_path / "single" / f"layer_{layer}"
        assert main(args(inputs, "esm2", "protein", single, f"--layer={layer}")) == 0
        assert_same_cache(out / f"layer_{layer}", single)
    assert "(a resumed cache)" in open_cache(out / "layer_1").manifest.fidelity["sampled_from"]
    assert main(argv) == 0 and "nothing to do" in capsys.readouterr().out
