"""`dogmacache bench`: tooling on top of the stages, measuring each against its targets. One module per
section, each with its targets and tables beside its harness (`cache`, `embed`, `cdt`); `timing` holds the
device-timing instruments, `mfu` the cards' peaks, FLOP counts and where a target applies, `report` the machine
info, tables, JSON records and summary, `cli` the command.
Nothing in the stages imports this package."""

from dogmacache.lazy import lazy_names

__all__, __getattr__ = lazy_names(
    globals(),
    {
        "cache": ("bench_cache", "cache_tables"),
        "cdt": (
            "TARGET_CDT_MEMORY_RATIO",
            "TARGET_CDT_SPEEDUP",
            "bench_cdt_section",
            "bench_cdt_step",
            "bench_in_fresh_process",
            "cdt_tables",
            "compare_cdt_implementations",
        ),
        "embed": (
            "TARGET_BF16_OVER_FP32",
            "TARGET_GPU_BUSY",
            "TARGET_WINDOWS_PER_S",
            "TINY_CASES",
            "bench_embed",
            "bench_embed_tiny",
            "bench_enformer_device",
            "bench_enformer_full_cpu",
            "embed_tables",
            "write_random_enformer",
            "write_random_genome",
        ),
        "report": ("fmt", "machine_info", "pct", "render_markdown", "render_text", "summary_markdown", "verdict"),
    },
)
