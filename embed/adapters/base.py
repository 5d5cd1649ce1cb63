"""The one small interface every foundation-model adapter implements. All model quirks stay inside the adapter.

Shapes: B items in a batch; an adapter's output per item is `item_shape`, (L, D) per position or (D,) pooled.

Life of an item: the runner reads a row of the input table (a dict of its columns), the adapter's `prepare`
turns it into model inputs on the CPU (runs in DataLoader worker processes: FASTA reads, one-hot,
tokenisation), `n_tokens` says what it costs on the device (after tokenisation, special tokens included: the
runner batches by a token budget), and `embed` runs the frozen model on a batch of prepared items and
returns (B, *item_shape) plus the per-item extra arrays the adapter declared.

Adding a model = one file in `embed/adapters/` with a subclass registered by `@register`.
"""

from __future__ import annotations

import argparse
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from dogmacache.cache.layout import ExtraArray
from dogmacache.contracts.provenance import file_sha256
from dogmacache.errors import DogmaError

ADAPTERS: dict[str, type[EmbeddingAdapter]] = {}


class ModelError(DogmaError):
    """A model that cannot be found, loaded or run as asked (missing checkpoint file, unknown name, ...)."""


def register(cls: type[EmbeddingAdapter]) -> type[EmbeddingAdapter]:
    ADAPTERS[cls.name] = cls
    return cls


@dataclass(frozen=True)
class ModelInfo:
    """What changes the numbers: written into the cache manifest."""

    model: str  # hub id or local directory the weights came from
    model_revision: str  # hub revision, or "sha256:<hex>" of the weights file
    layer: int | str
    pooling: str  # "none" for per-position outputs
    item_shape: tuple[int, ...]
    extras: tuple[ExtraArray, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)  # window, strand policy, truncation, dtype ...


class EmbeddingAdapter(ABC):
    """A frozen foundation model behind the runner's interface."""

    name: ClassVar[str]  # registry name used by `--model`
    modalities: ClassVar[tuple[str, ...]]  # which `--modality` values it embeds
    required_columns: ClassVar[dict[str, tuple[str, ...]]] = {}  # modality -> input table columns it reads

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:  # noqa: B027 - an optional hook
        """Adapter-specific command-line options (e.g. --layer, --pooling); none by default."""
        return None

    @abstractmethod
    def __init__(self, model_path: str, modality: str, options: argparse.Namespace, device: torch.device):
        """Load the frozen model (hub id or local directory), in eval mode on `device`."""

    @abstractmethod
    def info(self) -> ModelInfo: ...

    def check_table(self, table) -> None:  # noqa: B027 - an optional hook
        """Checks over the whole input table before any work (e.g. every gene symbol in the vocabulary),
        so that all bad rows are reported at once; none by default."""
        return None

    def default_max_tokens(self, device: torch.device) -> int:
        """Token budget per batch when the user gives none (after tokenisation, specials included)."""
        return 1 << 16 if device.type == "cuda" else 1 << 13

    @abstractmethod
    def prepare(self, row: dict[str, Any]) -> dict[str, np.ndarray]:
        """One item's model inputs, built on the CPU. Must be picklable and must not touch the model."""

    @abstractmethod
    def n_tokens(self, prepared: dict[str, np.ndarray]) -> int:
        """Device cost of one prepared item, counted after tokenisation (special tokens included)."""

    @abstractmethod
    def embed(self, batch: list[dict[str, np.ndarray]]) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
        """(B, *item_shape) outputs for a batch of prepared items (any float dtype, any device), and the
        per-item extras declared in `info().extras`, each (B, ...)."""


def get_adapter(name: str) -> type[EmbeddingAdapter]:
    from dogmacache.embed import adapters  # noqa: F401 - importing the package registers every adapter

    if name not in ADAPTERS:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(sorted(ADAPTERS))}. Pick one with --model")
    return ADAPTERS[name]


def weights_digest(path: str) -> str:
    """sha256 of a weights file, recorded as the revision when a model comes from a local directory."""
    return file_sha256(path)
