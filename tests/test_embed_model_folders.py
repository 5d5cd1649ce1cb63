"""Model folders as they come: both weight formats side by side (the file recorded is the file loaded), and
folders that are damaged or of another model, each one line."""

import shutil

import pytest
import torch
from dogmacache.contracts.provenance import file_sha256
from dogmacache.embed.adapters.borzoi import BorzoiAdapter, BorzoiOptions
from dogmacache.embed.adapters.enformer import EnformerAdapter, EnformerOptions, write_tiny_enformer
from dogmacache.embed.adapters.hf_esm import Esm2Adapter, EsmOptions
from dogmacache.embed.tiny import write_tiny_esm2
from dogmacache.errors import ModelError


def test_a_folder_with_both_weight_formats_records_the_file_it_loaded(tmp_path):
    """transformers loads model.safetensors before pytorch_model.bin: the cache's revision (the weights' sha256)
    must name that file, or a --reuse or resume would take rows of other weights as its own."""
    from safetensors.torch import load_file
    from transformers import EsmModel

    both = write_tiny_esm2(tmp_path / "both", seed=0)  # model.safetensors: seed 0
    other = write_tiny_esm2(tmp_path / "other", seed=1)
    EsmModel.from_pretrained(str(other), add_pooling_layer=False).save_pretrained(
        str(tmp_path / "bin"), safe_serialization=False
    )
    shutil.move(tmp_path / "bin" / "pytorch_model.bin", both / "pytorch_model.bin")  # seed 1 beside it
    adapter = Esm2Adapter(str(both), EsmOptions(), torch.device("cpu"))
    assert adapter.info().model_revision == file_sha256(str(both / "model.safetensors"))
    loaded = adapter.model.embeddings.word_embeddings.weight
    saved = next(
        v for k, v in load_file(str(both / "model.safetensors")).items() if k.endswith("word_embeddings.weight")
    )
    assert torch.equal(loaded, saved)


def test_damaged_or_foreign_model_folders_are_one_line(tmp_path):
    enformer = write_tiny_enformer(tmp_path / "enformer")
    esm = write_tiny_esm2(tmp_path / "esm")
    bad_json = tmp_path / "bad_json"
    shutil.copytree(enformer, bad_json)
    (bad_json / "config.json").write_text('{"dim": 24,')
    with pytest.raises(ModelError, match=r"config.json is not valid JSON"):
        EnformerAdapter(str(bad_json), EnformerOptions(), torch.device("cpu"))
    cut = tmp_path / "cut"
    shutil.copytree(esm, cut)
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelError, match=r"could not be read as model weights .* download it again"):
        Esm2Adapter(str(cut), EsmOptions(), torch.device("cpu"))
    no_vocab = tmp_path / "no_vocab"
    shutil.copytree(esm, no_vocab)
    (no_vocab / "vocab.txt").unlink()
    with pytest.raises(ModelError, match=r"tokenizer files .*vocab.txt.* belong beside the weights"):
        Esm2Adapter(str(no_vocab), EsmOptions(), torch.device("cpu"))
    with pytest.raises(ModelError, match=r"holds a 'enformer' model .*not a Borzoi or Flashzoi"):
        BorzoiAdapter(str(enformer), BorzoiOptions(), torch.device("cpu"))


def test_proteins_cut_to_the_models_limit_are_counted_in_the_summary_and_cache_info(tmp_path, capsys):
    import pandas as pd
    from dogmacache.cli import main

    model = write_tiny_esm2(tmp_path / "esm")
    table = pd.DataFrame({"id": ["a", "b", "c"], "sequence": ["MKV", "M" * 1500, "A" * 5000]})
    table.to_parquet(tmp_path / "p.parquet")
    args = ["embed", "--input", str(tmp_path / "p.parquet"), "--modality", "protein", "--model", "esm2"]
    assert main([*args, "--model-path", str(model), "--out", str(tmp_path / "p.zarr")]) == 0
    assert "2 items cut to 1,024 tokens, cache complete" in capsys.readouterr().out
    assert main(["cache", "info", str(tmp_path / "p.zarr")]) == 0
    assert "2 items cut to the model's token limit (n_truncated)" in capsys.readouterr().out


def test_a_cache_recorded_under_the_bin_file_of_a_two_format_folder_says_why_it_is_not_resumed(tmp_path, capsys):
    """An earlier version recorded pytorch_model.bin for a folder holding both formats (its rows came from
    model.safetensors): a run now is told that, and to embed anew, not to re-run with settings no flag restores."""
    import json

    import pandas as pd
    from dogmacache.cache.manifest import MANIFEST_KEY
    from dogmacache.cli import main
    from transformers import EsmModel

    both = write_tiny_esm2(tmp_path / "both")
    EsmModel.from_pretrained(str(both), add_pooling_layer=False).save_pretrained(
        str(tmp_path / "bin"), safe_serialization=False
    )
    shutil.move(tmp_path / "bin" / "pytorch_model.bin", both / "pytorch_model.bin")
    pd.DataFrame({"id": ["a", "b"], "sequence": ["MKV", "MKTAY"]}).to_parquet(tmp_path / "p.parquet")
    args = ["embed", "--input", str(tmp_path / "p.parquet"), "--modality", "protein", "--model", "esm2"]
    args += ["--model-path", str(both), "--out", str(tmp_path / "p.zarr")]
    assert main(args) == 0
    meta_path = tmp_path / "p.zarr" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    files = meta["attributes"][MANIFEST_KEY]["config"]["model_files"]
    files["pytorch_model.bin"] = file_sha256(str(both / "pytorch_model.bin"))  # as the earlier version wrote it
    del files["model.safetensors"]
    meta_path.write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "recorded pytorch_model.bin for a model folder holding both weight formats" in err and "--overwrite" in err


def test_a_whole_pickled_checkpoint_is_told_to_save_its_state_dict_not_that_it_is_damaged(tmp_path):
    import argparse

    from dogmacache.embed.adapters.weights import load_state_dict_file

    (tmp_path / "pk").mkdir()
    torch.save({"w": torch.zeros(2), "args": argparse.Namespace(a=1)}, tmp_path / "pk" / "pytorch_model.bin")
    with pytest.raises(
        ModelError, match=r"holds objects other than tensors .* save the model's state_dict alone"
    ) as err:
        load_state_dict_file(tmp_path / "pk")
    assert "\x1b[" not in str(err.value) and "truncated" not in str(err.value)


def test_a_layers_run_counts_the_items_it_cut_too(tmp_path, capsys):
    import pandas as pd
    from dogmacache.cli import main

    model = write_tiny_esm2(tmp_path / "esm")
    pd.DataFrame({"id": ["a", "b"], "sequence": ["MKV", "M" * 1500]}).to_parquet(tmp_path / "p.parquet")
    args = ["embed", "--input", str(tmp_path / "p.parquet"), "--modality", "protein", "--model", "esm2"]
    assert main([*args, "--model-path", str(model), "--layers=-1,1", "--out", str(tmp_path / "lay")]) == 0
    line = capsys.readouterr().out
    assert "1 items cut to 1,024 tokens, caches complete" in line and "padded with N" not in line
