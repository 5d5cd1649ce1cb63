"""The CDBridge task on tiny synthetic caches: shapes, finite losses, both stages in one run, checkpoints that
reload to equal outputs, and the one-line errors."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import write_cache
from dogmacache.errors import InputError
from dogmacache.train.controls import controls
from dogmacache.train.registry import config_from_dict, load_model
from dogmacache.train.task import check_examples, linked_items
from dogmacache.train.tasks.cdbridge.data import ExampleChunks, stage1_view
from dogmacache.train.tasks.cdbridge.task import CdbridgeTask
from scipy.stats import spearmanr

TISSUES = ["Brain", "Heart", "Liver"]
SPLIT = ["train"] * 6 + ["validation"] * 3 + ["test"] * 3


def write_recipe(tmp_path, n_bins: int = 4, mask_bins: int = 4) -> dict:
    rng = np.random.default_rng(0)
    n = len(SPLIT)
    ids = [f"T{i}" for i in range(n)]
    write_cache(
        tmp_path / "dna.zarr", rng.normal(size=(n, n_bins, 6)).astype(np.float32), ids=[f"w{i}" for i in range(n)]
    )
    write_cache(
        tmp_path / "protein.zarr",
        rng.normal(size=(5, 6)).astype(np.float32),
        ids=[f"P{i}" for i in range(5)],
        modality="protein",
    )
    write_cache(tmp_path / "tissue.zarr", rng.normal(size=(3, 5)).astype(np.float32), ids=TISSUES, modality="context")
    labels = pd.DataFrame(
        {
            "id": ids,
            "gene_id": ids,
            "split": SPLIT,
            "dna_id": [f"w{i}" for i in range(n)],
            # each protein in one split, as the recipe keeps them; transcript 3 has none
            "protein_id": ["P0", "P1", "P2", "", "P1", "P2", "P3", "P3", "P3", "P4", "P4", "P4"],
        }
    )
    for k, t in enumerate(TISSUES):
        labels[t] = rng.normal(size=n) + k
    labels.to_parquet(tmp_path / "labels.parquet")
    masks = (rng.random((n, mask_bins)) < 0.4).astype(np.uint8)
    masks[0, :2] = [0, 1]  # both classes present
    pd.DataFrame({"id": ids, "dna_id": labels["dna_id"], "mask": list(masks)}).to_parquet(tmp_path / "masks.parquet")
    pd.DataFrame({"tissue": TISSUES, "held_out": [False, False, True]}).to_parquet(tmp_path / "tissues.parquet")
    return {
        "task": "cdbridge",
        "data": {
            "labels": str(tmp_path / "labels.parquet"),
            "dna_cache": str(tmp_path / "dna.zarr"),
            "protein_cache": str(tmp_path / "protein.zarr"),
            "tissue_cache": str(tmp_path / "tissue.zarr"),
            "coding_masks": str(tmp_path / "masks.parquet"),
            "eval_batch": 5,
        },
        "model": {
            "d_model": 8,
            "n_heads": 2,
            "ffn_hidden": 8,
            "dictionary_size": 3,
            "output_tokens": 2,
            "functional_layers": 1,
            "tissue_layers": 1,
            "dropout": 0.0,
            "ablations": ["tissue_only"],
        },
        "train": {"epochs": 2, "batch_size": 4, "num_workers": 0, "device": "cpu", "lr": 1e-2},
        "output": {"dir": str(tmp_path / "out"), "resume": False},
    }


def test_load_splits_cells_and_holds_out_the_recipe_tissue(tmp_path):
    task = CdbridgeTask(config_from_dict(write_recipe(tmp_path)))
    data = task.load()
    assert data.held_out == ["Liver"]
    assert len(data.splits["train"]) == 6 * 2  # seen tissues only in training
    assert len(data.splits["test"]) == 3 * 3  # every tissue at evaluation
    assert len(stage1_view(data).splits["train"]) == 6
    assert data.splits["train"]["protein_present"].sum() == 5 * 2  # T3 has no protein
    raw = write_recipe(tmp_path)
    raw["data"]["train_held_out"] = True  # the held_out_seen ablation: Liver trained on too
    seen_too = CdbridgeTask(config_from_dict(raw))
    train = seen_too._examples(data, "train")
    assert len(train) == 6 * 3 and set(train["tissue_index"]) == {0, 1, 2}
    assert len(seen_too._examples(stage1_view(data), "train")) == 6  # stage 1: one example per transcript
    assert data.held_out == ["Liver"] and len(seen_too._examples(data, "test")) == 3 * 3


def test_two_steps_have_finite_losses_and_the_right_shapes(tmp_path):
    raw = write_recipe(tmp_path)
    raw["model"]["stage"] = 1
    task = CdbridgeTask(config_from_dict(raw))
    data = task.load()
    model, _, _ = task.build_model(data, {})
    tables = task.on_device(data, torch.device("cpu"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    chunk = task.train_chunks(data, 0)[0]
    out = task.train_outputs(model, chunk, tables)
    assert out.shape == (4, 4)  # (transcripts, bins)
    raw["model"]["stage"] = 2
    task2 = CdbridgeTask(config_from_dict(raw))
    data2 = task2.load()
    tables2 = task2.on_device(data2, torch.device("cpu"))
    chunk2 = task2.train_chunks(data2, 0)[0]
    losses = []
    for t, c, tab in ((task, chunk, tables), (task2, chunk2, tables2)):
        loss = t.loss(t.train_outputs(model, c, tab), c, tab)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert len(losses) == 2 and np.isfinite(losses).all()
    assert task2.train_outputs(model, chunk2, tables2).shape == (4, 1 + 6)  # expression + protein-space vector
    assert task2.predict_chunk(model.eval(), chunk2, tables2).shape == (4,)


def test_both_stages_run_and_checkpoints_reload_to_equal_outputs(tmp_path):
    from dogmacache.train.run import run_training

    raw = write_recipe(tmp_path)
    raw["model"]["ablations"] = ["tissue_only", "no_mask_supervision", "mask_filter", "held_out_seen"]
    config = config_from_dict(raw)
    summary = run_training(config, progress=False)
    out = tmp_path / "out"
    written = json.loads((out / "metrics.json").read_text())
    assert set(written["models"]) == {
        "cdbridge",
        "per_tissue_mean",
        "tissue_only",
        "no_mask_supervision",
        "mask_filter",
        "held_out_seen",
    }
    table = written["seen_vs_held_out"]
    assert set(table) == set(written["models"])
    assert np.isfinite(table["cdbridge"]["mask_auroc"]) and np.isfinite(table["cdbridge"]["spearman_held_out"])
    # no stage 1: no mask decoder to score, but the kept fractions of the merging stage 2 trained
    assert table["no_mask_supervision"]["mask_auroc"] is None and np.isfinite(
        table["no_mask_supervision"]["kept_coding"]
    )
    assert not (out / "stage1" / "no_mask_supervision_stage1_best.pt").exists()
    assert table["mask_filter"]["mask_auroc"] == table["cdbridge"]["mask_auroc"]  # it shares stage 1
    # held_out_seen trained on Liver too: Liver's scores when seen, beside the zero-shot ones
    log = (out / "log.csv").read_text()
    assert "held_out_seen," in log and np.isfinite(table["held_out_seen"]["r2_held_out"])
    for figure in ("per_tissue_r2.png", "seen_vs_held_out.png", "kept_tokens.png"):
        assert (out / figure).stat().st_size > 0
    from dogmacache.train.run import SHARED_FIGURES

    # every figure the run drew is named, so that the next run into the folder removes it before it trains
    assert {p.name for p in out.glob("*.png")} == {*SHARED_FIGURES, *CdbridgeTask.figure_names}
    test = written["models"]["cdbridge"]["test"]
    assert np.isfinite(test["r2_mean_seen"]) and np.isfinite(test["r2_mean_held_out"])
    assert test["per_tissue"]["Liver"]["held_out"] is True
    assert set(written["stage1"]["cdbridge"]["test"]) >= {"auroc", "auprc", "kept_coding", "kept_noncoding"}
    assert (out / "stage1" / "cdbridge_stage1_best.pt").is_file()
    assert summary["models"]["tissue_only"]["epochs_run"] == 2

    task = CdbridgeTask(config)
    data = task.load()
    tables = task.on_device(data, torch.device("cpu"))
    chunk = task.eval_chunks(data, "test")[0]
    first, again = load_model(out / "cdbridge_best.pt"), load_model(out / "cdbridge_best.pt")
    a, b = task.predict_chunk(first.eval(), chunk, tables), task.predict_chunk(again.eval(), chunk, tables)
    assert a.shape == (5,) and torch.equal(a, b)
    stage1 = load_model(out / "stage1" / "cdbridge_stage1_best.pt")
    assert torch.equal(stage1.dictionary, first.dictionary)  # stage 2 started from, and froze, stage 1


def test_a_stage_1_run_reports_its_own_mask_metrics(tmp_path):
    """A run of stage 1 alone ([model] stage = 1) has no prerequisite stage 1: its table's mask columns are the
    masks it scored itself, beside the position prior, not empty."""
    from dogmacache.train.run import run_training

    raw = write_recipe(tmp_path)
    raw["model"].update(stage=1, ablations=[])
    run_training(config_from_dict(raw), progress=False)
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    scored = written["models"]["cdbridge"]["test"]
    row = written["seen_vs_held_out"]["cdbridge"]
    assert row["mask_auroc"] == scored["auroc"] and row["prior_auroc"] == scored["prior_auroc"]
    assert written["stage1"]["cdbridge"]["validation"]["auroc"] == written["models"]["cdbridge"]["validation"]["auroc"]
    assert row["spearman_held_out"] is None  # stage 1 predicts no expression


def test_a_window_or_gene_in_two_splits_is_refused_before_anything_trains(tmp_path):
    """Two transcripts of one TSS window (or one gene) in train and test: the model would be scored on the DNA it
    trained on. The gtex recipe keeps them in one split; a hand-made table that does not is refused."""
    from dogmacache.train.run import run_training

    raw = write_recipe(tmp_path)
    labels = pd.read_parquet(raw["data"]["labels"])
    labels.loc[9, "dna_id"] = "w0"  # a test transcript on a training transcript's window
    labels.to_parquet(raw["data"]["labels"])
    with pytest.raises(
        InputError, match=r"1 value\(s\) of 'dna_id' sit in more than one split, e.g. 'w0' in train and test"
    ):
        run_training(config_from_dict(raw), progress=False)
    assert not (tmp_path / "out" / "cdbridge_last.pt").exists()
    labels.loc[9, "dna_id"] = "w9"
    labels.to_parquet(raw["data"]["labels"])
    task = CdbridgeTask(config_from_dict(raw))
    data = task.load()
    windows = labels.assign(dna_id=[f"chr1:{100 * i}:+" for i in range(len(labels))])
    windows.loc[9, "dna_id"] = "chr1:0:-"  # the other strand of a training transcript's window: the same bases
    with pytest.raises(InputError, match=r"of 'dna_site' sit in more than one split, e.g. 'chr1:0' in train and test"):
        check_examples(task, dataclasses.replace(data, links=linked_items(windows)), "labels")
    labels["gene_id"] = ["G0"] * 2 + [f"G{i}" for i in range(2, len(labels) - 1)] + ["G0"]  # G0 in train and test
    labels.to_parquet(raw["data"]["labels"])
    with pytest.raises(InputError, match=r"of 'gene_id' sit in more than one split, e.g. 'G0' in train and test"):
        run_training(config_from_dict(raw), progress=False)


def test_a_resumed_stage_2_keeps_the_stage_1_it_started_from_or_is_refused(tmp_path):
    """Stage 2 holds its stage 1's weights (frozen). A resume under which stage 1 would train further (more
    epochs) or another finished stage 1 is named would report that stage 1 beside a model holding the old one:
    refused before anything trains; the same run resumed goes on."""
    import shutil

    from dogmacache.train import checkpoint
    from dogmacache.train.run import run_training

    raw = write_recipe(tmp_path)
    raw["model"]["ablations"] = []
    raw["train"]["early_stop_patience"] = 99
    run_training(config_from_dict(raw), progress=False)
    out = tmp_path / "out"
    stage1_best = out / "stage1" / "cdbridge_stage1_best.pt"
    handed = checkpoint.read(out / "cdbridge_last.pt")["prerequisites"]["stage1"]
    assert handed["weights"] == checkpoint.weights_digest(checkpoint.read(stage1_best)["model"])
    raw["output"]["resume"] = True
    run_training(config_from_dict(raw), progress=False)  # the same run: stage 1 is what stage 2 started from
    shutil.move(out, tmp_path / "moved")  # output.dir may change on a resume: stage 1 is looked up in the new one
    run_training(config_from_dict({**raw, "output": {**raw["output"], "dir": str(tmp_path / "moved")}}), progress=False)
    shutil.move(tmp_path / "moved", out)
    raw["train"]["epochs"] = 4
    with pytest.raises(
        InputError,
        match=r"cdbridge_last\.pt started from its stage1 as it was after epoch \d, and that stage1 is trained further",
    ):
        run_training(config_from_dict(raw), progress=False)
    assert checkpoint.read(out / "stage1" / "cdbridge_stage1_last.pt")["state"]["epoch"] == 2  # nothing trained
    legacy = checkpoint.read(out / "cdbridge_last.pt")
    del legacy["prerequisites"]  # as an earlier version wrote it
    torch.save(legacy, out / "cdbridge_last.pt")
    with pytest.raises(InputError, match=r"cdbridge_last\.pt records no stage1 it started from \(an earlier version"):
        run_training(config_from_dict(raw), progress=False)
    # an ablation sharing the model's stage 1 is checked against that one (it runs under the model's name)
    from dogmacache.train.run import _own_prerequisite

    task = CdbridgeTask(config_from_dict({**raw, "model": {**raw["model"], "ablations": ["tissue_only"]}}))
    (ablation,) = [b.task for n, b in task.baselines(task.load()).items() if n == "tissue_only"]
    (p,) = ablation.prerequisites(task.load()).values()
    reader = lambda path, **how: checkpoint.read(path, **how)  # noqa: E731
    assert _own_prerequisite("tissue_only", "stage1", p, out, reader) == [out / "stage1" / "cdbridge_stage1_last.pt"]
    # a finished stage 1 named in [data] stage1_checkpoint, replaced by another of the same data
    named = tmp_path / "stage1.pt"
    shutil.copy(stage1_best, named)
    raw["train"]["epochs"] = 2
    raw["data"]["stage1_checkpoint"] = str(named)
    raw["output"].update(dir=str(tmp_path / "named"), resume=False)
    run_training(config_from_dict(raw), progress=False)
    other = dict(
        raw, output={**raw["output"], "dir": str(tmp_path / "other")}, data={**raw["data"], "stage1_checkpoint": ""}
    )
    other["train"] = {**raw["train"], "seed": 1}
    run_training(config_from_dict(other), progress=False)
    shutil.copy(tmp_path / "other" / "stage1" / "cdbridge_stage1_best.pt", named)
    raw["output"]["resume"] = True
    with pytest.raises(InputError, match=r"that stage1 now holds other weights"):
        run_training(config_from_dict(raw), progress=False)


def test_a_named_stage_1_must_be_a_stage_1_of_this_model_and_a_torn_resume_file_says_what_to_do(tmp_path):
    from dogmacache.train.run import run_training

    raw = write_recipe(tmp_path)
    raw["model"]["ablations"] = []
    run_training(config_from_dict(raw), progress=False)
    out = tmp_path / "out"
    for named, message in (
        (tmp_path / "nope.pt", r"\[data\] stage1_checkpoint = '.*nope\.pt' does not exist; name a finished stage1"),
        (
            out / "cdbridge_best.pt",
            r"cdbridge_best\.pt was trained with \[model\] stage = 2, and the run it stands for has 1",
        ),
    ):
        again = {**raw, "data": {**raw["data"], "stage1_checkpoint": str(named)}}
        again["output"] = {**raw["output"], "dir": str(tmp_path / "again")}
        with pytest.raises(InputError, match=message):
            run_training(config_from_dict(again), progress=False)
    # a standalone stage-1 run ([model] stage = 1, its default ablations unused) stands for the stage 1 of a stage 2
    # that differs in stage 2's keys alone; an ablation changing what its stage 1 is cannot start from it
    alone = {**raw, "model": {**raw["model"], "stage": 1, "ablations": ["tissue_only"]}}
    alone["output"] = {**raw["output"], "dir": str(tmp_path / "alone")}
    run_training(config_from_dict(alone), progress=False)
    named = {**raw, "data": {**raw["data"], "stage1_checkpoint": str(tmp_path / "alone" / "cdbridge_best.pt")}}
    named["model"] = {**raw["model"], "contrastive_weight": 0.5, "output_tokens": 3}
    named["output"] = {**raw["output"], "dir": str(tmp_path / "named")}
    run_training(config_from_dict(named), progress=False)
    named["output"]["overwrite"] = True
    for key, value in (("merge_rate_mean", 0.2), ("n_heads", 1), ("functional_layers", 2)):  # same shapes or not
        other = {**named, "model": {**named["model"], key: value}}
        with pytest.raises(InputError, match=rf"was trained with \[model\] {key} = "):
            run_training(config_from_dict(other), progress=False)
    named["model"]["ablations"] = ["no_recovery"]
    with pytest.raises(
        InputError, match=r"recovery = True, .* has False; .*the ablation no_recovery trains another stage1"
    ):
        run_training(config_from_dict(named), progress=False)
    best = out / "stage1" / "cdbridge_stage1_best.pt"
    kept = best.read_bytes()
    best.write_bytes(b"torn")  # the stage 1 the model started from: removing it would strand the model
    raw["output"]["resume"] = True
    with pytest.raises(
        InputError, match=r"cdbridge_stage1_best\.pt' is not a readable checkpoint .*; start the run over"
    ):
        run_training(config_from_dict(raw), progress=False)
    best.write_bytes(kept)
    (out / "stage1" / "cdbridge_stage1_last.pt").write_bytes(b"torn")
    with pytest.raises(InputError, match=r"cdbridge_stage1_last\.pt' is not a readable checkpoint .*; remove"):
        run_training(config_from_dict(raw), progress=False)
    raw["output"]["resume"] = False
    (out / "cdbridge_last.pt").write_bytes(b"torn by a full disk")
    raw["output"]["resume"] = True
    with pytest.raises(
        InputError, match=r"cdbridge_last\.pt' is not a readable checkpoint .*; remove .* to train that model again"
    ):
        run_training(config_from_dict(raw), progress=False)


def test_a_tissue_cache_control_lacking_a_modelled_tissue_is_refused_before_anything_trains(tmp_path):
    from dogmacache.train.run import run_training

    raw = write_recipe(tmp_path)
    write_cache(
        tmp_path / "tissue2.zarr", np.zeros((3, 5), np.float32), ids=["Brain", "Heart", "Lung"], modality="context"
    )
    raw["train"]["control_caches"] = [f"tissue_cache={tmp_path / 'tissue2.zarr'}"]
    with pytest.raises(
        InputError, match=r"\(the control control_tissue_tissue2\) lacks 1 of the 3 items .* e.g. 'Liver'"
    ):
        run_training(config_from_dict(raw), progress=False)
    assert not (tmp_path / "out" / "stage1").exists()  # nothing trained


def test_errors_name_the_value_and_the_fix(tmp_path):
    raw = write_recipe(tmp_path)
    raw["model"]["dictionary_size"] = 9
    task = CdbridgeTask(config_from_dict(raw))
    with pytest.raises(InputError, match="dictionary_size = 9 exceeds the 3 distinct training proteins"):
        task.build_model(task.load(), {})  # 3: P3 and P4 belong to no training transcript, so they are not counted
    raw = write_recipe(tmp_path)
    raw["model"]["merge_rate_mean"] = 0.7
    with pytest.raises(InputError, match="merge_rate_mean"):
        config_from_dict(raw)
    raw["model"]["merge_rate_mean"] = 0.2
    raw["data"]["tissues"] = ["Brain", "Heart", "Liver"]
    write_cache(tmp_path / "tissue2.zarr", np.zeros((2, 5), np.float32), ids=TISSUES[:2], modality="context")
    raw["data"]["tissue_cache"] = str(tmp_path / "tissue2.zarr")
    with pytest.raises(InputError, match="tissue 'Liver' is not in"):
        CdbridgeTask(config_from_dict(raw)).load()
    (tmp_path / "s").mkdir()
    raw = write_recipe(tmp_path / "s")
    labels = pd.read_parquet(raw["data"]["labels"])
    labels.loc[4, "split"] = "valid"  # was silently dropped: in no split
    labels.to_parquet(raw["data"]["labels"])
    with pytest.raises(InputError, match=r"1 row\(s\) have a split other than .*row 4 \('valid', id 'T4'\)"):
        CdbridgeTask(config_from_dict(raw)).load()
    (tmp_path / "m").mkdir()
    raw = write_recipe(tmp_path / "m", mask_bins=5)
    with pytest.raises(InputError, match="5 bins per mask but .* has 4 positions; re-run the recipe"):
        CdbridgeTask(config_from_dict(raw)).load()
    pooled = np.random.default_rng(0).normal(size=(len(SPLIT), 4, 6)).astype(np.float32)
    ids = [f"w{i}" for i in range(len(SPLIT))]
    write_cache(tmp_path / "m" / "pooled.zarr", pooled, ids=ids, config={"max_positions": 4})
    raw["data"]["dna_cache"] = str(tmp_path / "m" / "pooled.zarr")  # IsoFormer's pooled DNA cache, given to CDBridge
    with pytest.raises(InputError, match="embedded with --max-positions 4, .* embed the DNA for CDBridge without"):
        CdbridgeTask(config_from_dict(raw)).load()
    write_cache(tmp_path / "m" / "k8.zarr", pooled, ids=ids, config={"max_positions": 8})  # 8 >= 4 bins: no pooling
    raw["data"]["dna_cache"] = str(tmp_path / "m" / "k8.zarr")
    with pytest.raises(InputError, match="has 4 positions; re-run the recipe with --window-bins"):
        CdbridgeTask(config_from_dict(raw)).load()


def test_tissue_and_dna_inputs_are_z_scored_with_seen_tissues_and_training_windows(tmp_path):
    raw = write_recipe(tmp_path)
    data = CdbridgeTask(config_from_dict(raw)).load()
    seen = data.tissue_embeddings[:2].double()  # Brain and Heart; Liver is held out
    np.testing.assert_allclose(seen.mean(0).numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(seen.std(0, unbiased=False).numpy(), 1.0, atol=1e-4)
    assert data.tissue_embeddings[2].abs().max() > 0  # the held-out tissue is scaled with the seen tissues' numbers
    train_rows = np.unique(data.transcripts["train"]["dna_row"])
    tokens = data.dna_rows[train_rows].reshape(-1, data.dna_rows.shape[-1]).astype(np.float64)
    np.testing.assert_allclose(tokens.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(tokens.std(0), 1.0, atol=1e-4)
    # without the preload the same numbers are applied on read
    raw["data"]["preload_bytes"] = 0
    streamed = CdbridgeTask(config_from_dict(raw)).load()
    assert streamed.dna_rows is None
    chunk = ExampleChunks(streamed, streamed.transcripts["train"], 6).chunk(np.arange(6))
    np.testing.assert_allclose(
        chunk.rows["dna"].numpy(), data.dna_rows[np.unique(data.transcripts["train"]["dna_row"])], atol=1e-5
    )
    raw["data"].update(standardize_tissues=False, standardize_dna=False, preload_bytes=1 << 30)
    plain = CdbridgeTask(config_from_dict(raw)).load()
    from dogmacache.cache import open_cache

    np.testing.assert_array_equal(
        plain.tissue_embeddings.numpy(), open_cache(tmp_path / "tissue.zarr").read_rows(np.arange(3), dtype=np.float32)
    )
    np.testing.assert_array_equal(
        plain.dna_rows, open_cache(tmp_path / "dna.zarr").read_rows(np.arange(12), dtype=np.float32)
    )


def test_mask_filter_keeps_the_coding_slots_or_every_slot_when_none_is_coding():
    from dogmacache.train import merging
    from dogmacache.train.tasks.cdbridge.model import CdbridgeModel

    model = CdbridgeModel(
        dna_width=6,
        protein_width=6,
        tissue_width=5,
        n_bins=4,
        d_model=8,
        n_heads=2,
        ffn_hidden=8,
        dictionary_size=3,
        merge_rate_mean=0.25,
        merge_rate_std=0.0,
        functional_layers=1,
        tissue_layers=1,
        output_tokens=2,
        dropout=0.0,
        recovery=True,
        tissue_input="full",
        filter_by_mask=True,
    ).eval()
    fused = torch.randn(2, 4, 8)
    # row 0: bins 0 and 1 merge into one slot; row 1: nothing merges
    plan = merging.plan_from_pairs(
        torch.tensor([[True, False, False, False], [False] * 4]), torch.tensor([[1, 1, 2, 3], [0, 1, 2, 3]])
    )
    logits = torch.tensor([[5.0, 5.0, -5.0, 5.0], [-5.0, -5.0, -5.0, -5.0]])  # row 1: no coding bin
    model.coding_logits = lambda f, p: logits
    keys = model.coding_slots(fused, plan)
    assert keys.tolist() == [[True, False, True, False], [True, True, True, True]]
    assert plan.valid.tolist() == [[True, True, True, False], [True, True, True, True]]


def test_a_frozen_stage_1_gives_the_same_fused_tokens_at_every_training_step():
    from dogmacache.train.tasks.cdbridge.model import CdbridgeModel

    model = CdbridgeModel(
        dna_width=6,
        protein_width=6,
        tissue_width=5,
        n_bins=4,
        d_model=8,
        n_heads=2,
        ffn_hidden=8,
        dictionary_size=3,
        merge_rate_mean=0.25,
        merge_rate_std=0.1,
        functional_layers=1,
        tissue_layers=1,
        output_tokens=2,
        dropout=0.5,
        recovery=True,
        tissue_input="full",
    )
    dna = torch.randn(3, 4, 6)
    model.train()
    assert not torch.equal(model.fuse(dna), model.fuse(dna))  # dropout while stage 1 trains
    model.freeze_stage1()
    model.train()
    assert torch.equal(model.fuse(dna), model.fuse(dna)) and not model.connector.training
    assert model.conditioned.training and not any(p.requires_grad for p in model.connector.parameters())


def test_kept_fractions_count_only_mergeable_bins_so_they_have_no_floor(tmp_path):
    from dogmacache.train.tasks.cdbridge.report import kept_fractions

    raw = write_recipe(tmp_path)
    raw["model"]["stage"] = 1
    task = CdbridgeTask(config_from_dict(raw))
    data = task.load()
    model, _, _ = task.build_model(data, {})
    model.rate_mean = 0.5  # every set-A bin merges away
    merged = kept_fractions(model, data, "test", torch.device("cpu"), 4)
    assert merged["kept_coding"] == 0.0 and merged["kept_noncoding"] == 0.0 and merged["kept_all_bins"] == 0.5
    model.rate_mean = 0.0
    assert kept_fractions(model, data, "test", torch.device("cpu"), 4)["kept_coding"] == 1.0


def test_the_position_prior_is_each_bins_training_frequency_per_strand(tmp_path):
    from dogmacache.train.tasks.cdbridge.report import position_prior

    task = CdbridgeTask(config_from_dict(write_recipe(tmp_path)))
    data = task.load()
    train = data.transcripts["train"].assign(strand=["+", "-"] * (len(data.transcripts["train"]) // 2))
    data.transcripts = {**data.transcripts, "train": train}
    data.transcripts["test"] = data.transcripts["test"].assign(strand="-")
    masks = np.stack(train["target"].to_list())
    expected = masks[(train["strand"] == "-").to_numpy()].mean(0)
    np.testing.assert_allclose(position_prior(data, "test"), np.tile(expected, (len(data.transcripts["test"]), 1)))


def test_a_held_out_tissue_is_scaled_with_the_seen_tissues_statistics_never_its_own(tmp_path):
    raw = write_recipe(tmp_path)
    labels = pd.read_parquet(tmp_path / "labels.parquet")
    log1p = labels.copy()
    log1p[TISSUES] = np.abs(labels[TISSUES].to_numpy()) + np.array([0.5, 1.0, 3.0])  # Liver (held out) runs high
    log1p.to_parquet(tmp_path / "labels_log1p.parquet")
    data = CdbridgeTask(config_from_dict(raw)).load()
    train = (labels["split"] == "train").to_numpy()
    seen = log1p.loc[train, ["Brain", "Heart"]].to_numpy()
    scale = data.extras["label_scale"]
    assert scale["Liver"]["statistics"] == "seen tissues pooled"
    assert scale["Liver"]["mean"] == pytest.approx(seen.mean()) and scale["Liver"]["std"] == pytest.approx(seen.std())
    assert scale["Brain"]["mean"] == pytest.approx(log1p.loc[train, "Brain"].mean())
    test = data.splits["test"]
    liver = test[test["tissue_index"] == 2]
    expected = (log1p.loc[labels["split"] == "test", "Liver"].to_numpy() - seen.mean()) / seen.std()
    np.testing.assert_allclose(liver["target"].to_numpy(), expected, rtol=1e-5)
    # Liver's own values move; its scaling does not
    log1p["Liver"] += 10
    log1p.to_parquet(tmp_path / "labels_log1p.parquet")
    again = CdbridgeTask(config_from_dict(raw)).load().extras["label_scale"]["Liver"]
    assert again["mean"] == pytest.approx(scale["Liver"]["mean"])


def test_each_model_that_needs_its_own_stage_1_gets_its_own_checkpoint(tmp_path):
    from dogmacache.train.run import run_training

    raw = write_recipe(tmp_path)
    raw["model"]["ablations"] = ["no_merging", "tissue_only"]  # no_merging: another stage 1; tissue_only: shares
    summary = run_training(config_from_dict(raw), progress=False)
    stage1 = tmp_path / "out" / "stage1"
    assert sorted(p.name for p in stage1.glob("*_best.pt")) == ["cdbridge_stage1_best.pt", "no_merging_stage1_best.pt"]
    recorded = {name: entry.get("checkpoint") for name, entry in summary["stage1"].items()}
    assert recorded["tissue_only"] == recorded["cdbridge"] == str(stage1 / "cdbridge_stage1_best.pt")
    assert recorded["no_merging"] == str(stage1 / "no_merging_stage1_best.pt")


def test_a_tissue_held_out_in_training_but_scaled_by_the_recipe_with_its_own_labels_is_refused(tmp_path):
    """Without labels_log1p.parquet the labels of a tissue the recipe did not hold out are z-scored with its own
    training rows: a zero-shot score resting on them would rest on its own labels."""
    raw = write_recipe(tmp_path)
    raw["data"]["holdout_tissues"] = ["Heart"]
    with pytest.raises(InputError, match=r"held-out tissue 'Heart' is standardised in .*labels\.parquet with its own"):
        CdbridgeTask(config_from_dict(raw)).load()
    labels = pd.read_parquet(tmp_path / "labels.parquet")
    labels.to_parquet(tmp_path / "labels_log1p.parquet")  # the unscaled values beside them: scaled here instead
    data = CdbridgeTask(config_from_dict(raw)).load()
    assert data.extras["label_scale"]["Heart"]["statistics"] == "seen tissues pooled"
    assert data.held_out == ["Heart", "Liver"]


def test_with_every_tissue_trained_on_the_controls_change_the_table_the_model_trains_on(tmp_path):
    """[data] train_held_out reads the training cells of every tissue (a `variants` table): the null must train
    on its permuted labels and the shuffled-inputs control on its shuffled rows, not on the real table."""
    raw = write_recipe(tmp_path)
    raw["data"]["train_held_out"] = True
    raw["train"]["controls"] = ["permuted_labels", "shuffled_inputs"]
    task = CdbridgeTask(config_from_dict(raw))
    data = task.load()
    real = task._examples(data, "train")
    assert len(real) == 6 * 3
    made = controls(task, data)
    permuted = made["control_permuted_labels"][0]._examples(made["control_permuted_labels"][1], "train")
    shuffled = made["control_shuffled_inputs"][0]._examples(made["control_shuffled_inputs"][1], "train")
    assert len(permuted) == len(shuffled) == len(real)
    assert sorted(permuted["target"]) == sorted(real["target"]) and not permuted["target"].equals(real["target"])
    assert (shuffled["target"] == real["target"]).all() and not shuffled["dna_row"].equals(real["dna_row"])
    # one permutation for the split and its every-tissue table: an item keeps one row across both
    moved = dict(zip(real["dna_row"], shuffled["dna_row"], strict=True))
    seen = made["control_shuffled_inputs"][1].splits["train"]
    assert all(moved[a] == b for a, b in zip(data.splits["train"]["dna_row"], seen["dna_row"], strict=True))


def test_a_finished_stage_1_is_taken_only_for_the_data_it_was_trained_on(tmp_path):
    """Another fold (other held-out tissues) may start from a finished stage 1; a stage 1 trained on other splits
    (its training transcripts this run's test ones) or another DNA cache may not."""
    from dogmacache.train.run import run_training

    raw = write_recipe(tmp_path)
    raw["model"]["ablations"] = []
    raw["train"].update({"epochs": 1, "baselines": False})
    run_training(config_from_dict(raw), progress=False)
    stage1 = str(tmp_path / "out" / "stage1" / "cdbridge_stage1_best.pt")

    fold = write_recipe(tmp_path)
    fold["model"]["ablations"] = []
    fold["train"].update({"epochs": 1, "baselines": False})
    fold["data"].update({"stage1_checkpoint": stage1, "holdout_tissues": ["Heart"], "recipe_holdout": False})
    fold["output"]["dir"] = str(tmp_path / "fold")
    labels = pd.read_parquet(tmp_path / "labels.parquet")
    labels.to_parquet(tmp_path / "labels_log1p.parquet")  # Heart scaled with the seen tissues' statistics
    summary = run_training(config_from_dict(fold), progress=False)
    assert summary["models"]["cdbridge"]["epochs_run"] == 1

    swapped = labels.assign(split=labels["split"].map({"train": "test", "test": "train", "validation": "validation"}))
    swapped.to_parquet(tmp_path / "swapped.parquet")
    fold["output"]["overwrite"] = True
    other = dict(fold, data={**fold["data"], "labels": str(tmp_path / "swapped.parquet")})
    with pytest.raises(InputError, match=r"cdbridge_stage1_best\.pt was trained on other test examples than this run"):
        run_training(config_from_dict(other), progress=False)
    assert (tmp_path / "fold" / "metrics.json").exists()  # refused before the fold's finished result was let go
    # the same files at other paths: taken (a checkpoint records the files it read by their content)
    (tmp_path / "moved").mkdir()
    shutil.copy(tmp_path / "labels.parquet", tmp_path / "moved" / "labels.parquet")
    shutil.copy(tmp_path / "masks.parquet", tmp_path / "moved" / "masks.parquet")
    shutil.copy(tmp_path / "labels_log1p.parquet", tmp_path / "moved" / "labels_log1p.parquet")
    shutil.copy(tmp_path / "tissues.parquet", tmp_path / "moved" / "tissues.parquet")
    where = {
        "labels": str(tmp_path / "moved" / "labels.parquet"),
        "coding_masks": str(tmp_path / "moved" / "masks.parquet"),
    }
    copied = dict(fold, data={**fold["data"], **where})
    assert run_training(config_from_dict(copied), progress=False)["models"]["cdbridge"]["epochs_run"] == 1
    write_cache(
        tmp_path / "dna2.zarr",
        np.random.default_rng(1).normal(size=(len(SPLIT), 4, 6)).astype(np.float32),
        ids=[f"w{i}" for i in range(len(SPLIT))],
    )
    moved = dict(fold, data={**fold["data"], "dna_cache": str(tmp_path / "dna2.zarr")})
    with pytest.raises(InputError, match=r"cdbridge_stage1_best\.pt was trained on a dna cache with shards_digest"):
        run_training(config_from_dict(moved), progress=False)
    # a control on another DNA cache cannot start from a stage 1 of this one: refused before the model trains
    before = (tmp_path / "fold" / "cdbridge_best.pt").stat().st_mtime_ns
    control = dict(fold, train={**fold["train"], "control_caches": [f"dna_cache={tmp_path / 'dna2.zarr'}"]})
    with pytest.raises(InputError, match=r"was trained on a dna cache with .*the control control_dna_dna2 .*drop that"):
        run_training(config_from_dict(control), progress=False)
    assert (tmp_path / "fold" / "cdbridge_best.pt").stat().st_mtime_ns == before


def test_masks_of_other_bins_or_the_transcripts_orientation_are_refused(tmp_path):
    """The masks' bins must be the DNA cache's positions: the recipe.json beside the masks says their bp per bin and
    orientation; the cache records its model's bp per bin."""
    raw = write_recipe(tmp_path)
    dna = np.random.default_rng(1).normal(size=(len(SPLIT), 4, 6)).astype(np.float32)
    shutil.rmtree(tmp_path / "dna.zarr")
    write_cache(tmp_path / "dna.zarr", dna, ids=[f"w{i}" for i in range(len(SPLIT))], config={"bin_bp": 128})
    recipe = tmp_path / "recipe.json"
    for mask, message in (
        ({"bin_bp": 64, "orientation": "reference"}, r"masks of 64 bp bins .* has 128 bp bins; re-run the recipe "),
        ({"bin_bp": 128, "orientation": "transcript"}, r"'transcript' orientation .* run along the reference strand"),
    ):
        recipe.write_text(json.dumps({"recipe": "gtex", "mask": {"window_bins": 4, **mask}}))
        with pytest.raises(InputError, match=message):
            CdbridgeTask(config_from_dict(raw)).load()
    recipe.write_text(
        json.dumps({"recipe": "gtex", "mask": {"window_bins": 4, "bin_bp": 128, "orientation": "reference"}})
    )
    assert CdbridgeTask(config_from_dict(raw)).load().splits["train"] is not None


def test_a_tissues_own_part_scores_zero_for_a_tissue_blind_model_and_one_for_the_labels():
    """`tissue_specific_spearman`: the label minus the seen tissues' mean for the transcript (the other seen ones'
    for a seen tissue), against the prediction likewise. What the tissues share cannot score there."""
    from dogmacache.train.tasks.cdbridge.report import tissue_specific_spearman

    rng = np.random.default_rng(0)
    n, tissues, held = 40, ["A", "B", "C", "H"], ["H"]
    shared = rng.normal(size=n) * 3  # most of every label, as in the demo and GTEx
    own = {t: rng.normal(size=n) for t in tissues}
    transcripts = np.repeat(np.arange(n), len(tissues))
    tissue_of = np.tile(tissues, n)
    labels = np.array([shared[i] + own[t][i] for i, t in zip(transcripts, tissue_of, strict=True)])
    blind = np.array([shared[i] for i in transcripts])  # the shared part exactly, the same for every tissue
    scored = tissue_specific_spearman(blind, labels, transcripts, tissue_of, ["A", "B", "C"], held)
    assert set(scored) == set(tissues) and all(v == 0.0 for v in scored.values())
    perfect = tissue_specific_spearman(labels, labels, transcripts, tissue_of, ["A", "B", "C"], held)
    assert all(v == pytest.approx(1.0) for v in perfect.values())
    h_rows = tissue_of == "H"  # and the plain Spearman of the blind model on the held-out tissue is high
    assert spearmanr(blind[h_rows], labels[h_rows])[0] > 0.8


def test_a_tissues_table_cannot_vouch_for_labels_scaled_with_a_held_out_tissues_own_statistics(tmp_path):
    """Without labels_log1p.parquet the held-out tissues' labels are used as the recipe scaled them. A tissues table
    from another recipe run (or one whose held_out flags read true by accident) must not let a tissue scaled with
    its own training labels be scored as held out: the labels themselves are checked."""
    raw = write_recipe(tmp_path)
    labels = pd.read_parquet(tmp_path / "labels.parquet")
    train = labels["split"] == "train"
    own = labels["Heart"]  # Heart standardised with its own training rows, as a recipe that did not hold it out does
    labels["Heart"] = (own - own[train].mean()) / own[train].std(ddof=0)
    labels.to_parquet(tmp_path / "labels.parquet")
    pd.DataFrame({"tissue": TISSUES, "held_out": [False, True, True]}).to_parquet(tmp_path / "other.parquet")
    raw["data"]["tissues_table"] = str(tmp_path / "other.parquet")
    with pytest.raises(InputError, match=r"held-out tissue 'Heart' is centred in .*the mean of its training labels"):
        CdbridgeTask(config_from_dict(raw)).load()
    # pandas' std (ddof 1), every split's rows (the test labels among them), or centring alone: refused alike
    for rows, scale in ((train, own[train].std(ddof=1)), (slice(None), own.std()), (train, 1.0)):
        labels["Heart"] = (own - own[rows].mean()) / scale
        labels.to_parquet(tmp_path / "labels.parquet")
        with pytest.raises(InputError, match=r"held-out tissue 'Heart' is centred in .* on its own labels"):
            CdbridgeTask(config_from_dict(raw)).load()
    labels["Heart"] = (own - own[train].mean()) / own[train].std(ddof=0)
    labels.to_parquet(tmp_path / "labels.parquet")
    # a flag column that is not true/false (NaN, the text "False") is refused, not read as held out
    nullable = pd.array([False, None, True], dtype="boolean")  # a bool dtype that holds NA
    for flags in ([False, np.nan, True], ["False", "False", "True"], nullable):
        pd.DataFrame({"tissue": TISSUES, "held_out": flags}).to_parquet(tmp_path / "other.parquet")
        with pytest.raises(InputError, match=r"held_out column holds \w+ values .* not true/false"):
            CdbridgeTask(config_from_dict(raw)).load()
    # the recipe's own table (Liver held out, scaled with the seen tissues) still loads
    raw["data"]["tissues_table"] = ""
    assert CdbridgeTask(config_from_dict(raw)).load().held_out == ["Liver"]


def test_coding_masks_of_repeated_ids_missing_columns_or_other_lengths_are_refused(tmp_path):
    raw = write_recipe(tmp_path)
    masks = pd.read_parquet(tmp_path / "masks.parquet")
    cases = {
        "repeated": (pd.concat([masks, masks.iloc[:1]]), r"transcript 'T0' has two rows in .*masks"),
        "no mask column": (masks.drop(columns="mask"), r"has no column 'mask'|lacks .*mask|mask"),
        "one shorter": (
            masks.assign(mask=[m[:3] if i == 5 else m for i, m in enumerate(masks["mask"])]),
            r"transcript 'T5''s mask in .* is no list of 4 flags like the others",
        ),
        "one missing": (
            masks.assign(mask=[None if i == 2 else m for i, m in enumerate(masks["mask"])]),
            r"transcript 'T2''s mask in .* is no list of 4 flags",
        ),
    }
    for table, message in cases.values():
        table.to_parquet(tmp_path / "bad_masks.parquet")
        raw["data"]["coding_masks"] = str(tmp_path / "bad_masks.parquet")
        with pytest.raises(InputError, match=message):
            CdbridgeTask(config_from_dict(raw)).load()


def test_non_finite_labels_log1p_values_are_refused(tmp_path):
    raw = write_recipe(tmp_path)
    labels = pd.read_parquet(tmp_path / "labels.parquet")
    labels.loc[4, "Brain"] = np.nan
    labels.to_parquet(tmp_path / "labels_log1p.parquet")
    with pytest.raises(InputError, match=r"labels_log1p\.parquet has missing or non-finite values"):
        CdbridgeTask(config_from_dict(raw)).load()


def test_a_stage_1_runs_permutation_null_is_scored_on_its_own_metrics(tmp_path):
    from dogmacache.train.run import run_training

    raw = write_recipe(tmp_path)
    raw["model"].update(stage=1, ablations=[])
    raw["train"].update(controls=["permuted_labels"], null_draws=2, epochs=1)
    summary = run_training(config_from_dict(raw), progress=False)
    null = summary["null"]["test"]
    assert set(null) == {"neg_bce", "auroc", "auprc"}  # stage 2's expression metrics: never scored by stage 1
    assert all(null[m]["draws_scored"] == 2 and "not_scored" not in null[m] for m in null)


def test_a_resume_refuses_a_tissues_table_or_labels_log1p_changed_beside_the_labels(tmp_path):
    """[data] tissues_table and labels_log1p left empty read the files beside the labels: a checkpoint records
    them by content too, so that a resume cannot go on with another tissue held out (one it trained on) or another
    scaling."""
    from dogmacache.train.run import run_training

    raw = write_recipe(tmp_path)
    raw["model"]["ablations"] = []
    labels = pd.read_parquet(tmp_path / "labels.parquet")
    labels.to_parquet(tmp_path / "labels_log1p.parquet")
    run_training(config_from_dict(raw), progress=False)
    written = torch.load(tmp_path / "out" / "cdbridge_last.pt", weights_only=False)
    assert {"tissues_table", "labels_log1p"} <= set(written["data_files"])
    raw["output"]["resume"] = True
    raw["train"]["epochs"] = 3
    pd.DataFrame({"tissue": TISSUES, "held_out": [False, True, False]}).to_parquet(tmp_path / "tissues.parquet")
    with pytest.raises(
        InputError,
        match=r"trained on another \[data\] tissues_table file than this run's '.*tissues\.parquet'",
    ):
        run_training(config_from_dict(raw), progress=False)
    pd.DataFrame({"tissue": TISSUES, "held_out": [False, False, True]}).to_parquet(tmp_path / "tissues.parquet")
    (tmp_path / "labels_log1p.parquet").unlink()
    with pytest.raises(InputError, match=r"trained reading a \[data\] labels_log1p file this run does not read"):
        run_training(config_from_dict(raw), progress=False)


def test_the_dna_scale_depends_on_the_data_not_the_runs_seed(tmp_path, monkeypatch):
    """A stage 2 of another [train] seed may take a named stage-1 checkpoint: the windows the DNA scale is
    estimated from must be the same for both, or the frozen connector reads DNA scaled otherwise than it learnt."""
    from dogmacache.train.tasks.cdbridge import data as cdbridge_data

    monkeypatch.setattr(cdbridge_data, "DNA_SCALE_WINDOWS", 3)  # a sample of the 6 training windows
    raw = write_recipe(tmp_path)
    scales = []
    for seed in (0, 1, 7):
        raw["train"]["seed"] = seed
        scales.append(CdbridgeTask(config_from_dict(raw)).load().extras["dna_scale"])
    assert scales[0] == scales[1] == scales[2]
    monkeypatch.setattr(cdbridge_data, "DNA_SCALE_WINDOWS", 512)  # every window: another estimate than the sample
    assert CdbridgeTask(config_from_dict(raw)).load().extras["dna_scale"] != scales[0]


def test_a_run_trained_on_its_held_out_tissues_says_none_of_its_numbers_is_zero_shot(tmp_path, capsys):
    from dogmacache.train.run import run_training

    raw = write_recipe(tmp_path)
    raw["data"]["train_held_out"] = True
    raw["model"]["ablations"] = []
    raw["train"]["epochs"] = 1
    run_training(config_from_dict(raw), progress=False)
    assert "train_held_out = true: every model trained on the held-out tissues too" in capsys.readouterr().out


def test_a_resume_refuses_a_checkpoint_whose_inputs_were_scaled_otherwise(tmp_path, monkeypatch):
    """A checkpoint records the scalings fitted on its training rows (`extras`): one written where the DNA scale
    was estimated from another sample (an earlier version) is not resumed with this run's, whose inputs would be
    scaled unlike those the model learnt on."""
    from dogmacache.train.run import run_training
    from dogmacache.train.tasks.cdbridge import data as cdbridge_data

    raw = write_recipe(tmp_path)
    raw["model"]["ablations"] = []
    monkeypatch.setattr(cdbridge_data, "DNA_SCALE_WINDOWS", 3)  # a sample of the 6 training windows
    run_training(config_from_dict(raw), progress=False)
    raw["output"]["resume"] = True
    run_training(config_from_dict(raw), progress=False)  # the same scale: resumed
    monkeypatch.setattr(cdbridge_data, "DNA_SCALE_WINDOWS", 512)  # every window: another estimate
    with pytest.raises(
        InputError, match=r"cdbridge_stage1_last.pt was trained with inputs scaled by another dna_scale"
    ):
        run_training(config_from_dict(raw), progress=False)
