"""The offline end-to-end demo (`dogmacache demo`, `make demo`): tooling on top of the stages, which call none of
it. `pipeline` runs recipe -> tiny models -> embed -> verify -> train through the stages' own functions and
config dataclasses; `training` builds the demo's training configurations and writes them as TOML."""

from dogmacache.lazy import lazy_names

__all__, __getattr__ = lazy_names(
    globals(),
    {
        "pipeline": ("embed_demo", "run_demo"),
        "training": ("demo_config", "isoformer_config", "train_demo", "train_isoformer_demo", "write_demo_config"),
    },
)
