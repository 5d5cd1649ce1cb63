"""The demo's probe step: `dogmacache probe` (`train/probe.py`) on the demo's DNA caches, one target at a time:
the CDT pairs' betas (each pair's enhancer window is a DNA cache item: the labels' `enhancer` column) and the
isoform recipe's GTEx-style expression, the mean over tissues of each transcript's standardised log1p TPM (each
transcript's TSS window is a DNA cache item: the labels' `dna_id` column). Tables and figures go to out/probe/<name>.

Every cache of a task whose key in `embed_demo`'s dict starts with `dna` is probed: the tiny Enformer's trunk, its
conv tower and transformer block (`embed --layers`, one pass), and the k-mer control.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

# name -> (task folder under recipe/ and in embed_demo's dict, id column, group column, target). The isoform
# recipe splits by linked gene groups and most genes have several TSS windows: the folds keep a gene together
PROBE_TARGETS = {
    "cdt_beta": ("cdt", "enhancer", "enhancer", "beta"),
    "gtex_mean_expression": ("isoform", "dna_id", "gene_id", "mean_expression"),
}


def probe_caches(caches: dict[str, Path]) -> tuple[str, ...]:
    """The DNA caches of one task's dict from `embed_demo`, in its order."""
    return tuple(str(path) for key, path in caches.items() if key.startswith("dna"))


def gtex_labels(out: Path) -> Path:
    """out/probe/gtex_mean_expression.parquet: per transcript its `dna_id`, split and the mean over tissues of
    the isoform labels (standardised log1p TPM per tissue, as IsoFormer and CDBridge read them)."""
    from dogmacache.train.tasks.isoformer import NOT_TISSUES

    table = pd.read_parquet(out / "recipe" / "isoform" / "labels.parquet")
    tissues = [c for c in table.columns if c not in NOT_TISSUES]
    path = out / "probe" / "gtex_mean_expression.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    table[["id", "dna_id", "gene_id", "split"]].assign(mean_expression=table[tissues].mean(axis=1)).to_parquet(path)
    return path


def probe_demo(out: Path, caches: dict[str, dict[str, Path]], seed: int = 0) -> dict[str, list[dict]]:
    """Each target of PROBE_TARGETS probed on its task's DNA caches; {name: the table's rows}."""
    from dogmacache.train.probe import ProbeConfig, run_probe

    labels = {"cdt_beta": out / "recipe" / "cdt" / "labels.parquet", "gtex_mean_expression": gtex_labels(out)}
    summary = {}
    for name, (task, id_column, group_column, target) in PROBE_TARGETS.items():
        config = ProbeConfig(
            caches=probe_caches(caches[task]),
            labels=str(labels[name]),
            target=target,
            out=str(out / "probe" / name),
            id_column=id_column,
            group_column=group_column,
            seed=seed,
        )
        summary[name] = run_probe(config, quiet=True)["rows"]
    return summary


def print_probe_summary(summary: dict[str, list[dict]]) -> None:
    """Per target: the cache chosen on validation with its test R², then every cache's validation / test R² with its
    controls' test R² in brackets (permuted labels, shuffled inputs)."""
    print(
        "linear probes per cache (ridge on mean-pooled windows, alpha by CV on train; validation / test R², "
        "[test R² with permuted labels, with shuffled inputs]):"
    )
    from dogmacache.train.probe import CONTROLS, kmer_above_chosen

    for name, rows in summary.items():
        scores = {(r["url"], r["role"]): r["test_r2"] for r in rows}
        chosen = next((r for r in rows if r["chosen"]), None)
        pick = f"{chosen['cache']} (test R² {chosen['test_r2']:.3f})" if chosen else "none (no model cache)"
        print(f"  {name}: n_test={rows[0]['n_test']}, chosen on validation: {pick}")
        cells = [
            f"{r['cache']}{' (k-mer control)' if r['role'] == 'kmer control' else ''} {r['validation_r2']:.3f} / "
            f"{r['test_r2']:.3f} [" + ", ".join(f"{scores[(r['url'], role)]:.3f}" for role in CONTROLS) + "]"
            for r in rows
            if r["role"] not in CONTROLS
        ]
        print("    " + "; ".join(cells))
        for line in kmer_above_chosen(rows, "validation r2") if chosen else ():
            print(f"    {line}")
