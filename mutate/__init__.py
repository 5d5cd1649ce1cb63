"""In-silico mutation through Bio-DTA (analysis stage: imports embed and train; nothing imports it)."""

from dogmacache.mutate.edits import Edit, edited_window, parse_edit, read_vcf
from dogmacache.mutate.run import MutateConfig, run_mutate
from dogmacache.mutate.scan import Scanner, open_scanner

__all__ = ["Edit", "MutateConfig", "Scanner", "edited_window", "open_scanner", "parse_edit", "read_vcf", "run_mutate"]
