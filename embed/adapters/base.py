"""The one small interface every foundation-model adapter implements. All model quirks stay inside the adapter.

Shapes: B items in a batch; an adapter's output per item is `item_shape`, (L, D) per position or (D,) pooled.

Options: each adapter declares a frozen `AdapterOptions` dataclass (`options_class`), every default visible.
The adapter's constructor resolves it once against the loaded model (a window length from the model's bins,
"auto" to on/off ...) and keeps the result as `self.options`; the runner writes that into the manifest.

Life of an item: the runner reads a row of the input table (a dict of its columns), the adapter's `prepare`
turns it into model inputs on the CPU (runs in DataLoader worker processes: FASTA reads, one-hot,
tokenisation), `n_tokens` says what it costs on the device (after tokenisation, special tokens included: the
runner batches by a token budget), and `embed` runs the frozen model on a batch of prepared items and
returns (B, *item_shape) plus the per-item extra arrays the adapter declared.

Layers: an adapter whose model has several outputs worth reading (transformer blocks, the conv tower ...)
subclasses `LayeredAdapter`: `layers()` names them, the `layer` option (`--layer`) picks one, `for_layer` gives
the same loaded model set to another, and `embed_layers` returns several from one forward pass (`dogmacache embed
--layers`, `embed/layers.py`). `embed` is `embed_layers` on the chosen layer, so a layer's numbers are the same
whichever way it is asked for. Adapters with one fixed output (the k-mer controls) have no `layers()`.

Adding a model = one file in `embed/adapters/` with an `EmbeddingAdapter` subclass and its options
dataclass (and its tiny writer, listed in `embed/tiny.py: make_tiny`), and one line per modality in `ADAPTERS`
(`embed/adapters/registry.py`).
"""

from __future__ import annotations

import contextlib
import copy
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Self

import numpy as np
import torch
from dogmacache.cache.layout import ExtraArray
from dogmacache.embed.digest import item_digest
from dogmacache.errors import InputError

# `--window-bp`, shared by the adapters that cut DNA windows from a genome
WINDOW_BP_FLAG = {
    "flags": ("--window-bp",),
    "type": int,
    "help": "DNA window length (enformer default: 196,608 for 896-bin models, else 256 x its bins, + 128 for an odd "
    "count; borzoi/flashzoi: 524,288 for 6,144-bin models, any multiple of 128 covering the bins; "
    "nucleotide-transformer on genome windows needs it)",
}


# `--layer`, shared by the adapters whose models have several layers (each names its own in `layers()`)
LAYER_FLAG = {
    "flags": ("--layer",),
    "help": "the layer to embed (default: the model's usual output): esm2, esmc and nucleotide-transformer -1 (the "
    "last, after the final LayerNorm) or k (0 = the embedding output); enformer trunk, conv_tower, transformer.K; "
    "scgpt gene gene_embedding+enc_norm, gene_embedding; scgpt context cls_last_layer, encoder, layer.K",
}


# `--strand-policy`, shared by the adapters that cut DNA windows (each checks the policies it implements)
STRAND_POLICY_FLAG = {
    "flags": ("--strand-policy",),
    "choices": ("forward", "rc-average"),
    "help": "minus-strand items: reference strand only, or averaged with the reverse complement (enformer, "
    "borzoi, flashzoi)",
}


@dataclass(frozen=True)
class AdapterOptions:
    """Base of every adapter's options. Subclasses are frozen dataclasses; `flags` maps each field to the
    `dogmacache embed` flag that sets it (argparse arguments; `flags` holds the option strings)."""

    flags: ClassVar[dict[str, dict[str, Any]]] = {}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Self:
        """Options from untyped keys (a config file, parsed flags); an unknown key is an InputError."""
        known = [f.name for f in fields(cls)]
        unknown = [key for key in values if key not in known]
        if unknown:
            raise InputError(
                f"{cls.__name__} has no option {unknown[0]!r}; known: {', '.join(known) or 'none'}. "
                "Drop it or fix its spelling"
            )
        return cls(**values)

    def _check_choice(self, name: str, allowed: tuple[str, ...]) -> None:
        value = getattr(self, name)
        if value not in allowed:
            flag = (self.flags.get(name) or {}).get("flags", (f"option {name}",))[0]
            raise InputError(
                f"{flag} {value!r} is not one this model takes; expected one of {', '.join(allowed)}: pass one of them"
            )


@dataclass(frozen=True)
class ModelInfo:
    """What changes the numbers: written into the cache manifest (with the resolved options beside it)."""

    model: str  # hub id when the weights are (a snapshot of) a hub repository, else the folder's name
    model_revision: str  # hub commit, or "sha256:<hex>" of the weights file
    layer: int | str
    pooling: str  # "none" for per-position outputs
    item_shape: tuple[int, ...]
    extras: tuple[ExtraArray, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)  # facts of the loaded model: bin size, truncation ...
    files: dict[str, str] = field(default_factory=dict)  # {file name: "sha256:<hex>"} of every model file read


class EmbeddingAdapter(ABC):
    """A frozen foundation model behind the runner's interface."""

    options_class: ClassVar[type[AdapterOptions]]
    # preparing an item costs less than passing it from a worker process (a table lookup of letters or gene
    # symbols, ~5-25 us): the default plan then prepares in the embedding process (`embed/settings.py`)
    cheap_inputs: ClassVar[bool] = False
    reads_weights: ClassVar[bool] = True  # False: features computed from the input alone (kmer); no model path
    options: AdapterOptions  # resolved by the constructor: no "auto" or None left that the model decides

    @abstractmethod
    def __init__(
        self,
        model_path: str | None,
        options: AdapterOptions,
        device: torch.device,
        revision: str | None = None,
        random_init: int | None = None,
    ):
        """Load the frozen model (hub id or local directory; None = the adapter's default weights), in eval
        mode on `device`, and resolve `options` into `self.options`. `random_init` (`--random-init SEED`): build
        the same architecture from the folder's configuration and draw every weight with `randomize_(model,
        SEED)` instead of loading the weights (a control); `info()` then names no weights file and its
        `model_revision` is `random_init_revision(SEED)`."""

    @abstractmethod
    def info(self) -> ModelInfo: ...

    def check_table(self, table) -> None:  # noqa: B027 - an optional hook
        """Checks over the whole input table before any work (e.g. every gene symbol in the vocabulary),
        so that all bad rows are reported at once; none by default."""
        return None

    def layers(self) -> tuple[str, ...]:
        """The layer names `--layer` and `--layers` take, in model order; () for one fixed output (no layers)."""
        return ()

    def default_max_tokens(self, device: torch.device) -> int:
        """Token budget per batch when the user gives none (after tokenisation, specials included)."""
        return 1 << 16 if device.type == "cuda" else 1 << 13

    @abstractmethod
    def prepare(self, row: dict[str, Any]) -> dict[str, np.ndarray]:
        """One item's model inputs, built on the CPU. Must be picklable and must not touch the model."""

    def digests(self, rows: list[dict[str, Any]]) -> np.ndarray:
        """(len(rows), 32) uint8: each row's input digest, `item_digest(self.prepare(row))` (what `--reuse` and
        every cache's `item_sha256` compare). An adapter may compute the same bytes faster for many rows at once."""
        out = np.zeros((len(rows), 32), dtype=np.uint8)
        for k, row in enumerate(rows):
            out[k] = item_digest(self.prepare(row))
        return out

    @abstractmethod
    def n_tokens(self, prepared: dict[str, np.ndarray]) -> int:
        """Device cost of one prepared item, counted after tokenisation (special tokens included)."""

    def shape_bucket(self, prepared: dict[str, np.ndarray]) -> int | None:
        """Items of many sizes: the token count of the batches this item is computed in (its own, rounded up to a
        length bucket), so that its numbers do not depend on the items beside it (`embed/shapes.py`). Such an
        adapter pads each batch's ids to `shapes.pad_length(batch)` when that is longer than the batch's longest
        (`tokens.padded_ids` does), and `filler` builds an item of exactly that many tokens. None (the default):
        batches in row order."""
        return None

    def filler(self, n_tokens: int) -> dict[str, np.ndarray]:
        """A prepared item of exactly `n_tokens` tokens whose output is dropped: it joins an item that is alone in
        its bucket's batch (a batch of one takes another code path). Adapters whose `shape_bucket` returns a number
        implement it."""
        raise NotImplementedError(f"{type(self).__name__} batches by length bucket but builds no filler item")

    def compile(self, mode: str) -> None:
        """`embed --compile MODE`: run the forward through `torch.compile` (MODE "default", "max-autotune" or
        "reduce-overhead", the last with CUDA graphs on CUDA). Adapters whose batches have fixed shapes implement
        it; the others run eager and say so."""
        raise InputError(
            f"--compile {mode}: {type(self).__name__.removesuffix('Adapter')} runs eager only; --compile is for "
            "models whose batches have one fixed shape (enformer). Drop --compile"
        )

    def eager(self) -> contextlib.AbstractContextManager:
        """A context in which the forward runs eager even when compiled (the fidelity receipt's reference)."""
        return contextlib.nullcontext()

    @abstractmethod
    def embed(self, batch: list[dict[str, np.ndarray]]) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
        """(B, *item_shape) outputs for a batch of prepared items (any float dtype, any device), and the
        per-item extras declared in `info().extras`, each (B, ...)."""


class LayeredAdapter(EmbeddingAdapter):
    """An adapter whose model has several layers to read. Subclasses set `self.layer` and `self.options` (its
    `layer` field) for one layer in `select_layer`, which their constructor calls with the `layer` option, and
    compute any set of layers from one forward pass in `embed_layers`."""

    layer: str  # the selected layer's name, one of `layers()`

    @abstractmethod
    def layers(self) -> tuple[str, ...]: ...

    @abstractmethod
    def select_layer(self, layer: str) -> None:
        """Set `self.layer`, `self.options` and what `info()` returns for `layer` (checked with `check_layer`)."""

    @abstractmethod
    def embed_layers(
        self, batch: list[dict[str, np.ndarray]], layers: tuple[str, ...]
    ) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
        """One forward pass over a batch: {layer: (B, *that layer's item_shape)} for each of `layers`, and the
        per-item extras (the same for every layer)."""

    def embed(self, batch: list[dict[str, np.ndarray]]) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
        outputs, extras = self.embed_layers(batch, (self.layer,))
        return outputs[self.layer], extras

    def check_layer(self, layer: str) -> str:
        """`layer` when it is one of `layers()`; InputError listing them otherwise."""
        if layer not in self.layers():
            raise InputError(
                f"layer {layer!r} does not exist in this {type(self).__name__.removesuffix('Adapter')} model; its "
                f"layers: {', '.join(self.layers())}. Pick from them"
            )
        return layer

    def for_layer(self, layer: str) -> Self:
        """This adapter, sharing its loaded model, set to embed `layer` (as if loaded with `--layer layer`)."""
        twin = copy.copy(self)
        twin.select_layer(layer)
        return twin
