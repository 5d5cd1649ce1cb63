"""The offline end-to-end demo (`dogmacache demo`, `make demo`): tooling on top of the stages, which call none of
it. `pipeline` runs recipe -> tiny models -> embed -> verify -> train through the stages' own functions and
config dataclasses; `training` builds the demo's training configurations and writes them as TOML."""

from dogmacache.demo.pipeline import embed_demo, run_demo
from dogmacache.demo.training import (
    demo_config,
    isoformer_config,
    train_demo,
    train_isoformer_demo,
    write_demo_config,
)

__all__ = [
    "demo_config",
    "embed_demo",
    "isoformer_config",
    "run_demo",
    "train_demo",
    "train_isoformer_demo",
    "write_demo_config",
]
