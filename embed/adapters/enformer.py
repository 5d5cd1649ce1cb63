"""Enformer (enformer-pytorch): trunk embeddings (bins, dim) per DNA window; official weights (896, 3072).

Layers (`--layer`, `--layers`): `trunk` (the default: the output of the final pointwise block, 2 x dim wide),
`conv_tower` (the convolution tower's output, dim wide, 128 bp per bin) and `transformer.K` (the output of
transformer block K, 0-based, dim wide); the last two are cropped to the trunk's central bins as the trunk is,
so every layer's bin i covers the same 128 bp. The trunk is computed module by module (`_trunk`'s own modules,
in its order), which gives the library's forward bit for bit.

Loading works whatever transformers version is installed: read `config.json` into `EnformerConfig`, build
`Enformer(config)`, `load_state_dict(strict=True)` from the weights file (hub id -> snapshot_download, or a
local directory). Quirks kept here: the official weights need TF's gamma positional features
(`use_tf_gamma=True`), which only exist at 1536 bins (196,608 bp); `forward(target_length=...)` would change
the module for good, so it is never passed; `forward` does not move inputs to the model's device.
Input: the window as indices A,C,G,T,N = 0..4 -> one-hot (N = zeros). Optional strand policy for minus-strand
items: the average of the window and its reverse complement (output bins flipped back).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from dogmacache.cache.layout import ExtraArray
from dogmacache.contracts.sequences import reverse_complement
from dogmacache.embed.adapters.base import (
    LAYER_FLAG,
    STRAND_POLICY_FLAG,
    WINDOW_BP_FLAG,
    AdapterOptions,
    LayeredAdapter,
    ModelInfo,
)
from dogmacache.embed.adapters.weights import (
    SAVED_TOGETHER,
    load_state_dict_file,
    load_strict,
    read_config_json,
    recorded_identity,
    resolve_model_dir,
)
from dogmacache.embed.genome import check_dna
from dogmacache.embed.random_weights import randomize_
from dogmacache.errors import ModelError

OFFICIAL = "EleutherAI/enformer-official-rough"
TF_GAMMA_BINS = 1536  # the only input length (in 128 bp bins) TF's gamma features exist for
BIN_BP = 128  # bp per output bin
_INDEX = np.full(256, 255, dtype=np.uint8)
for _i, _b in enumerate("ACGTN"):
    _INDEX[ord(_b)] = _i


@dataclass(frozen=True)
class EnformerOptions(AdapterOptions):
    # input window in bp; None: 196,608 for 896-bin models, else 256 x the bins (+ 128 for an odd number of bins)
    window_bp: int | None = None
    tf_gamma: str = "auto"  # TF's gamma positional features: auto (on at 196,608 bp, as trained) | on | off
    strand_policy: str = "forward"  # minus-strand items: forward (reference strand) | rc-average
    layer: str = "trunk"  # trunk | conv_tower | transformer.K (block K's output), cropped to the trunk's bins

    flags: ClassVar[dict[str, dict[str, Any]]] = {
        "window_bp": WINDOW_BP_FLAG,
        "tf_gamma": {
            "flags": ("--tf-gamma",),
            "choices": ("auto", "on", "off"),
            "help": "TF gamma positional features: the official weights need them (auto: on at 196,608 bp)",
        },
        "strand_policy": STRAND_POLICY_FLAG,
        "layer": LAYER_FLAG,
    }

    def __post_init__(self):
        self._check_choice("tf_gamma", ("auto", "on", "off"))
        self._check_choice("strand_policy", ("forward", "rc-average"))

    def resolve(self, bins: int) -> EnformerOptions:
        """Window and TF gamma for a model with `bins` output bins; ModelError for a window it cannot take. The
        trunk crops its window // 128 positions to the central `bins` by cutting as many from each end, so the two
        counts must differ by an even number (else the crop keeps bins - 1)."""
        default = 196_608 if bins == 896 else (2 * bins + bins % 2) * BIN_BP
        window = default if self.window_bp is None else self.window_bp  # 0 is no window, not "the default"
        if window <= 0 or window % BIN_BP or window // BIN_BP < bins:
            raise ModelError(f"--window-bp {window} must be a multiple of {BIN_BP} covering at least {bins} bins")
        if (window // BIN_BP - bins) % 2:
            near = " or ".join(f"{n * BIN_BP}" for n in (window // BIN_BP - 1, window // BIN_BP + 1) if n >= bins)
            raise ModelError(
                f"--window-bp {window} is {window // BIN_BP} positions of {BIN_BP} bp, which the model cannot crop "
                f"evenly to its {bins} central bins (the difference must be even); use --window-bp {near}"
            )
        on = window // BIN_BP == TF_GAMMA_BINS if self.tf_gamma == "auto" else self.tf_gamma == "on"
        if on and window // BIN_BP != TF_GAMMA_BINS:
            raise ModelError(f"TF gamma features exist only for 196,608 bp windows, not {window}; use --tf-gamma off")
        return replace(self, window_bp=window, tf_gamma="on" if on else "off")


class EnformerAdapter(LayeredAdapter):
    options_class = EnformerOptions
    options: EnformerOptions

    def __init__(
        self,
        model_path: str | None,
        options: EnformerOptions,
        device: torch.device,
        revision: str | None = None,
        random_init: int | None = None,
    ):
        from enformer_pytorch import Enformer
        from enformer_pytorch.config_enformer import EnformerConfig
        from enformer_pytorch.modeling_enformer import Attention

        source = resolve_model_dir(model_path or OFFICIAL, revision, weights=random_init is None)
        directory = source.directory
        raw = read_config_json(directory, "an Enformer")
        if raw.get("model_type") not in (None, "enformer"):
            raise ModelError(
                f"{directory} holds a {raw.get('model_type')!r} model (its config.json), not an Enformer; point "
                "--model-path at an Enformer folder, or pick the --model that matches this folder"
            )
        config = EnformerConfig(**{k: v for k, v in raw.items() if k not in ("architectures", "transformers_version")})
        model = Enformer(config)
        weights_path = None
        if random_init is not None:
            randomize_(model, random_init)  # a control: the architecture alone, as `write_tiny_enformer` draws it
        else:
            state, weights_path = load_state_dict_file(directory)
            load_strict(
                model,
                state,
                f"{weights_path} does not match the Enformer in {directory / 'config.json'}",
                SAVED_TOGETHER,
            )
        self.bins = int(config.target_length)
        self.options = options.resolve(self.bins)
        self.window, self.tf_gamma = self.options.window_bp, self.options.tf_gamma == "on"
        for module in model.modules():  # the official weights were trained with TF's gamma features
            if isinstance(module, Attention):
                module.use_tf_gamma = self.tf_gamma
        self.model = model.to(device).eval().requires_grad_(False)
        self.device = device
        self.dim = int(config.dim)  # the trunk's final pointwise layer doubles it
        self.depth = len(model.transformer)
        model_id, model_revision, files = recorded_identity(source, weights_path, random_init)
        self._info = ModelInfo(
            model=model_id,
            model_revision=model_revision,
            files=files,
            layer="trunk",  # set by select_layer
            pooling="none",
            item_shape=(self.bins, 2 * self.dim),
            extras=(ExtraArray("n_padded", "int32"),),
            config={"bin_bp": BIN_BP, "output_span_bp": BIN_BP * self.bins},
        )
        self.select_layer(self.options.layer)

    def layers(self) -> tuple[str, ...]:
        return ("conv_tower", *(f"transformer.{k}" for k in range(self.depth)), "trunk")

    def select_layer(self, layer: str) -> None:
        self.layer = self.check_layer(layer)
        self.options = replace(self.options, layer=layer)
        width = 2 * self.dim if layer == "trunk" else self.dim
        self._info = replace(self._info, layer=layer, item_shape=(self.bins, width))

    def info(self) -> ModelInfo:
        return self._info

    def default_max_tokens(self, device: torch.device) -> int:
        return self.window * 8 if device.type == "cuda" else max(self.window, 1 << 15)  # CPU: 32 kb or one window

    def prepare(self, row: dict[str, Any]) -> dict[str, np.ndarray]:
        seq, n_padded = row["_genome"].window(str(row["chrom"]), int(row["center"]), self.window)
        index = _INDEX[np.frombuffer(seq.encode(), dtype=np.uint8)]
        if index.max(initial=0) > 4:  # a byte other than A, C, G, T, N: the one-line error naming it
            check_dna(seq, row["id"])
        minus = self.options.strand_policy == "rc-average" and str(row.get("strand", "+")) == "-"
        out = {"index": index, "n_padded": np.int32(n_padded)}
        if minus:
            out["index_rc"] = _INDEX[np.frombuffer(reverse_complement(seq).encode(), dtype=np.uint8)]
        return out

    def n_tokens(self, prepared: dict[str, np.ndarray]) -> int:
        return len(prepared["index"]) * (2 if "index_rc" in prepared else 1)

    def shape_bucket(self, prepared: dict[str, np.ndarray]) -> int | None:
        """Under rc-average a minus-strand window costs a second forward: plus and minus windows are batched apart,
        so the reverse-complement pass has one shape too."""
        return self.n_tokens(prepared) if self.options.strand_policy == "rc-average" else None

    def one_hot(self, index: torch.Tensor) -> torch.Tensor:
        """(B, window) indices -> (B, window, 4) one-hot with N as zeros, on the model's device."""
        return torch.nn.functional.one_hot(index.long().to(self.device), 5)[..., :4].float()

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """(B, window, 4) one-hot -> (B, bins, dim) trunk embeddings by the library's own forward (the GPU bench
        times this)."""
        return self.model(x, return_only_embeddings=True)

    def compile(self, mode: str) -> None:
        """`--compile MODE`: `forward_layers` through `torch.compile` (fusing the elementwise chains and
        concatenations around the convolutions). Every batch has one shape (`embed/shapes.py`), so it compiles
        once per layer set; "reduce-overhead" replays it as a CUDA graph. "off": eager again."""
        self._compile_mode = mode
        if mode == "off":
            self._compiled = None
            return
        self._compiled = torch.compile(
            self._forward_layers, mode=None if mode == "default" else mode, dynamic=False, fullgraph=False
        )

    @property
    def compiled(self) -> bool:
        """Whether the forward runs through `torch.compile` now."""
        return getattr(self, "_compiled", None) is not None

    @contextlib.contextmanager
    def eager(self):
        compiled, self._compiled = getattr(self, "_compiled", None), None
        try:
            yield
        finally:
            self._compiled = compiled

    def forward_layers(self, one_hot: torch.Tensor, layers: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """(B, window, 4) one-hot -> {layer: (B, bins, width)}, compiled under `--compile`."""
        compiled = getattr(self, "_compiled", None)
        if compiled is None:
            return self._forward_layers(one_hot, layers)
        if self._compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # a new replay: the last one's outputs are no longer read
            return {k: v.clone() for k, v in compiled(one_hot, layers).items()}  # a CUDA graph's outputs are reused
        return compiled(one_hot, layers)

    def _forward_layers(self, one_hot: torch.Tensor, layers: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """(B, window, 4) one-hot -> {layer: (B, bins, width)}: `_trunk`'s modules run one by one (Rearrange, stem,
        conv tower, Rearrange, transformer blocks, crop, final pointwise), stopping after the last layer asked for."""
        rearrange_in, stem, conv_tower, rearrange_out, transformer, crop, pointwise = self.model.trunk
        x = rearrange_out(conv_tower(stem(rearrange_in(one_hot))))  # (B, window / 128, dim)
        out = {"conv_tower": crop(x)} if "conv_tower" in layers else {}
        blocks = [k for k in range(self.depth) if f"transformer.{k}" in layers]
        last = self.depth - 1 if "trunk" in layers else max(blocks, default=-1)
        for k, block in enumerate(transformer[: last + 1]):
            x = block(x)
            if k in blocks:
                out[f"transformer.{k}"] = crop(x)
        if "trunk" in layers:
            out["trunk"] = pointwise(crop(x))
        return out

    def embed_layers(
        self, batch: list[dict[str, np.ndarray]], layers: tuple[str, ...]
    ) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
        index = torch.from_numpy(np.stack([item["index"] for item in batch]))
        outputs = self.forward_layers(self.one_hot(index), layers)  # each (B, bins, width)
        minus = [i for i, item in enumerate(batch) if "index_rc" in item]
        if minus:
            rc = torch.from_numpy(np.stack([batch[i]["index_rc"] for i in minus]))
            rc_outputs = self.forward_layers(self.one_hot(rc), layers)
            for layer, out in outputs.items():
                out = out.clone()  # inference tensors: write into a copy
                out[minus] = (out[minus] + rc_outputs[layer].flip(1)) / 2  # rc bins back in reference order
                outputs[layer] = out
        return outputs, {"n_padded": np.array([item["n_padded"] for item in batch], dtype=np.int32)}


TINY_ENFORMER = {
    "dim": 48,
    "depth": 1,
    "heads": 2,
    "attn_dim_key": 8,
    "dim_divisible_by": 8,
    "target_length": 8,
    "output_heads": {"human": 4},
}  # 74k parameters, ~2 kb windows (the test config of docs/papers.md#enformer)


def write_tiny_enformer(directory: Path, seed: int = 0, gain: float = 1.0, **hparams: Any) -> Path:
    """A tiny random Enformer (74k parameters) in the real on-disk layout (config.json + pytorch_model.bin), every
    weight random (the attention output projection too, which the library initialises to zero) and its
    BatchNorm statistics set; `hparams` override TINY_ENFORMER's, `gain` scales the weights (`randomize_`)."""
    from enformer_pytorch import Enformer

    model = randomize_(Enformer.from_hparams(**{**TINY_ENFORMER, **hparams}), seed, gain=gain)
    model.save_pretrained(str(directory), safe_serialization=False)  # enformer-pytorch needs the .bin format
    return Path(directory)
