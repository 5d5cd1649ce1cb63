"""The demo's embed calls into its own folder: a cache there that an earlier version of the demo wrote, which this
version refuses to resume (a number setting it did not record, such as an adapter's `batching` mark), is embedded
anew; anything else at the path keeps its refusal."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dogmacache.embed.runner import EmbedConfig
from dogmacache.embed.settings import existing_manifest
from dogmacache.errors import InputError


def embed_own(run: Callable[[EmbedConfig], Any], config: EmbedConfig, outs: Sequence[str] = ()) -> Any:
    """`run(config)`; where it refuses a cache at `outs` (default: `config.out`) and every cache there was embedded
    from a table of the same name as this one (the demo recipe's), `run` again with `overwrite`."""
    try:
        return run(config)
    except InputError:
        found = [m for m in (existing_manifest(out) for out in outs or [config.out]) if m is not None]
        name = Path(config.input).name
        if not found or any((m.config.get("input") or {}).get("name") != name for m in found):
            raise
        print(f"embedding {config.out} anew: an earlier version's cache of {name} is there")
        return run(dataclasses.replace(config, overwrite=True))
