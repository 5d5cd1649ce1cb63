"""The `gpu` section's tables (`bench/gpu.py` measures): one row per measurement, with its TFLOP/s and MFU beside
every rate ("–" where no FLOPs were counted, MFU "n/a" off a card of the peak table), and a second table for
ESM-2 on ragged proteins. A target's verdict is "n/a" unless the run was at full size on CUDA (and, for a target
stated for one H100, on an H100-class card): `targets_apply` in the record, from `bench.mfu.target_scope`.
"""

from __future__ import annotations

from typing import Any

from dogmacache.bench.gpu import PAPER_EPOCHS, PAPER_STEPS_PER_EPOCH, PARTS, TARGET_PAPER_EPOCHS_MINUTES
from dogmacache.bench.mfu import mfu_cell, target_scope
from dogmacache.bench.report import Table, fmt, pct, table, verdict

TARGET_ESM2_RAGGED = 2.0  # real tokens/s of bucketed batches over naive row-order ones, ragged proteins, on a GPU
COLUMNS = ["measurement", "value", "TFLOP/s", "MFU", "target", "met"]


def pair(rows: list[dict[str, Any] | None], key: str) -> str:
    """One value of each row joined by " / " ("n/a" for a row not run)."""
    return " / ".join("n/a" if row is None else fmt(row.get(key)) for row in rows)


def rate_row(label: str, rows: list[dict[str, Any] | None], key: str, target: str = "", met: str = "") -> list[Any]:
    """A measurement row: `key` of each run, their TFLOP/s and MFU ("n/a" in the place of a run not made, so each
    value stands where its run's does), a target and its verdict."""
    mfu = mfu_cell(*(None if row is None else row.get("mfu") for row in rows))
    return [label, pair(rows, key), pair(rows, "tflop_per_s"), mfu, target, met]


def enformer_rows(enformer: dict[str, Any], scope: dict[str, bool]) -> list[list[Any]]:
    from dogmacache.bench.embed import TARGET_BF16_OVER_FP32, TARGET_GPU_BUSY, TARGET_WINDOWS_PER_S

    gpu = enformer.get("gpu", enformer)
    best = [gpu.get("best", {}).get(p) for p in ("fp32", "bf16")]
    bf16 = best[1]["windows_per_s"] if best[1] else None
    ratio = gpu.get("bf16_over_fp32_best")
    # eager runs only: a compiled run's first forward holds the compilation, which the GPU's events count as busy
    busy = [
        run["busy_fraction"]
        for run in gpu.get("runner", [])
        if run.get("busy_fraction") is not None and "--compile" not in str(run.get("mode", ""))
    ]
    rows = [
        rate_row(
            "Enformer windows/s, best batch, fp32 / bf16",
            best,
            "windows_per_s",
            f"bf16 ≥ {TARGET_WINDOWS_PER_S:g} on one H100",
            verdict(bf16, TARGET_WINDOWS_PER_S, applies=scope["h100"]),
        ),
        [
            "Enformer bf16 / fp32",
            ratio,
            "",
            "",
            f"≥ {TARGET_BF16_OVER_FP32:g}×",
            verdict(ratio, TARGET_BF16_OVER_FP32, applies=scope["gpu"]),
        ],
        [
            "GPU busy fraction, runner path (eager `run_embed`, best run)",
            max(busy) if busy else "not measured (no eager run_embed run)",
            "",
            "",
            f"≥ {TARGET_GPU_BUSY:.0%}",
            verdict(max(busy), TARGET_GPU_BUSY, applies=scope["gpu"]) if busy else "",
        ],
    ]
    for row in gpu.get("compiled", []):
        if row.get("windows_per_s") is None:  # out of memory, or not run
            why = "out of memory" if row.get("oom") else "not measured"
            rows.append(
                [f"Enformer bf16, `--compile {row.get('compile')}`, batch {row.get('batch')}", why, "", "", "", ""]
            )
            continue
        rows.append(
            rate_row(
                f"Enformer bf16, `--compile {row['compile']}`, batch {row['batch']}: windows/s (compilation "
                f"{fmt(row['compile_seconds'])} s; relative L2 against fp32 {row['relative_l2_vs_fp32']:.4g})",
                [row],
                "windows_per_s",
                f"≥ {TARGET_WINDOWS_PER_S:g} on one H100, L2 ≤ 0.01",
                verdict(
                    row["windows_per_s"] if row["relative_l2_vs_fp32"] <= 0.01 else 0.0,
                    TARGET_WINDOWS_PER_S,
                    applies=scope["h100"],
                ),
            )
        )
    for run in gpu.get("runner", []):
        rows.append(
            [
                f"Enformer through {run['mode']}, {run['num_workers']} input workers, {run['precision']}: "
                "windows/s; GPU busy (no fidelity receipt: its fixed 16-window fp32 re-embed is a run's, not the "
                "loop's)" + ("; the compilation is inside the timed run" if "--compile" in run["mode"] else ""),
                f"{fmt(run['windows_per_s'])}; {fmt(run.get('busy_fraction'))}",
                fmt(run.get("tflop_per_s")),
                mfu_cell(run.get("mfu")),
                "",
                "",
            ]
        )
    return rows


def borzoi_rows(results: dict[str, Any] | None) -> list[list[Any]]:
    """Windows/s at the best batch per precision, one row per model ("n/a" for a precision not run)."""
    return [
        rate_row(
            f"{name.capitalize()} windows/s, best batch, fp32 / bf16 ({r['window_bp']:,} bp, "
            f"{r['attention']} attention, {r['parameters']:,} parameters)",
            [r["best"].get(p) for p in ("fp32", "bf16")],
            "windows_per_s",
        )
        for name, r in (results or {}).items()
    ]


def cdt_rows(r: dict[str, Any], scope: dict[str, bool]) -> list[list[Any]]:
    cdt = r.get("cdt")
    rows = []
    for precision in ("fp32", "bf16") if cdt else ():
        c = cdt[precision]
        rows.append(
            rate_row(f"CDT {cdt['preset']} training steps/s, {precision}, DNA table on the device", [c], "steps_per_s")
        )
        rows.append(
            [
                f"CDT {cdt['preset']}: the paper's 50 epochs, {precision} (minutes)",
                c["paper_50_epochs_minutes"],
                "",
                "",
                f"≤ {TARGET_PAPER_EPOCHS_MINUTES:g} on one H100",
                verdict(c["paper_50_epochs_minutes"], TARGET_PAPER_EPOCHS_MINUTES, False, applies=scope["h100"]),
            ]
        )
    loader = r.get("loader")
    if loader:
        rows.append(
            [
                "cache -> device, random batches of 8, warm (rows/s, MB/s)",
                f"{loader['rows_per_s']:.1f}, {loader['mb_per_s']:.0f}",
                "–",
                "n/a",
                "",
                "",
            ]
        )
    stage = r.get("train_stage")
    for run in stage["runs"] if stage else []:
        where = "on the device" if run["dna_on_device"] == "yes" else f"streamed ({run['num_workers']} workers)"
        rows.append(
            [
                f"train stage, CDT {stage['preset']} {run['precision']}, {run['steps']} steps + validation, DNA "
                f"{where}: second epoch s (first); 50 epochs (min)",
                f"{run['epoch_seconds']:.1f} ({run.get('first_epoch_seconds', float('nan')):.1f}); "
                f"{run['paper_50_epochs_minutes']:.1f}",
                "–",
                "n/a",
                f"≤ {TARGET_PAPER_EPOCHS_MINUTES:g} min on one H100",
                verdict(run["paper_50_epochs_minutes"], TARGET_PAPER_EPOCHS_MINUTES, False, applies=scope["h100"]),
            ]
        )
    return rows


def esm2_rows(r: dict[str, Any], scope: dict[str, bool]) -> list[list[Any]]:
    esm = r.get("esm2") or {"runs": []}
    rows = [
        rate_row(
            f"ESM-2 ({esm['parameters']:,} parameters) proteins/s, {run['precision']}, batch {run['batch']}, "
            f"{esm['length']} aa",
            [run],
            "proteins_per_s",
        )
        for run in esm["runs"]
    ]
    ragged = r.get("esm2_ragged")
    if ragged:
        ratio = ragged["bucketed_over_naive_real_tokens"]
        rows.append(
            [
                f"ESM-2 ragged proteins, real tokens/s: length-bucketed / naive batches of {ragged['naive_batch']} "
                "(table below)",
                ratio,
                "",
                "",
                f"≥ {TARGET_ESM2_RAGGED:g}×",
                verdict(ratio, TARGET_ESM2_RAGGED, applies=scope["gpu"]),
            ]
        )
    return rows


def ragged_table(ragged: dict[str, Any]) -> Table:
    lengths = ragged["lengths"]
    rows = [
        [
            name,
            path["batches"],
            path["proteins_per_s"],
            path["real_tokens_per_s"],
            path["padded_tokens_per_s"],
            pct(path["padding_fraction"]),
            path.get("tflop_per_s"),
            mfu_cell(path.get("mfu")),
        ]
        for name, path in (("bucketed (embed_rows)", ragged["bucketed"]), ("naive (row order)", ragged["naive"]))
    ]
    return table(
        f"gpu: ESM-2 on {ragged['proteins']} proteins of human-proteome lengths, {ragged['precision']}",
        ["batching", "batches", "proteins/s", "real tokens/s", "padded tokens/s", "padding", "TFLOP/s", "MFU"],
        rows,
        [
            f"lengths log-normal, median {ragged['length_model']['median']} and mean {ragged['length_model']['mean']} "
            f"residues, capped at {ragged['length_model']['cap']:,} (docs/bench.md#human-protein-lengths), seed "
            f"{ragged['seed']}: drawn median {fmt(lengths['median'])}, mean {fmt(lengths['mean'])}, "
            f"{lengths['at_cap']} at the cap",
            "real tokens: each protein's own (<cls> and <eos> included); padded tokens: every token computed "
            "(padding, and the filler items of proteins alone in a bucket batch); naive: batches of "
            f"{ragged['naive_batch']} in input order, each padded to its longest; TFLOP/s and MFU on the real "
            "tokens' FLOPs",
        ],
    )


def mfu_note(r: dict[str, Any]) -> str:
    if r.get("card"):
        return f"MFU against the {r['card']} peak for each run's math (docs/bench.md#accelerator-peaks)"
    if "card" in r:
        return "MFU n/a: no peak for this device (docs/bench.md#accelerator-peaks)"
    return "MFU n/a: this record predates it"


def gpu_tables(r: dict[str, Any]) -> list[Table]:
    scope = r.get("targets_apply") or target_scope(r["size"], r.get("device_name"))
    rows = enformer_rows(r["enformer"], scope) if r.get("enformer") else []
    rows += borzoi_rows(r.get("borzoi"))
    rows += esm2_rows(r, scope)
    rows += cdt_rows(r, scope)
    notes = [
        f"size {r['size']}; device {r['device']} ({r['device_name']}); random weights throughout",
        mfu_note(r),
        "targets judged only at full size on CUDA, those for one H100 only on an H100-class card; n/a elsewhere",
        f"50 epochs = {PAPER_EPOCHS} x {PAPER_STEPS_PER_EPOCH} steps of batch 8, evaluation excluded (train stage: "
        "each epoch's validation included, scaled to 575 steps); train stage FLOPs not counted",
    ]
    if r.get("parts_seconds"):
        notes.append("parts measured (seconds): " + ", ".join(f"{k} {v:g}" for k, v in r["parts_seconds"].items()))
    for part, failure in (r.get("failed_parts") or {}).items():
        notes.append(f"part {part} FAILED: {failure['error']} (its traceback is in the JSON record)")
    measured = list(r.get("parts_seconds") or PARTS)  # a record before parts measured them all
    title = "gpu: every accelerator measurement in one run"
    if set(measured) != set(PARTS):
        title = "gpu: the accelerator measurements of " + ", ".join(measured)
    out = [table(title, COLUMNS, rows, notes)]
    if r.get("esm2_ragged"):
        out.append(ragged_table(r["esm2_ragged"]))
    return out
