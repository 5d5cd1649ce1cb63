"""`dogmacache models make-tiny DIR`: small random models of every supported architecture, in their real
on-disk layouts, so tests and the offline demo load them through the same code path as real weights.

Every weight is random (`randomize_`): the libraries initialise some to constants (Enformer's attention output
projection to zero, biases to zero, norm gains to one, BatchNorm statistics to 0 and 1), and a tiny model with
those left in place computes as if the layer were absent, so a bug in it (a wrong TF-gamma setting, say) would
pass every test."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

ESM2_TOKENS = [
    "<cls>",
    "<pad>",
    "<eos>",
    "<unk>",
    *"LAGVSERTIDPKQNFYMHWCXBUZO",
    ".",
    "-",
    "<null_1>",
    "<mask>",
]
NT_TOKENS = [
    "<unk>",
    "<pad>",
    "<mask>",
    "<cls>",
    "<eos>",
    "<bos>",
    *("".join(k) for k in itertools.product("ATCG", repeat=6)),
    "A",
    "T",
    "C",
    "G",
    "N",
]
# The demo recipe's 36 gene symbols (data_recipes/make_demo_data.py, N_GENES): `models make-tiny`'s default
# scGPT vocabulary, so the demo's tables embed without a missing symbol. A test keeps the two in step.
DEMO_GENES = tuple(f"DEMO{i + 1:02d}" for i in range(36))


def randomize_(model: nn.Module, seed: int, gain: float = 1.0) -> nn.Module:
    """Draw every weight of `model` at random (in place): matrices, kernels and embeddings ~ N(0, gain / fan_in),
    biases ~ N(0, 0.1^2), 1-d gains 1 + N(0, 0.1^2); every BatchNorm gets random running statistics.

    Measured on the tiny Enformer at 2 kb and at 196 kb (std over bins / mean magnitude): with the libraries' own
    initialisation its outputs varied by 0.01-0.05 % across positions (the zeroed attention output and the small
    kernels wash the input out); with gain 1 by 0.7-1 %, which keeps the demo's GC-box signal learnable;
    gain 2 (He's scale) gives ~40 %, for tests that need every layer to matter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float32)
            if p.ndim >= 2:
                p.copy_(noise * math.sqrt(gain / math.prod(p.shape[1:])))
            else:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * noise)
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=generator))
    return model


def _write_esm(directory: Path, tokens: list[str], special: dict, seed: int, max_positions: int) -> Path:
    from transformers import EsmConfig, EsmModel, EsmTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(tokens) + "\n")
    tokenizer = EsmTokenizer(str(directory / "vocab.txt"), **special)
    config = EsmConfig(
        vocab_size=len(tokens),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=max_positions,
        position_embedding_type="rotary",
        emb_layer_norm_before=False,
        token_dropout=True,
        pad_token_id=tokens.index("<pad>"),
        mask_token_id=tokens.index("<mask>"),
    )
    randomize_(EsmModel(config, add_pooling_layer=False), seed).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


def write_tiny_esm2(directory: Path, seed: int = 0) -> Path:
    """ESM-2 layout: 33-token vocabulary, rotary positions, final LayerNorm after the last layer."""
    return _write_esm(directory, ESM2_TOKENS, {}, seed, max_positions=1026)


def write_tiny_nucleotide_transformer(directory: Path, seed: int = 0) -> Path:
    """NT v1 layout: ESM architecture with a 6-mer vocabulary (+ single nucleotides for the remainder)."""
    special = {
        "cls_token": "<cls>",
        "pad_token": "<pad>",
        "mask_token": "<mask>",
        "eos_token": None,
        "unk_token": "<unk>",
        "bos_token": "<bos>",
    }
    return _write_esm(directory, NT_TOKENS, special, seed, max_positions=1002)


def make_tiny(root: str | Path, genes: Sequence[str] = DEMO_GENES, seed: int = 0) -> dict[str, Path]:
    """Every tiny model under `root`, by registry name; `genes` make up the tiny scGPT's vocabulary
    (plus its special tokens)."""
    from dogmacache.embed.adapters.enformer import write_tiny_enformer
    from dogmacache.embed.adapters.scgpt_model import write_tiny_scgpt

    root = Path(root)
    return {
        "enformer": write_tiny_enformer(root / "enformer", seed),
        "esm2": write_tiny_esm2(root / "esm2", seed),
        "nucleotide-transformer": write_tiny_nucleotide_transformer(root / "nucleotide-transformer", seed),
        "scgpt": write_tiny_scgpt(root / "scgpt", list(genes), seed),
    }
