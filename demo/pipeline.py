"""The demo pipeline: recipe (bundled demo sources in the real formats) -> tiny models of the real architectures ->
embed caches (CDT: DNA windows with Enformer, proteins with ESM-2, gene tokens with scGPT; IsoFormer: TSS windows
with Enformer, cDNA tokens with Nucleotide Transformer, residues with ESM-2) -> verify -> linear probes of the DNA
caches (`demo/probe.py`), and train CDT and IsoFormer with their baselines while CDBridge (its own pooled caches,
both stages, the ablations) and then Bio-DTA train in a second process, one torch thread each -> metrics and
figures. Every step calls the function a user's command calls, with its config dataclass."""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path

from dogmacache.demo.training import KMER_DEMO

# (modality, model, recipe table under recipe/cdt, cache name, adapter options)
CDT_CACHES = (
    ("dna", "enformer", "dna_windows.parquet", "dna-enformer.zarr", {}),
    ("protein", "esm2", "proteins.parquet", "protein-esm2.zarr", {}),
    ("gene", "scgpt", "genes.parquet", "gene-scgpt.zarr", {}),
    # the control that asks whether the foundation model helps: k-mer frequencies at the tiny Enformer's geometry
    ("dna", "kmer", "dna_windows.parquet", "dna-kmer.zarr", KMER_DEMO),
)
# IsoFormer's per-position caches from recipe/isoform: Enformer at the TSS, NT tokens of the cDNA, ESM-2 residues
ISOFORM_CACHES = (
    ("dna", "enformer", "dna_windows.parquet", "isoform-dna-enformer.zarr", {}),
    ("dna", "kmer", "dna_windows.parquet", "isoform-dna-kmer.zarr", KMER_DEMO),
    # token caps just above the demo's longest cDNA (147 NT tokens) and peptide (161 ESM tokens): padding to the
    # models' 1,000 / 1,024 would only make the per-token caches 6x larger
    (
        "rna",
        "nucleotide-transformer",
        "rna_sequences.parquet",
        "isoform-rna-nt.zarr",
        {"pooling": "none", "max_length": 160},
    ),
    (
        "protein",
        "esm2",
        "protein_sequences.parquet",
        "isoform-protein-esm2.zarr",
        {"pooling": "none", "max_length": 168},
    ),
)


PROBE_LAYERS = ("conv_tower", "transformer.0")  # the tiny Enformer's layers below its trunk (depth 1)


def embed_demo(out: Path, seed: int = 0, progress: bool = True, null: bool = False) -> dict[str, dict[str, Path]]:
    """Recipe, tiny models, the CDT caches and the IsoFormer caches (each with its k-mer control): {"cdt":
    {modality: path}, "isoform": {modality: path}}. `null`: the null twin's sources (every label drawn apart
    from every input), written into out/sources first."""
    from dogmacache.data_recipes.demo import build_demo
    from dogmacache.demo.own_caches import embed_own
    from dogmacache.embed.adapters import get_adapter
    from dogmacache.embed.layers import layer_out, run_embed_layers
    from dogmacache.embed.runner import EmbedConfig, run_embed
    from dogmacache.embed.tiny import make_tiny

    recipe = out / "recipe"
    if null:
        from dogmacache.data_recipes.make_demo_data import write_demo_data

        build_demo(recipe, seed=seed, data=write_demo_data(out / "sources", null=True))
    else:
        build_demo(recipe, seed=seed)
    jobs = (*CDT_CACHES, *ISOFORM_CACHES)
    models = make_tiny(out / "models", seed=seed, names=sorted({model for _, model, *_ in jobs if model != "kmer"}))
    caches: dict[str, dict[str, Path]] = {"cdt": {}, "isoform": {}}
    for task, jobs in (("cdt", CDT_CACHES), ("isoform", ISOFORM_CACHES)):
        for modality, model, table, name, options in jobs:
            key = modality if model != "kmer" else f"{modality}_kmer"
            config = EmbedConfig(
                input=str(recipe / task / table),
                modality=modality,
                model=model,
                model_path=str(models[model]) if model in models else None,
                out=str(out / "cache" / name),
                genome=str(recipe / "genome.fa") if modality == "dna" else None,
                options=get_adapter(model, modality).options_class.from_dict(options),
                progress=progress,
            )
            if model != "enformer":
                embed_own(run_embed, config)
                caches[task][key] = out / "cache" / name
                continue
            # the tiny Enformer's trunk and, for the probe's layer axis, the layers below it: one forward pass
            config = dataclasses.replace(config, out=str(out / "cache" / name.replace(".zarr", "-{layer}.zarr")))
            layers = (*PROBE_LAYERS, "trunk")
            outs = [layer_out(config.out, layer) for layer in layers]
            written = embed_own(functools.partial(run_embed_layers, layers=layers), config, outs)["caches"]
            caches[task].update({f"dna_{layer}": Path(written[layer]) for layer in PROBE_LAYERS})  # depth order
            caches[task][key] = Path(written["trunk"])
    return caches


def sources(out: Path, null: bool = False) -> Path:
    """The demo's source files: the bundled ones, or the null twin's written into out/sources."""
    from dogmacache.data_recipes.make_demo_data import HERE

    return out / "sources" if null else HERE


def verify_demo(caches: dict[str, dict[str, Path]]) -> None:
    """Recompute every shard checksum; a failure is a CacheError naming the cache."""
    from dogmacache.cache import open_cache, verify_cache
    from dogmacache.errors import CacheError

    for modality, path in ((f"{task}/{m}", p) for task, paths in caches.items() for m, p in paths.items()):
        report = verify_cache(path, progress=False)
        if not report.ok:
            raise CacheError(f"{path} failed verification: {report.problems}")
        cache = open_cache(path)
        print(
            f"  {modality:<16} {len(cache):>4} items x {cache.item_shape} {cache.manifest.dtype}: "
            f"{report.checked}/{report.n_shards} shard checksums ok"
        )


def run_demo(out: Path, seed: int = 0, epochs: int | None = None, null: bool = False) -> dict:
    """Every step of the demo, in one torch thread; returns each model's metrics summary."""
    import torch

    # One intra-op thread: the tiny models gain nothing from more, and OpenMP threads that spin-wait against other
    # busy processes made the same demo several times slower on a shared 2-core machine. embed's and train's own
    # defaults (devices.cpu_plan) never take more than torch's count, so this holds for every step: two processes
    # run side by side, and one thread gives the same numbers anywhere.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_demo(out, seed, epochs, null)
    finally:
        torch.set_num_threads(threads)


def _run_demo(out: Path, seed: int, epochs: int | None, null: bool = False) -> dict:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from dogmacache.demo.explain import explain_demo
    from dogmacache.demo.probe import print_probe_summary, probe_demo
    from dogmacache.demo.training import train_demo, train_isoformer_demo

    t0 = time.perf_counter()
    print("[1/7] recipe, tiny models, embed")
    caches = embed_demo(out, seed=seed, null=null)
    print(f"[2/7] verify the caches ({time.perf_counter() - t0:.0f} s)")
    verify_demo(caches)
    logs = {"cdbridge": out / "train_cdbridge.log", "biodta": out / "train_biodta.log"}
    print(
        f"[3/7] ({time.perf_counter() - t0:.0f} s) a second process (one core each) trains CDBridge (its log: "
        f"{logs['cdbridge']}): pooled protein and tissue caches, both stages with the paper's ablations, the "
        "per-tissue mean and the controls, over three leave-tissues-out folds; then Bio-DTA (its log: "
        f"{logs['biodta']}): TSS windows of the demo genes, their caches, the adapter beside the mean token and "
        "controls, a TATA-box knock-out through mutate scored against the planted rule and planted targets"
    )
    # spawn: a fresh interpreter (no forked torch threads); an error in it is re-raised here, as the same one line
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    try:
        dna_caches = {k: v for k, v in caches["isoform"].items() if k in ("dna", "dna_kmer")}
        second = pool.submit(_second_process, out, dna_caches, seed, epochs, logs, null)
        print(f"[4/7] ({time.perf_counter() - t0:.0f} s) linear probes of the DNA caches: CDT betas, GTEx expression")
        probes = probe_demo(out, caches, seed=seed)
        print(f"[5/7] ({time.perf_counter() - t0:.0f} s) train CDT beside its baselines and controls; explain it")
        summary = {"cdt": train_demo(out, caches["cdt"], seed=seed, epochs=epochs, null=null)}
        if not null:
            summary["explain"] = explain_demo(out, sources(out, null) / "truth" / "truth.bed")
        print(f"[6/7] ({time.perf_counter() - t0:.0f} s) train IsoFormer beside its ablations, baseline and controls")
        summary["isoformer"] = train_isoformer_demo(out, caches["isoform"], seed=seed, epochs=epochs, null=null)
        print(f"[7/7] ({time.perf_counter() - t0:.0f} s) Bio-DTA and CDBridge (waiting for the second process):")
        summary.update(second.result())
    except BaseException:
        for child in multiprocessing.active_children():  # do not wait a minute for a run nobody will read
            child.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    print("\n=== Bio-DTA (from the second process) ===")
    _print_biodta(summary["biodta"])
    summary["probe"] = probes
    print(f"\n=== linear probes of step 4 ({out / 'probe'}) ===")
    print_probe_summary(probes)
    if null:
        summary["null_verdict"] = null_verdict(summary)
        print_null_verdict(summary["null_verdict"])
    else:
        print("\n=== CDBridge (from the second process) ===")
        _print_cdbridge(summary["cdbridge"])
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; outputs in {out}")
    return summary


def _second_process(
    out: Path, dna_caches: dict, seed: int, epochs: int | None, logs: dict[str, Path], null: bool = False
) -> dict:
    """The demo's CDBridge run, then its Bio-DTA run, in a spawned process, one torch thread, each one's output
    into its log: {"cdbridge": summary, "biodta": summary}. The two together take about as long as CDT and
    IsoFormer in the first process."""
    import contextlib

    import torch
    from dogmacache.demo.biodta import run_biodta_demo
    from dogmacache.demo.cdbridge import run_cdbridge_demo

    torch.set_num_threads(1)
    summary = {}
    # bars are off in a file, epoch lines not
    with open(logs["cdbridge"], "w") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        summary["cdbridge"] = run_cdbridge_demo(out, dna_caches, seed=seed, epochs=epochs, null=null)
    with open(logs["biodta"], "w") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        summary["biodta"] = run_biodta_demo(out, seed=seed, epochs=epochs, data=sources(out, null), null=null)
    return summary


def _print_biodta(summary: dict) -> None:
    """The Bio-DTA table the second process wrote to its log; the TATA-box knock-out against the planted rule."""
    from dogmacache.mutate.cli import gene_set_lines
    from dogmacache.train.run import print_table

    print_table(summary["train"], summary["train"]["metric"])
    mutate = summary.get("mutate", {})
    if "planted_shift" in mutate:
        print(planted_shift_lines(mutate))
    if "gene_sets" in mutate:
        print(gene_set_lines(mutate["gene_sets"], mutate["gene_set_universe"]))


def planted_shift_lines(mutate: dict) -> str:
    """The TATA-box knock-out: each model's token move beside matched random edits and beside the planted move."""
    planted, edits = mutate["planted_shift"], mutate["token_shift"][0]["variant_edits"]
    lines = [
        f"{mutate['gene']}'s {planted['boxes_replaced']} planted TATA boxes replaced ({edits}): the planted rule "
        f"moves its token by L2 {planted['planted_move_l2']:.3f}"
    ]
    for name, run in (("adapter (tiny Enformer)", mutate), ("k-mer control", mutate.get("kmer_control"))):
        if run:
            shift, moved = run["token_shift"][0], run["planted_shift"]
            lines.append(
                f"  {name:<24} moved {shift['l2']:.4f} ({moved['null_draws']} random edits of the window like it: "
                f"median {shift['l2_null_median']:.4f}, p {shift['l2_null_p_at_least']:.2f}); direction cosine with "
                f"the planted move {moved['direction_cosine']:+.2f} (the random edits' median "
                f"{moved['null_direction_cosine_median']:+.2f}, p {moved['direction_p_at_least']:.2f})"
            )
    return "\n".join(lines)


def _print_cdbridge(summary: dict) -> None:
    """The CDBridge tables the second process wrote to its log: seen vs held-out tissues, then pooled metrics."""
    from dogmacache.demo.cdbridge import print_fold_table
    from dogmacache.train.run import print_null, print_table
    from dogmacache.train.tasks.cdbridge.report import print_seen_vs_held_out

    draws = set((summary.get("null") or {}).get("models", [])[1:])  # the null's further draws: in "null" below
    print_seen_vs_held_out({n: row for n, row in summary["seen_vs_held_out"].items() if n not in draws})
    print_table(
        {**summary, "models": {n: m for n, m in summary["models"].items() if n not in draws}}, summary["metric"]
    )
    if summary.get("null"):
        print_null(summary["null"], "cdbridge")
    print("CDBridge seen vs held-out tissues per fold (leave-tissues-out), beside its controls, and the mean of folds:")
    print_fold_table(summary["folds"])


# the null twin: every label drawn apart from every input, so no model may score beyond the prediction its task
# makes without inputs (its no-input baseline: the training mean per gene, per tissue, or the mean token; on
# labels drawn from a distribution with a mean, such as scGPT's gene tokens, that baseline itself scores). One-sided:
# a model below its baseline learned nothing that reaches the labels. R² is measured against the better of the
# baseline and a constant (R² 0): on null labels a per-gene mean fits noise and falls below a constant. The limits
# sit between the null twin's gains (at most 0.02 in Spearman, seeds 0) and the real demo's smallest (Bio-DTA, 0.16)
NULL_LIMITS = {"spearman": 0.10, "r2": 0.05}  # test Spearman gain over the baseline, R² gain over max(baseline, 0)


def null_verdict(summary: dict) -> dict[str, dict]:
    """Per task: the model's and its no-input baseline's pooled test Spearman and R² on the null twin, and whether
    the model stays below NULL_LIMITS' gains over the baseline (for R², over the better of it and a constant)."""
    runs = {
        "cdt": summary["cdt"],
        "isoformer": summary["isoformer"],
        "biodta": summary["biodta"]["train"],
        "cdbridge": summary["cdbridge"],
    }
    from dogmacache.train.controls import gain_over_baseline
    from dogmacache.train.registry import get_task

    verdict = {}
    for task, run in runs.items():
        baseline = get_task(task).no_input_baseline  # the task's own: the training mean per gene, tissue or token
        test, base = run["models"][task]["test"], run["models"][baseline]["test"]
        ok = all(gain_over_baseline(test[m], base[m], m) < NULL_LIMITS[m] for m in ("spearman", "r2"))
        verdict[task] = {
            "spearman": test["spearman"],
            "r2": test["r2"],
            "baseline": baseline,
            "baseline_spearman": base["spearman"],
            "baseline_r2": base["r2"],
            "n": test["n"],
            "near_zero": bool(ok),
        }
    return verdict


def print_null_verdict(verdict: dict[str, dict]) -> None:
    print(
        "null twin (every label drawn apart from every input): no model may score beyond its no-input baseline "
        f"(Spearman gain below {NULL_LIMITS['spearman']}, R² gain over the baseline or 0 below {NULL_LIMITS['r2']}; "
        "test split)"
    )
    print(f"{'task':<11}{'spearman':>9}{'r2':>8}   {'baseline':<16}{'spearman':>9}{'r2':>8}{'n':>7}  verdict")
    for task, v in verdict.items():
        word = "no signal" if v["near_zero"] else "SCORES: information reaches the labels by another route"
        print(
            f"{task:<11}{v['spearman']:>9.3f}{v['r2']:>8.3f}   {v['baseline']:<16}{v['baseline_spearman']:>9.3f}"
            f"{v['baseline_r2']:>8.3f}{v['n']:>7}  {word}"
        )
