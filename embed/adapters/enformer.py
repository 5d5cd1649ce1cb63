"""Enformer (enformer-pytorch): trunk embeddings (bins, dim) per DNA window; official weights (896, 3072).

Loading works whatever transformers version is installed: read `config.json` into `EnformerConfig`, build
`Enformer(config)`, `load_state_dict(strict=True)` from the weights file (hub id -> snapshot_download, or a
local directory). Quirks kept here: the official weights need TF's gamma positional features
(`use_tf_gamma=True`), which only exist at 1536 bins (196,608 bp); `forward(target_length=...)` would change
the module for good, so it is never passed; `forward` does not move inputs to the model's device.
Input: the window as indices A,C,G,T,N = 0..4 -> one-hot (N = zeros). Optional strand policy for minus-strand
items: the average of the window and its reverse complement (output bins flipped back).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from dogmacache.cache.layout import ExtraArray
from dogmacache.embed.adapters.base import EmbeddingAdapter, ModelError, ModelInfo, register, weights_digest
from dogmacache.embed.genome import check_dna, reverse_complement

OFFICIAL = "EleutherAI/enformer-official-rough"
TF_GAMMA_BINS = 1536  # the only input length (in 128 bp bins) TF's gamma features exist for
_INDEX = np.full(256, 255, dtype=np.uint8)
for _i, _b in enumerate("ACGTN"):
    _INDEX[ord(_b)] = _i
WEIGHT_FILES = ("pytorch_model.bin", "model.safetensors")


def resolve_model_dir(model_path: str, revision: str | None = None) -> tuple[Path, str]:
    """A local directory as is, else a hub id downloaded once (huggingface_hub cache); (dir, revision)."""
    local = Path(model_path)
    if local.is_dir():
        return local, ""
    if local.exists() or model_path.startswith((".", "/")) or model_path.count("/") != 1:
        raise ModelError(f"model path {model_path!r} is neither a local directory nor a hub id (OWNER/NAME)")
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(model_path, revision=revision)
    except Exception as err:  # offline, unknown repo, gated model: one message with the way out
        raise ModelError(
            f"cannot download {model_path!r} ({type(err).__name__}: {err}); download it elsewhere and pass the "
            "local directory with --model-path"
        ) from err
    return Path(path), Path(path).name  # snapshot folders are named by commit hash


def load_state_dict_file(directory: Path) -> tuple[dict[str, torch.Tensor], Path]:
    for name in WEIGHT_FILES:
        path = directory / name
        if path.is_file():
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file

                return load_file(str(path)), path
            return torch.load(path, map_location="cpu", weights_only=True), path
    raise ModelError(f"{directory} holds no weights file ({' or '.join(WEIGHT_FILES)}); is it a model folder?")


@register
class EnformerAdapter(EmbeddingAdapter):
    name = "enformer"
    modalities = ("dna",)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("enformer")
        g.add_argument("--tf-gamma", choices=("auto", "on", "off"), default="auto",
                       help="TF gamma positional features: the official weights need them (auto: on at 196,608 bp)")  # fmt: skip
        g.add_argument("--strand-policy", choices=("forward", "rc-average"), default="forward",
                       help="minus-strand items: reference strand only, or averaged with the reverse complement")  # fmt: skip

    def __init__(self, model_path: str | None, modality: str, options: argparse.Namespace, device: torch.device):
        from enformer_pytorch import Enformer
        from enformer_pytorch.config_enformer import EnformerConfig
        from enformer_pytorch.modeling_enformer import Attention

        directory, revision = resolve_model_dir(model_path or OFFICIAL, getattr(options, "revision", None))
        config_file = directory / "config.json"
        if not config_file.is_file():
            raise ModelError(f"{directory} has no config.json; an Enformer folder holds config.json and the weights")
        raw = json.loads(config_file.read_text())
        config = EnformerConfig(**{k: v for k, v in raw.items() if k not in ("architectures", "transformers_version")})
        model = Enformer(config)
        state, weights_path = load_state_dict_file(directory)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ModelError(f"{weights_path} does not match the Enformer in {config_file}: {err}") from err
        self.bins = int(config.target_length)
        window = getattr(options, "window_bp", None) or (196_608 if self.bins == 896 else 256 * self.bins)
        if window % 128 or window // 128 < self.bins:
            raise ModelError(f"--window-bp {window} must be a multiple of 128 covering at least {self.bins} bins")
        tf_gamma = {"on": True, "off": False}.get(getattr(options, "tf_gamma", "auto"), window // 128 == TF_GAMMA_BINS)
        if tf_gamma and window // 128 != TF_GAMMA_BINS:
            raise ModelError(f"TF gamma features exist only for 196,608 bp windows, not {window}; use --tf-gamma off")
        for module in model.modules():  # the official weights were trained with TF's gamma features
            if isinstance(module, Attention):
                module.use_tf_gamma = tf_gamma
        self.model = model.to(device).eval().requires_grad_(False)
        self.device, self.window, self.tf_gamma = device, window, tf_gamma
        self.strand_policy = getattr(options, "strand_policy", "forward")
        self.dim = int(config.dim) * 2  # the trunk's final pointwise layer doubles the width
        self._info = ModelInfo(
            model=model_path or OFFICIAL,
            model_revision=revision or weights_digest(str(weights_path)),
            layer="trunk", pooling="none", item_shape=(self.bins, self.dim),
            extras=(ExtraArray("n_padded", "int32"),),
            config={"window_bp": window, "tf_gamma": tf_gamma, "strand_policy": self.strand_policy,
                    "bin_bp": 128, "output_span_bp": 128 * self.bins},
        )  # fmt: skip

    def info(self) -> ModelInfo:
        return self._info

    def default_max_tokens(self, device: torch.device) -> int:
        return self.window * 8 if device.type == "cuda" else max(self.window, 1 << 15)  # CPU: 32 kb or one window

    def prepare(self, row: dict[str, Any]) -> dict[str, np.ndarray]:
        seq, n_padded = row["_genome"].window(str(row["chrom"]), int(row["center"]), self.window)
        check_dna(seq, row["id"])
        minus = self.strand_policy == "rc-average" and str(row.get("strand", "+")) == "-"
        out = {"index": _INDEX[np.frombuffer(seq.encode(), dtype=np.uint8)], "n_padded": np.int32(n_padded)}
        if minus:
            out["index_rc"] = _INDEX[np.frombuffer(reverse_complement(seq).encode(), dtype=np.uint8)]
        return out

    def n_tokens(self, prepared: dict[str, np.ndarray]) -> int:
        return len(prepared["index"]) * (2 if "index_rc" in prepared else 1)

    def one_hot(self, index: torch.Tensor) -> torch.Tensor:
        """(B, window) indices -> (B, window, 4) one-hot with N as zeros, on the model's device."""
        return torch.nn.functional.one_hot(index.long().to(self.device), 5)[..., :4].float()

    def embed(self, batch: list[dict[str, np.ndarray]]) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
        index = torch.from_numpy(np.stack([item["index"] for item in batch]))
        out = self.model(self.one_hot(index), return_only_embeddings=True)  # (B, bins, dim)
        minus = [i for i, item in enumerate(batch) if "index_rc" in item]
        if minus:
            rc = torch.from_numpy(np.stack([batch[i]["index_rc"] for i in minus]))
            rc_out = self.model(self.one_hot(rc), return_only_embeddings=True).flip(1)  # bins back in reference order
            out = out.clone()  # inference tensors: write into a copy
            out[minus] = (out[minus] + rc_out) / 2
        return out, {"n_padded": np.array([item["n_padded"] for item in batch], dtype=np.int32)}


TINY_ENFORMER = {"dim": 48, "depth": 1, "heads": 2, "attn_dim_key": 8, "dim_divisible_by": 8, "target_length": 8,
                 "output_heads": {"human": 4}}  # 74k parameters, ~2 kb windows (REFERENCE section 2's test config)


def write_tiny_enformer(directory: Path, seed: int = 0) -> Path:
    """A tiny random Enformer (74k parameters) in the real on-disk layout (config.json + pytorch_model.bin)."""
    from enformer_pytorch import Enformer

    torch.manual_seed(seed)
    model = Enformer.from_hparams(**TINY_ENFORMER)
    model.save_pretrained(str(directory), safe_serialization=False)  # enformer-pytorch needs the .bin format
    return Path(directory)
