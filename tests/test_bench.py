"""`dogmacache bench`: each section's harness at tiny sizes gives complete result dicts with sane numbers, tables
with the targets, and JSON + summary.md files. No timing assertions: speed targets belong to the benchmark."""

import json
import math
import re
from pathlib import Path

import pytest
import torch
from dogmacache import bench
from dogmacache.bench import cdt as bench_cdt
from dogmacache.bench import cli as bench_cli
from dogmacache.bench.embed import TINY_CASES, bench_embed_tiny, bench_enformer_device
from dogmacache.bench.gpu import PARTS
from dogmacache.cli import main
from dogmacache.embed.adapters.enformer import TINY_ENFORMER
from dogmacache.errors import InputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def _positive(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def test_tiny_adapters_run_through_the_embed_runner(tmp_path):
    result = bench_embed_tiny(n_items=6, num_workers=0, workdir=str(tmp_path))
    cases = result["cases"]
    assert [(c["model"], c["modality"]) for c in cases] == [(c.model, c.modality) for c in TINY_CASES]
    for case in cases:
        assert case["items"] == (6 if case["modality"] != "gene" else case["source_items"]), case
        assert _positive(case["items_per_s"]) and _positive(case["seconds"]) and case["setup_seconds"] >= 0
        assert case["shards"] >= 1
    assert list(tmp_path.iterdir()) == []  # temporary caches removed
    text = "\n".join(bench.render_text(t) for t in bench.embed_tables({"tiny_cpu": result}))
    assert "ESM-2, proteins" in text and "items/s" in text


def test_enformer_device_bench_runs_on_cpu_at_tiny_size(tmp_path):
    result = bench_enformer_device(
        "cpu",
        hparams=TINY_ENFORMER,
        batches=(1, 2),
        deviation_batch=2,
        runner_windows=5,
        runner_workers=(0,),
        min_seconds=0,
        workdir=str(tmp_path),
    )
    assert result["parameters"] == 74_196  # write_tiny_enformer's configuration
    assert result["window_bp"] == 2048 and result["item_shape"] == [8, 96] and not result["full_size"]
    assert [(r["precision"], r["batch"]) for r in result["sweep"]] == [
        ("fp32", 1),
        ("fp32", 2),
        ("bf16", 1),
        ("bf16", 2),
    ]
    for row in result["sweep"]:
        assert row["calls"] >= 3 and _positive(row["windows_per_s"]) and _positive(row["tflop_per_s"])
    assert _positive(result["bf16_over_fp32_best"]) and set(result["bf16_over_fp32_per_batch"]) == {"1", "2"}
    deviation = result["bf16_vs_fp32"]
    assert 0 < deviation["max_abs_over_max_abs_fp32"] < 0.1 and 0 < deviation["relative_l2"] < 0.1
    assert 0 <= deviation["median_relative_error"] < 0.1
    assert _positive(result["tflop_per_window_counted"])
    assert [(r["mode"], r["num_workers"]) for r in result["runner"]] == [("stream", 0), ("run_embed", 0)]
    for run in result["runner"]:
        assert run["windows"] == 5 and run["precision"] == "fp32" and _positive(run["windows_per_s"])
        assert 0 < run["busy_fraction"] <= 1.5  # host clock around forward calls vs the runner's rounded wall
    tiny_cpu = {"device": "cpu", "num_workers": 0, "cases": []}
    text = "\n".join(bench.render_text(t) for t in bench.embed_tables({"tiny_cpu": tiny_cpu, "gpu": result}))
    for expected in (
        "bf16 / fp32 windows/s",
        "≥ 2×",
        "GPU busy (stream, 0 workers)",
        "≥ 100 (one H100)",
        "≥ 80%",
        "MFU fp32 / bf16",
    ):
        assert expected in text
    assert all(row["mfu"] is None and row["math"] in ("fp32", "tf32", "bf16") for row in result["sweep"])
    targets = next(
        t for t in bench.embed_tables({"tiny_cpu": tiny_cpu, "gpu": result}) if t["title"].endswith("targets")
    )
    assert [row[3] for row in targets["rows"] if row[2] != "(reported)"] == ["n/a"] * 6  # a tiny model on a CPU
    assert list(tmp_path.iterdir()) == []


def _in_process(preset, batch=8, steps=3, seed=0, threads=None, allow_paper_reference=False, cpu_allocator="keep"):
    """compare_cdt_implementations without its two fresh processes (each needs seconds to start); malloc's
    settings of the test process are left as they are."""
    fast = bench_cdt.bench_cdt_step(preset, batch, "fast", steps, seed, cpu_allocator="system")
    reference = bench_cdt.bench_cdt_step(preset, batch, "reference", steps, seed, cpu_allocator="system")
    return {
        "preset": preset,
        "batch": batch,
        "fast": fast,
        "reference": reference,
        "speedup_samples_per_s": fast["samples_per_s"] / reference["samples_per_s"],
        "peak_rss_reference_over_fast": reference["peak_rss_mb"] / fast["peak_rss_mb"],
    }


def test_cdt_section_reports_ratios_against_the_targets(monkeypatch):
    monkeypatch.setattr(bench_cdt, "compare_cdt_implementations", _in_process)
    result = bench.bench_cdt_section("tiny", batch=2, steps=1)
    for one in (result["fast"], result["reference"]):
        assert _positive(one["samples_per_s"]) and _positive(one["steps_per_s"]) and _positive(one["peak_rss_mb"])
        assert one["rss_before_steps_mb"] > 0 and "rss_growth_mb" in one
    assert _positive(result["speedup_samples_per_s"]) and _positive(result["peak_rss_reference_over_fast"])
    text = bench.render_text(bench.cdt_tables(result)[0])
    assert "fast ≥ 2× reference" in text and "fast ≤ ½ reference" in text and "preset tiny" in text


def test_paper_preset_runs_the_fast_model_only_unless_allowed(monkeypatch):
    calls = []

    def fake_fresh(
        preset, batch, implementation, steps, seed=0, threads=None, allow_paper_reference=False, cpu_allocator="keep"
    ):
        calls.append((preset, implementation, cpu_allocator))
        return bench_cdt.bench_cdt_step("tiny", batch, implementation, steps, seed, cpu_allocator="system")

    def small_eval(preset, pairs_per_enhancer):  # the evaluation table's shapes, timed here on the tiny model
        calls.append(("eval", preset))
        return evaluate("tiny", n_enhancers=10, pairs_per_enhancer=pairs_per_enhancer, pair_batch=4, enhancer_batch=3)

    evaluate = bench_cdt.bench_cdt_eval
    monkeypatch.setattr(bench_cdt, "bench_in_fresh_process", fake_fresh)
    monkeypatch.setattr(bench_cdt, "bench_cdt_eval", small_eval)
    result = bench.bench_cdt_section("paper", batch=2, steps=1)
    evaluations = [("eval", "small")] * len(bench_cdt.EVAL_SHAPES)  # paper-size evaluation asks the small preset
    assert calls == [("paper", "fast", "keep"), *evaluations] and result["reference"] is None
    assert result["evaluation"]["preset"] == "small"
    assert set(result["evaluation"]["shapes"]) == set(bench_cdt.EVAL_SHAPES)
    assert "--allow-paper-reference" in result["reference_skipped"]
    text = bench.render_text(bench.cdt_tables(result)[0])
    assert "not run" in text and "reference not run" in text


def test_bench_command_writes_json_and_summary(tmp_path, monkeypatch, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--only", "cache", "--items", "4", "--item-shape", "8,16", "--out", str(out)]) == 0
    record = json.loads((out / "cache.json").read_text())
    assert record["section"] == "cache" and record["results"]["n_items"] == 4
    assert _positive(record["results"]["write_MB_per_s"]) and _positive(record["results"]["random_items_per_s"])
    machine = record["machine"]
    assert machine["cpu_cores"] >= 1 and machine["torch"] == torch.__version__ and "cuda_device" in machine
    assert len(machine["load_average_at_start"]) == 3 and machine["cpu_model"]
    assert "random single-item reads" in capsys.readouterr().out

    monkeypatch.setattr(bench_cdt, "compare_cdt_implementations", _in_process)
    assert (
        main(
            [
                "bench",
                "--only",
                "cdt",
                "--cdt-preset",
                "tiny",
                "--cdt-batch",
                "2",
                "--cdt-steps",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    summary = (out / "summary.md").read_text()
    assert "## cache" in summary and "## cdt" in summary  # earlier sections in the folder stay in the summary
    assert "| measurement | fast | reference | ratio | target | met |" in summary

    # a stop in the middle of a section: its earlier record and summary entry are gone, the others' stay
    def stopped(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(bench_cli.SECTIONS, "cache", (stopped, bench_cli.SECTIONS["cache"][1]))
    assert main(["bench", "--only", "cache", "--items", "4", "--item-shape", "8,16", "--out", str(out)]) == 130
    assert not (out / "cache.json").exists() and (out / "cdt.json").exists()
    summary = (out / "summary.md").read_text()
    assert "## cache" not in summary and "## cdt" in summary
    assert "keeps the sections finished before the stop" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [["--threads", "0"], ["--gpu-batches", "1,x"], ["--cdt-steps", "0"], ["--gpu-parts", "enformer"]]
    + [["--only", "gpu", "--gpu-size", "tiny", "--gpu-batches", "64"], ["--only", "cache", "--cdt-steps", "5"]]
    + ([["--only", "gpu", "--gpu-size", "full"]] if not torch.cuda.is_available() else []),
)
def test_bad_options_are_refused(tmp_path, argv, capsys):
    assert main(["bench", "--out", str(tmp_path), *argv]) == 2
    assert "dogmacache bench: error:" in capsys.readouterr().err


def test_number_formatting():
    assert [bench.fmt(x) for x in (None, 12_345, 1234.5, 56.78, 3.14159, 0.01234, 2.5e-5)] == [
        "–",
        "12,345",
        "1,234",
        "56.8",
        "3.14",
        "0.0123",
        "2.50e-05",
    ]
    assert bench.verdict(2.5, 2.0) == "yes" and bench.verdict(1.5, 2.0) == "NO" and bench.verdict(None, 2) == "–"
    # the value is judged, not its rounding; where the rounding would show a miss as met, the value is said
    assert bench.fmt(7.9993) == "8.00" and bench.verdict(7.9993, 8.0) == "NO (7.9993)"
    assert bench.verdict(8.0, 8.0) == "yes" and bench.verdict(7.9, 8.0) == "NO"
    assert bench.verdict(1.1004, 1.1, higher_is_better=False) == "NO (1.1004)"
    assert bench.verdict(0.010049, 0.01, higher_is_better=False) == "NO (0.010049)"
    assert bench.verdict(0.7996, 0.8, percent=True) == "NO (79.96%)" and bench.verdict(0.794, 0.8, percent=True) == "NO"


@pytest.mark.slow
def test_cdt_section_through_fresh_processes(tmp_path):
    assert (
        main(
            [
                "bench",
                "--only",
                "cdt",
                "--cdt-preset",
                "tiny",
                "--cdt-batch",
                "2",
                "--cdt-steps",
                "1",
                "--threads",
                "1",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    results = json.loads((tmp_path / "cdt.json").read_text())["results"]
    assert results["fast"]["threads"] == 1 and results["reference"]["implementation"] == "reference"
    assert _positive(results["speedup_samples_per_s"]) and _positive(results["rss_growth_reference_over_fast"])


def test_make_bench_gpu_at_tiny_size_runs_on_cpu(tmp_path):
    """The command `make bench-gpu BENCH_SIZE=tiny` runs (read from the Makefile), on this CPU."""
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text().replace("\\\n\t\t", "")
    line = re.search(r"^\t\$\(PY\) -m dogmacache.cli (bench --only gpu .*)$", makefile, re.MULTILINE).group(1)
    line = line.replace("$(if $(GPU_PARTS),--gpu-parts $(GPU_PARTS))", "")  # GPU_PARTS unset: every part
    argv = line.replace("$(BENCH_SIZE)", "tiny").replace("$(OUT)/bench-gpu", str(tmp_path)).split()
    assert main(argv) == 0
    results = json.loads((tmp_path / "gpu.json").read_text())["results"]
    partial = json.loads((tmp_path / "gpu.partial.json").read_text())  # kept part by part, the last one whole
    assert partial["partial"] and list(partial["parts_seconds"]) == list(PARTS) and not partial["failed_parts"]
    assert partial["requested"] == list(PARTS) and partial["started"]
    assert results["size"] == "tiny" and results["device"] == "cpu"
    assert all(_positive(run["proteins_per_s"]) for run in results["esm2"]["runs"])
    assert _positive(results["cdt"]["fp32"]["steps_per_s"]) and _positive(
        results["cdt"]["bf16"]["paper_50_epochs_minutes"]
    )
    assert _positive(results["loader"]["rows_per_s"])
    borzoi = results["borzoi"]
    assert borzoi["flashzoi"]["attention"] == "plain" and borzoi["borzoi"]["window_bp"] == 768
    assert all(
        _positive(borzoi[m]["best"][p]["windows_per_s"]) for m in ("borzoi", "flashzoi") for p in ("fp32", "bf16")
    )
    stage = {run["dna_on_device"]: run for run in results["train_stage"]["runs"]}
    assert set(stage) == {"no", "yes"} and all(_positive(run["paper_50_epochs_minutes"]) for run in stage.values())
    summary = (tmp_path / "summary.md").read_text()
    assert "## gpu" in summary and "the paper's 50 epochs" in summary and "Enformer windows/s" in summary
    # FLOPs counted beside every rate; no peak on a CPU, so no MFU, and no target judged for a tiny CPU run
    assert results["card"] is None and results["targets_apply"] == {"gpu": False, "h100": False}
    rates = [*results["esm2"]["runs"], results["cdt"]["fp32"], results["cdt"]["bf16"]]
    rates += [borzoi[m]["best"][p] for m in ("borzoi", "flashzoi") for p in ("fp32", "bf16")]
    rates += [*results["enformer"]["sweep"], *results["enformer"]["runner"]]
    assert all(_positive(rate["tflop_per_s"]) and rate["mfu"] is None for rate in rates)
    ragged = results["esm2_ragged"]
    for way in ("bucketed", "naive"):
        path = ragged[way]
        assert _positive(path["real_tokens_per_s"]) and _positive(path["proteins_per_s"]) and path["mfu"] is None
        assert path["real_tokens_per_s"] <= path["padded_tokens_per_s"] and 0 <= path["padding_fraction"] < 1
    naive = ragged["naive"]
    assert ragged["real_tokens"] < naive["computed_tokens"] and naive["padding_fraction"] > 0
    assert naive["batches"] == -(-ragged["proteins"] // ragged["naive_batch"])
    # every protein's residues and its two specials, from the length draw itself (seed 0), not from the bench's sums
    from dogmacache.bench.esm2 import protein_lengths

    assert ragged["real_tokens"] == int((protein_lengths(ragged["proteins"], seed=0) + 2).sum())
    assert _positive(ragged["bucketed_over_naive_real_tokens"])
    table = summary.split("**gpu: every accelerator measurement in one run**")[1].split("\n\n")[1].splitlines()
    assert table[0] == "| measurement | value | TFLOP/s | MFU | target | met |"
    rows = [[cell.strip() for cell in line[1:-1].split("|")] for line in table[2:]]
    assert all(set(row[3].split(" / ")) <= {"n/a", ""} for row in rows)  # MFU
    judged = [row for row in rows if row[4]]
    assert len(judged) >= 8 and all(row[5] == "n/a" for row in judged)  # Enformer ≥ 100 on one H100 among them
    assert "ESM-2 on 24 proteins of human-proteome lengths" in summary and "| naive (row order) | 6 |" in summary


def test_card_peaks_from_device_names(monkeypatch):
    from dogmacache.bench import mfu

    assert [mfu.peak_tflops("NVIDIA H100 80GB HBM3", m) for m in ("fp32", "tf32", "bf16")] == [67.0, 494.5, 989.5]
    assert mfu.peak_tflops("NVIDIA H100 PCIe", "bf16") == 756.5 and mfu.peak_tflops("NVIDIA H100 NVL", "tf32") == 417.5
    assert mfu.peak_tflops("NVIDIA H200", "bf16") == 989.5 and mfu.peak_tflops("NVIDIA H200 NVL", "fp16") == 835.5
    assert mfu.peak_tflops("NVIDIA A100-SXM4-80GB", "tf32") == 156.0 and mfu.card("NVIDIA A100 80GB PCIe") == "A100"
    assert mfu.peak_tflops("NVIDIA L4", "bf16") == 121.0 and mfu.peak_tflops("NVIDIA L4", "fp32") == 30.3
    # a MIG slice holds a fraction of the card: no whole-card peak, no "one H100" target
    mig = "NVIDIA H100 80GB HBM3 MIG 1g.10gb"
    assert mfu.card(mig) is None and mfu.target_scope("full", mig) == {"gpu": True, "h100": False}
    for unknown in ("NVIDIA L40S", "NVIDIA GeForce RTX 4090", "NVIDIA GH200 480GB", "cpu", None, mig):
        assert mfu.peak_tflops(unknown, "bf16") is None
    assert mfu.target_scope("tiny", "NVIDIA H100 80GB HBM3") == {"gpu": False, "h100": False}
    assert mfu.target_scope("full", "cpu") == {"gpu": False, "h100": False}
    assert mfu.target_scope("full", "NVIDIA A100-SXM4-80GB") == {"gpu": True, "h100": False}
    assert mfu.target_scope("full", "NVIDIA H200") == {"gpu": True, "h100": True}
    assert bench.verdict(150.0, 100.0, applies=False) == "n/a" and bench.verdict(150.0, 100.0) == "yes"
    assert mfu.mfu_cell(None) == "n/a" and mfu.mfu_cell(0.42, 0.012) == "42% / 1.2%"
    assert mfu.utilisation(50.0, torch.device("cpu"), "bf16") == {"math": "bf16", "peak_tflop_per_s": None, "mfu": None}
    monkeypatch.setattr(mfu, "device_name", lambda device: "NVIDIA H100 80GB HBM3")
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True  # torch's defaults
    try:
        cuda = torch.device("cuda")
        assert mfu.utilisation(98.95, cuda, "bf16")["mfu"] == pytest.approx(0.1)
        assert mfu.utilisation(6.7, cuda, "fp32")["mfu"] == pytest.approx(0.1)  # matrix products without TF32
        assert mfu.utilisation(49.45, cuda, "fp32", convolutions=True) == {
            "math": "tf32",  # cuDNN's convolutions may use TF32
            "peak_tflop_per_s": 494.5,
            "mfu": pytest.approx(0.1),
        }
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def test_esm2_flops_are_linear_plus_quadratic_in_tokens():
    import numpy as np
    from dogmacache.bench.esm2 import esm2_config, flop_coefficients, forward_tflop, protein_lengths
    from dogmacache.bench.gpu import SIZES
    from dogmacache.bench.mfu import count_flops
    from transformers import EsmModel

    model = EsmModel(esm2_config(SIZES["tiny"]["esm"]), add_pooling_layer=False).eval()
    coefficients = flop_coefficients(model, torch.device("cpu"))
    assert coefficients["quadratic"] == 2 * 2 * 2 * 32  # 2 layers: Q Kᵀ and A V, 2 T² x 32 each, counted on a CPU
    ids = torch.randint(4, 24, (1, 200))
    with torch.inference_mode():
        counted = count_flops(lambda: model(input_ids=ids, attention_mask=torch.ones_like(ids)))
    assert counted == pytest.approx(forward_tflop(coefficients, np.array([200])) * 1e12)
    lengths = protein_lengths(4000, seed=1)
    assert lengths.max() == 1022 and 380 < np.median(lengths) < 450 and 0.08 < (lengths == 1022).mean() < 0.16
    assert (protein_lengths(50, seed=3) == protein_lengths(50, seed=3)).all()
    assert not (protein_lengths(50, seed=3) == protein_lengths(50, seed=4)).all()  # the seed is used


def test_cdt_evaluation_per_enhancer_matches_per_pair():
    result = bench_cdt.bench_cdt_eval("tiny", n_enhancers=10, pairs_per_enhancer=3.0, pair_batch=4, enhancer_batch=3)
    assert (result["pairs"], result["enhancers"]) == (30, 10)
    assert _positive(result["per_pair_pairs_per_s"]) and _positive(result["per_enhancer_pairs_per_s"])
    assert result["max_abs_difference"] < 1e-5  # the same predictions, read from one forward per enhancer
    tables = bench_cdt.cdt_eval_tables({"preset": "tiny", "threads": 1, "shapes": {"demo": result}})
    assert "per enhancer: pairs/s" in bench.render_text(tables[0])


@pytest.mark.slow
def test_train_memory_section_runs_two_cache_sizes():
    from dogmacache.bench import train_memory

    result = train_memory.bench_train_memory(sizes=(40, 160), item_shape=(32, 64))
    assert [run["enhancers"] for run in result["runs"]] == [40, 160]
    assert all(_positive(run["peak_rss_mb"]) for run in result["runs"]) and _positive(result["rss_ratio"])
    assert "larger / smaller" in bench.render_text(train_memory.train_memory_tables(result)[0])


@pytest.mark.slow
def test_compiled_enformer_rows_at_tiny_size_on_cpu():
    """The gpu section's `--compile` rows (CUDA only in `make bench-gpu`) at tiny size: a rate, the compilation's
    seconds and the deviation from the eager float32 forward, which compiled bf16 keeps within 0.01 here too."""
    from dogmacache.bench import enformer as bench_enformer
    from dogmacache.bench.gpu import SIZES

    result = bench_enformer.bench_enformer_device(
        "cpu",
        hparams=SIZES["tiny"]["enformer_hparams"],
        batches=(2,),
        precisions=("bf16",),
        runner_windows=4,
        runner_modes=("run_embed --compile reduce-overhead",),
        compile_modes=("reduce-overhead",),
        min_seconds=0.1,
    )
    (row,) = result["compiled"]
    assert row["compile"] == "reduce-overhead" and row["batch"] == 2 and _positive(row["windows_per_s"])
    assert _positive(row["compile_seconds"]) and 0 < row["relative_l2_vs_fp32"] <= 0.01
    assert result["runner"][0]["mode"] == "run_embed --compile reduce-overhead" and result["runner"][0]["windows"] == 4


def test_reuse_section_at_tiny_size(tmp_path):
    """Each case in full and with --reuse (each model at two table sizes, Enformer's larger one in 16 shards),
    byte-identical, with the target's column."""
    from dogmacache.bench.reuse import bench_reuse, reuse_tables

    result = bench_reuse(n_items=20, workdir=str(tmp_path), repeats=1)
    cases = result["cases"]
    assert [(c["label"].split(",")[0], c["items"]) for c in cases] == [
        ("Enformer", 20),
        ("Enformer", 160),  # in 16 shards
        ("ESM-2", 20),
        ("ESM-2", 160),
    ]
    assert (cases[0]["shards"], cases[1]["shards"]) == (1, 16)
    for case in cases:
        assert case["identical"] and case["rows_differing"] == 0, case
        assert case["overlap"] == pytest.approx(0.9, abs=0.03)
        assert _positive(case["full_items_per_s"]) and _positive(case["reuse_items_per_s"])
        assert len(case["torch_threads"]) == 1  # the full and --reuse runs at one count, or no verdict
    assert list(tmp_path.iterdir()) == []
    text = "\n".join(bench.render_text(t) for t in reuse_tables(result))
    assert ">= 8x" in text and "byte-identical" in text and "medians of 1 runs" in text
    assert "Enformer, DNA windows, 16 shards" in text
    differ = {**result, "cases": [{**cases[0], "torch_threads": [1, 2]}]}
    assert "n/a (threads [1, 2])" in bench.render_text(reuse_tables(differ)[0])


def test_a_rate_rows_cells_keep_each_runs_place():
    """A run not made (Flashzoi has no fp32 row) is "n/a" in every cell, so the MFU stands under its own run."""
    from dogmacache.bench.gpu_tables import rate_row

    row = rate_row("x", [None, {"rate": 10.0, "tflop_per_s": 5.0, "mfu": 0.3}], "rate")
    assert row[1].startswith("n/a / ") and row[2].startswith("n/a / ") and row[3] == "n/a / 30%"


def test_a_failing_gpu_part_is_recorded_and_the_others_still_measured(tmp_path, monkeypatch, capsys):
    """`--gpu-parts` runs the parts named; one that raises is recorded with its error (the section fails, exit 1)
    while the others' numbers and tables are kept, part by part in gpu.partial.json too."""
    from dogmacache.bench import gpu

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(gpu, "bench_cdt_on_device", broken)
    argv = ["bench", "--only", "gpu", "--gpu-size", "tiny", "--gpu-parts", "loader,cdt", "--out", str(tmp_path)]
    assert main(argv) == 1
    results = json.loads((tmp_path / "gpu.json").read_text())["results"]
    assert list(results["parts_seconds"]) == ["cdt", "loader"] and _positive(results["loader"]["rows_per_s"])
    assert "cdt" not in results and "illegal memory access" in results["failed_parts"]["cdt"]["error"]
    assert any("broken" in line for line in results["failed_parts"]["cdt"]["traceback"])
    assert json.loads((tmp_path / "gpu.partial.json").read_text())["loader"] == results["loader"]
    summary = (tmp_path / "summary.md").read_text()
    assert "cache -> device" in summary and "part cdt FAILED: RuntimeError" in summary
    assert "gpu: the accelerator measurements of cdt, loader" in summary and "Enformer" not in summary
    assert "gpu part cdt: " in capsys.readouterr().out
    with pytest.raises(InputError, match="--gpu-parts 'enformer,gpus'"):
        gpu.bench_gpu("tiny", parts=("enformer", "gpus"))
    # a misspelt part is refused before the section removes its earlier record
    kept = (tmp_path / "gpu.json").read_bytes()
    assert main(["bench", "--only", "gpu", "--gpu-size", "tiny", "--gpu-parts", "enformr", "--out", str(tmp_path)]) == 2
    assert (tmp_path / "gpu.json").read_bytes() == kept and "cdt, loader" in (tmp_path / "summary.md").read_text()


def test_the_busy_verdict_reads_the_eager_runner_runs_only():
    """A compiled run's first forward holds the compilation, which the GPU's events count as busy time."""
    from dogmacache.bench.gpu_tables import enformer_rows

    runner = [
        {"mode": "run_embed", "num_workers": 2, "precision": "bf16", "windows_per_s": 13.0, "busy_fraction": 0.38},
        {
            "mode": "run_embed --compile reduce-overhead",
            "num_workers": 2,
            "precision": "bf16",
            "windows_per_s": 9.0,
            "busy_fraction": 0.97,
        },
    ]
    rows = enformer_rows({"gpu": {"runner": runner}}, {"h100": True, "gpu": True})
    (busy,) = [r for r in rows if str(r[0]).startswith("GPU busy fraction")]
    assert busy[1] == 0.38 and busy[-1] == "NO"


def test_the_threads_sections_busy_loop_ends_with_the_bench(tmp_path):
    """The busy process ends when its parent does, however the parent was stopped (SIGTERM here, which no
    `finally` sees), rather than keeping a core busy for every later measurement on the machine."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from dogmacache.bench.threads import BUSY_LOOP

    starter = "import os, subprocess, sys, time\n"
    starter += f"subprocess.Popen([sys.executable, '-c', {BUSY_LOOP!r}, str(os.getpid())])\n"
    starter += "time.sleep(float(sys.argv[1]))"
    parent = subprocess.Popen([sys.executable, "-c", starter, "60"])
    deadline = time.monotonic() + 20
    children = []
    while not children and time.monotonic() < deadline:
        time.sleep(0.1)
        children = subprocess.run(["pgrep", "-P", str(parent.pid)], capture_output=True, text=True).stdout.split()
    assert children, "the busy loop did not start"
    parent.send_signal(signal.SIGTERM)
    parent.wait()

    def running(pid: str) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    while running(children[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(children[0])

    # a parent gone before the loop has started (its interpreter still loading): the loop ends all the same, since
    # it is given its parent's pid rather than reading it (it would read its new parent's and run on)
    parent = subprocess.Popen([sys.executable, "-c", starter, "0"])
    parent.wait()
    deadline = time.monotonic() + 20
    orphans = []
    while time.monotonic() < deadline:
        found = subprocess.run(["pgrep", "-f", r"range.100_000"], capture_output=True, text=True).stdout.split()
        orphans = [pid for pid in found if running(pid)]
        if not orphans:
            break
        time.sleep(0.1)
    assert not orphans


def test_the_cdt_steps_flops_are_counted_with_dropout_off_and_the_model_trains_after(monkeypatch):
    """With dropout on, a CPU step's attention runs through train/kernels.py's blocked kernel, which torch's counter
    does not see (the count came out 9 % low at the tiny preset); counted in eval mode, it goes through SDPA."""
    from dogmacache.bench import gpu
    from dogmacache.train.tasks.cdt.model import CentralDogmaTransformer

    seen, counting = [], []
    forward = CentralDogmaTransformer.forward

    def spy(self, *args, **kwargs):
        seen.append((bool(counting), self.training))
        return forward(self, *args, **kwargs)

    def count(fn):
        counting.append(True)
        try:
            return mfu.count_flops(fn)
        finally:
            counting.clear()

    from dogmacache.bench import mfu

    monkeypatch.setattr(CentralDogmaTransformer, "forward", spy)
    monkeypatch.setattr(gpu, "count_flops", count)
    result = gpu.bench_cdt_on_device(torch.device("cpu"), "tiny", table_rows=8, batch=2, calls=1)
    assert result["tflop_per_step"] > 0
    assert {mode for counted, mode in seen if counted} == {False}  # counted in eval mode
    assert {mode for counted, mode in seen if not counted} == {True}  # the timed steps train
