"""In-silico mutation through Bio-DTA (analysis stage: imports embed and train; nothing imports it)."""

from dogmacache.lazy import lazy_names

__all__, __getattr__ = lazy_names(
    globals(),
    {
        "edits": ("Edit", "edited_window", "parse_edit", "read_vcf"),
        "run": ("MutateConfig", "run_mutate"),
        "scan": ("Scanner", "open_scanner"),
    },
)
