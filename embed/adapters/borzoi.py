"""Borzoi and Flashzoi (borzoi-pytorch): trunk embeddings (bins, 1,920) per DNA window; official weights (6,144, 1,920).

Loading as for Enformer: read `config.json` into `BorzoiConfig`, build `Borzoi(config)`, `load_state_dict(strict=True)`
from the weights file (hub id -> snapshot_download, or a local directory), every file's sha256 recorded. The
embedding is the layer before the track heads: `final_joined_convs` over the cropped trunk (`get_embs_after_crop`),
what `Borzoi.forward(..., return_embeddings=True)` returns beside the tracks; the heads are not run.

Window (docs/papers.md#borzoi-and-flashzoi, facts in `contracts/windows.py`): 524,288 bp for the published 6,144-bin
models; any multiple of 128 bp whose 32 bp bins cover the model's bins may be asked for (`--window-bp`; the crop
keeps the central bins, so the output bins stay centred). Another bin count (tiny models) gets the published
window scaled to its bins. The relative-position attention caches its position features at the first window
length it sees, so one adapter embeds one window length.

Flashzoi (`flashed: true` in config.json): flash-attn's kernels when flash-attn imports and the device is CUDA
(`--attention auto`; they need `--precision bf16` or `fp16`), else `flashzoi_attention.RotaryAttention`, the same
computation in plain PyTorch; the choice is recorded in the manifest's options.
Input: indices A,C,G,T,N = 0..4 -> one-hot (B, 4, L) with N as zeros; strand policy as Enformer's.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from dogmacache.cache.layout import ExtraArray
from dogmacache.contracts.windows import BORZOI_BIN_BP, BORZOI_BINS, BORZOI_STRIDE_BP, BORZOI_WINDOW_BP
from dogmacache.embed.adapters.base import (
    STRAND_POLICY_FLAG,
    WINDOW_BP_FLAG,
    AdapterOptions,
    EmbeddingAdapter,
    ModelInfo,
)
from dogmacache.embed.adapters.enformer import EnformerAdapter
from dogmacache.embed.adapters.flashzoi_attention import use_plain_attention
from dogmacache.embed.adapters.weights import (
    SAVED_TOGETHER,
    load_state_dict_file,
    load_strict,
    read_config_json,
    recorded_identity,
    resolve_model_dir,
)
from dogmacache.embed.random_weights import randomize_
from dogmacache.errors import ModelError

OFFICIAL = {"borzoi": "johahi/borzoi-replicate-0", "flashzoi": "johahi/flashzoi-replicate-0"}
ATTENTIONS = ("auto", "flash", "plain")


@dataclass(frozen=True)
class BorzoiOptions(AdapterOptions):
    window_bp: int | None = None  # input window in bp; None: 524,288 for 6,144-bin models, else scaled to the bins
    strand_policy: str = "forward"  # minus-strand items: forward (reference strand) | rc-average

    flags: ClassVar[dict[str, dict[str, Any]]] = {"window_bp": WINDOW_BP_FLAG, "strand_policy": STRAND_POLICY_FLAG}

    def __post_init__(self):
        self._check_choice("strand_policy", ("forward", "rc-average"))

    def resolve(self, bins: int, device: torch.device) -> BorzoiOptions:
        """The window for a model with `bins` output bins; ModelError for a window it cannot take."""
        scaled = math.ceil(BORZOI_WINDOW_BP * bins / BORZOI_BINS / BORZOI_STRIDE_BP) * BORZOI_STRIDE_BP
        window = scaled if self.window_bp is None else self.window_bp  # 0 is no window, not "the default"
        if bins % 2:
            raise ModelError(f"a Borzoi with {bins} output bins cannot crop them centred; use an even bins_to_return")
        if window <= 0 or window % BORZOI_STRIDE_BP or window // BORZOI_BIN_BP < bins:
            raise ModelError(
                f"--window-bp {window} must be a multiple of {BORZOI_STRIDE_BP} covering at least {bins} bins of "
                f"{BORZOI_BIN_BP} bp ({bins * BORZOI_BIN_BP:,} bp)"
            )
        return replace(self, window_bp=window)


@dataclass(frozen=True)
class FlashzoiOptions(BorzoiOptions):
    attention: str = "auto"  # auto (flash-attn on CUDA when it imports, else plain) | flash | plain

    flags: ClassVar[dict[str, dict[str, Any]]] = {
        **BorzoiOptions.flags,
        "attention": {
            "flags": ("--attention",),
            "choices": ATTENTIONS,
            "help": "flashzoi: flash-attn kernels (CUDA, bf16/fp16) or the same attention in plain PyTorch "
            "(auto: flash on CUDA when flash-attn is installed)",
        },
    }

    def __post_init__(self):
        super().__post_init__()
        self._check_choice("attention", ATTENTIONS)

    def resolve(self, bins: int, device: torch.device) -> FlashzoiOptions:
        flash_found = importlib.util.find_spec("flash_attn") is not None
        attention = self.attention
        if attention == "auto":
            attention = "flash" if flash_found and device.type == "cuda" else "plain"
        if attention == "flash" and not (flash_found and device.type == "cuda"):
            found = "installed" if flash_found else "not installed"
            raise ModelError(
                f"--attention flash needs flash-attn on a CUDA device (flash-attn {found}, device {device.type}); "
                "install the [gpu] extra on a GPU machine or use --attention plain"
            )
        return replace(super().resolve(bins, device), attention=attention)


def read_config(directory: Path):
    """`BorzoiConfig` from the folder's config.json (ModelError when there is none)."""
    from borzoi_pytorch.config_borzoi import BorzoiConfig

    raw = read_config_json(directory, "a Borzoi")
    if raw.get("model_type") not in (None, "borzoi"):
        raise ModelError(
            f"{directory} holds a {raw.get('model_type')!r} model (its config.json), not a Borzoi or Flashzoi; point "
            "--model-path at one, or pick the --model that matches this folder"
        )
    return BorzoiConfig(**{k: v for k, v in raw.items() if k not in ("architectures", "transformers_version")})


def build_borzoi(config, flash: bool) -> torch.nn.Module:
    """The model `config` describes; a Flashzoi without `flash` gets `RotaryAttention` in place of flash-attn."""
    from borzoi_pytorch import Borzoi
    from borzoi_pytorch.config_borzoi import BorzoiConfig

    if not getattr(config, "flashed", False) or flash:
        return Borzoi(config)
    plain = BorzoiConfig(**{**config.to_dict(), "flashed": False})
    return use_plain_attention(Borzoi(plain), int(config.dim), int(config.heads))


class BorzoiAdapter(EmbeddingAdapter):
    options_class: ClassVar[type[BorzoiOptions]] = BorzoiOptions
    options: BorzoiOptions
    name: ClassVar[str] = "borzoi"
    flashed: ClassVar[bool] = False  # what config.json's `flashed` must say for this --model

    def __init__(
        self,
        model_path: str | None,
        options: BorzoiOptions,
        device: torch.device,
        revision: str | None = None,
        random_init: int | None = None,
    ):
        source = resolve_model_dir(model_path or OFFICIAL[self.name], revision, weights=random_init is None)
        config = read_config(source.directory)
        if bool(getattr(config, "flashed", False)) != self.flashed:
            other = "flashzoi" if not self.flashed else "borzoi"
            raise ModelError(
                f"{source.directory} holds a {other} (config.json flashed: {not self.flashed}); use --model {other}"
            )
        self.bins = int(config.bins_to_return) if config.return_center_bins_only else None
        if self.bins is None:
            raise ModelError(f"{source.directory}/config.json has return_center_bins_only false; set it true")
        self.options = options.resolve(self.bins, device)
        self.flash = getattr(self.options, "attention", None) == "flash"
        self._config = config
        model = build_borzoi(config, self.flash)
        weights_path = None
        if random_init is not None:
            randomize_(model, random_init)  # a control: the architecture alone, as the tiny writers draw it
        else:
            state, weights_path = load_state_dict_file(source.directory)
            what = f"{weights_path} does not match the {self.name.capitalize()} in {source.directory / 'config.json'}"
            load_strict(model, state, what, SAVED_TOGETHER)
        self.model = model.to(device).eval().requires_grad_(False)
        self.device, self.window = device, int(self.options.window_bp)
        self.dim = int(self.model.final_joined_convs[0].conv_layer.out_channels)  # 1,920 in every Borzoi
        model_id, model_revision, files = recorded_identity(source, weights_path, random_init)
        self._info = ModelInfo(
            model=model_id,
            model_revision=model_revision,
            files=files,
            layer="trunk",
            pooling="none",
            item_shape=(self.bins, self.dim),
            extras=(ExtraArray("n_padded", "int32"),),
            config={
                "bin_bp": BORZOI_BIN_BP,
                "output_span_bp": BORZOI_BIN_BP * self.bins,
                # under rc-average, earlier caches batched plus and minus windows together (other policies: as before)
                **({"batching": "rc-average windows apart"} if self.options.strand_policy == "rc-average" else {}),
            },
        )

    def info(self) -> ModelInfo:
        return self._info

    @contextlib.contextmanager
    def eager(self):
        """The fidelity receipt's float32 reference: flash-attn runs in bf16 or fp16 only, so under `--attention
        flash` the same weights go into a Flashzoi with plain attention (`flashzoi_attention`, the same parameter
        names) for the block, and are let go after it; otherwise the model as it is."""
        if not self.flash:
            yield
            return
        plain = build_borzoi(self._config, flash=False)
        plain.load_state_dict(self.model.state_dict(), strict=True)
        model, self.model, self.flash = self.model, plain.to(self.device).eval().requires_grad_(False), False
        try:
            yield
        finally:
            self.model, self.flash = model, True

    def default_max_tokens(self, device: torch.device) -> int:
        return self.window * 4 if device.type == "cuda" else self.window  # CPU: one window per batch

    prepare = EnformerAdapter.prepare  # the window cut from the genome as indices, reverse complement when asked
    n_tokens = EnformerAdapter.n_tokens
    shape_bucket = EnformerAdapter.shape_bucket  # rc-average: plus and minus windows in batches of their own

    def one_hot(self, index: torch.Tensor) -> torch.Tensor:
        """(B, window) indices -> (B, 4, window) one-hot with N as zeros, on the model's device."""
        return torch.nn.functional.one_hot(index.long().to(self.device), 5)[..., :4].float().transpose(1, 2)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 4, window) one-hot -> (B, bins, dim): the layer before the heads."""
        if self.flash and not torch.is_autocast_enabled("cuda"):
            raise ModelError("--attention flash runs in bf16 or fp16 only; use --precision bf16 or --attention plain")
        return self.model.final_joined_convs(self.model.get_embs_after_crop(x)).transpose(1, 2)

    def embed(self, batch: list[dict[str, np.ndarray]]) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
        index = torch.from_numpy(np.stack([item["index"] for item in batch]))
        out = self.trunk(self.one_hot(index))
        minus = [i for i, item in enumerate(batch) if "index_rc" in item]
        if minus:
            rc = torch.from_numpy(np.stack([batch[i]["index_rc"] for i in minus]))
            rc_out = self.trunk(self.one_hot(rc)).flip(1)  # bins back in reference order
            out = out.clone()  # inference tensors: write into a copy
            out[minus] = (out[minus] + rc_out) / 2
        return out, {"n_padded": np.array([item["n_padded"] for item in batch], dtype=np.int32)}


class FlashzoiAdapter(BorzoiAdapter):
    options_class = FlashzoiOptions
    options: FlashzoiOptions
    name = "flashzoi"
    flashed = True


# The real architecture at tiny size: borzoi-pytorch fixes the convolution widths (512..1,280 channels, 1,920 before
# the 7,611 human tracks), so only the transformer shrinks: ~36M parameters, 768 bp windows, 8 bins.
TINY_BORZOI = {"dim": 256, "depth": 1, "heads": 2, "attn_dim_key": 16, "attn_dim_value": 32, "bins_to_return": 8}


def write_tiny_borzoi(directory: Path, seed: int = 0, flashed: bool = False, **hparams: Any) -> Path:
    """A tiny random Borzoi (or Flashzoi with `flashed`) in the published layout (config.json + model.safetensors),
    every weight random (`randomize_`, BatchNorm statistics too); `hparams` override TINY_BORZOI's."""
    from borzoi_pytorch.config_borzoi import BorzoiConfig
    from safetensors.torch import save_file

    config = BorzoiConfig(**{**TINY_BORZOI, **hparams}, **({"flashed": True} if flashed else {}))
    config.architectures = ["Borzoi"]  # as `save_pretrained` of the model writes it
    model = randomize_(build_borzoi(config, flash=False), seed)
    directory = Path(directory)
    config.save_pretrained(str(directory))
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, directory / "model.safetensors", {"format": "pt"}
    )
    return directory


def write_tiny_flashzoi(directory: Path, seed: int = 0, **hparams: Any) -> Path:
    """`write_tiny_borzoi` with `flashed: true`: rotary grouped-query attention in the flash-attn layout."""
    return write_tiny_borzoi(directory, seed, flashed=True, **hparams)
