"""scGPT (bowang-lab) read straight from its checkpoint folder: the `scgpt` package does not import with
current torch (torchtext, flash-attn v1), so the encoder is rebuilt here in plain PyTorch. This module owns the
checkpoint (files, arguments, vocabulary, strict loading) and the encoder; the two adapters over it are
`scgpt_gene` (gene tokens) and `scgpt_context` (expression profiles -> `<cls>` embeddings).

Folder: `best_model.pt` (a plain state dict), `vocab.json` ({symbol: id}, special tokens included), `args.json`.

Shapes: B items, L tokens (`<cls>` + genes), D = embsize.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from dogmacache.embed.adapters.weights import ModelSource, hub_snapshot, load_strict, recorded_identity
from dogmacache.embed.random_weights import randomize_
from dogmacache.errors import ModelError
from einops import rearrange
from torch import nn

FILES = ("best_model.pt", "vocab.json", "args.json")
CLS_TOKEN = "<cls>"
REBUILT = ("encoder", "value_encoder", "transformer_encoder")  # top-level modules of scGPT's TransformerModel
# Heads and training-only modules of TransformerModel that never touch the encoder output: ignored if present.
IGNORED = ("decoder", "mvc_decoder", "cls_decoder", "flag_encoder", "batch_encoder", "grad_reverse_discriminator")
VALUE_CLAMP = 512.0  # ContinuousValueEncoder.max_value: inputs are clipped to at most this
SHOW = 5  # offending names shown in an error message
L2_FLAG = {
    "flags": ("--scgpt-no-l2",),
    "action": "store_false",
    "help": "scgpt: keep vectors as they are, not unit length",
}


def listing(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:SHOW])
    return shown + (f" ... ({len(names)} in all)" if len(names) > SHOW else f" ({len(names)})")


@dataclass(frozen=True)
class ScGPTArgs:
    """The part of `args.json` that changes the numbers. Architecture keys are required (a wrong `nheads`
    would load without error and give other numbers); the rest default to the whole-human checkpoint's."""

    embsize: int
    nlayers: int
    nheads: int
    d_hid: int
    n_bins: int = 51  # value bins, bin 0 = zero expression
    pad_token: str = "<pad>"
    pad_value: float = -2.0  # value at `<cls>` and at padding
    input_emb_style: str = "continuous"  # the only value encoder rebuilt here
    input_style: str = "binned"  # the only input preparation done here
    pre_norm: bool = False  # whole-human layers are post-norm

    @classmethod
    def from_json(cls, path: Path) -> ScGPTArgs:
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"cannot read {path}: {exc}; it must be scGPT's args.json") from exc
        missing = [k for k in ("embsize", "nlayers", "nheads", "d_hid") if k not in raw]
        if missing:
            raise ModelError(f"{path} lacks {', '.join(missing)}; use the args.json saved with best_model.pt")
        args = cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})
        unsupported = {
            f"input_emb_style {args.input_emb_style!r} (only 'continuous')": args.input_emb_style != "continuous",
            f"input_style {args.input_style!r} (only 'binned')": args.input_style != "binned",
            "pre_norm=true (only post-norm layers)": args.pre_norm,
            "domain-specific batch norm": bool(raw.get("DSBN") or raw.get("domain_spec_batchnorm")),
            f"embsize {args.embsize} not divisible by nheads {args.nheads}": args.embsize % args.nheads != 0,
        }
        bad = [what for what, is_bad in unsupported.items() if is_bad]
        if bad:
            raise ModelError(f"{path}: {'; '.join(bad)} is not supported by the scgpt adapter")
        return args


# ---- the encoder, rebuilt under scGPT's module names -------------------------------------------------------
class _GeneEncoder(nn.Module):
    def __init__(self, n_tokens: int, d_model: int):
        super().__init__()
        self.embedding = nn.Embedding(n_tokens, d_model)
        self.enc_norm = nn.LayerNorm(d_model)

    def forward(self, genes: torch.Tensor) -> torch.Tensor:
        return self.enc_norm(self.embedding(genes))


class _ValueEncoder(nn.Module):
    """scGPT's ContinuousValueEncoder: Linear(1 -> D), ReLU, Linear(D -> D), LayerNorm (dropout: off in eval)."""

    def __init__(self, d_model: int):
        super().__init__()
        self.linear1 = nn.Linear(1, d_model)
        self.linear2 = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, values: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, L, D)
        x = values.unsqueeze(-1).clamp(max=VALUE_CLAMP)
        return self.norm(self.linear2(F.relu(self.linear1(x))))


class _SelfAttention(nn.Module):
    """nn.MultiheadAttention's parameters (q, k, v rows stacked in `in_proj_weight`, heads contiguous: the
    layout of flash-attn's `Wqkv` too), computed with scaled_dot_product_attention."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), keep (B, L) True at real tokens -> (B, L, D)."""
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = rearrange(qkv, "b l (three h d) -> three b h l d", three=3, h=self.n_heads)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        return self.out_proj(rearrange(out, "b h l d -> b l (h d)"))


class _EncoderLayer(nn.Module):
    """Post-norm, ReLU feed-forward, LayerNorm eps 1e-5: torch's TransformerEncoderLayer defaults."""

    def __init__(self, d_model: int, n_heads: int, d_hid: int):
        super().__init__()
        self.self_attn = _SelfAttention(d_model, n_heads)
        self.linear1 = nn.Linear(d_model, d_hid)
        self.linear2 = nn.Linear(d_hid, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.self_attn(x, keep))
        return self.norm2(x + self.linear2(F.relu(self.linear1(x))))


class _LayerStack(nn.Module):
    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)


class ScGPTEncoder(nn.Module):
    """Gene encoder + value encoder, summed, then the transformer layers; keys as in scGPT's state dict."""

    def __init__(self, n_tokens: int, args: ScGPTArgs):
        super().__init__()
        d = args.embsize
        self.encoder = _GeneEncoder(n_tokens, d)
        self.value_encoder = _ValueEncoder(d)
        layers = [_EncoderLayer(d, args.nheads, args.d_hid) for _ in range(args.nlayers)]
        self.transformer_encoder = _LayerStack(layers)

    def forward(self, genes: torch.Tensor, values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """genes (B, L) token ids, values (B, L) binned values, keep (B, L) bool -> (B, L, D)."""
        return self.hidden_states(genes, values, keep, len(self.transformer_encoder.layers))[-1]

    def hidden_states(
        self, genes: torch.Tensor, values: torch.Tensor, keep: torch.Tensor, upto: int
    ) -> list[torch.Tensor]:
        """The summed encodings (state 0) and the output of each of the first `upto` layers (state k = layer k-1's
        output), each (B, L, D)."""
        states = [self.encoder(genes) + self.value_encoder(values)]
        for layer in self.transformer_encoder.layers[:upto]:
            states.append(layer(states[-1], keep))
        return states


# ---- checkpoint --------------------------------------------------------------------------------------------
def plain_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """flash-attn names (`self_attn.Wqkv.weight`) -> torch's (`self_attn.in_proj_weight`); others unchanged."""
    return {k.replace("self_attn.Wqkv.", "self_attn.in_proj_"): v for k, v in state.items()}


def load_encoder(state: dict[str, torch.Tensor], n_tokens: int, args: ScGPTArgs) -> tuple[ScGPTEncoder, list[str]]:
    """The encoder with every parameter taken from `state`, and the ignored head modules found there.
    ModelError for any missing, unexpected or misshapen key among the rebuilt modules, or an unknown module."""
    state = plain_keys(state)
    top = {key: key.split(".", 1)[0] for key in state}
    unknown = sorted(k for k, t in top.items() if t not in REBUILT + IGNORED)
    if unknown:
        raise ModelError(
            f"best_model.pt holds keys of modules this adapter neither rebuilds nor knows to be heads: "
            f"{listing(unknown)}; such a checkpoint (batch norm, other attention) is not supported"
        )
    model = ScGPTEncoder(n_tokens, args)
    kept = {k: v for k, v in state.items() if top[k] in REBUILT}
    what = f"best_model.pt does not match args.json (nlayers={args.nlayers}) and vocab.json ({n_tokens} tokens)"
    load_strict(model, kept, what, "use the best_model.pt, args.json and vocab.json saved together")
    return model, sorted({t for t in top.values() if t in IGNORED})


def read_vocab(path: Path) -> dict[str, int]:
    try:
        vocab = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {path}: {exc}; it must be scGPT's vocab.json") from exc
    if not isinstance(vocab, dict) or sorted(vocab.values()) != list(range(len(vocab))):
        raise ModelError(f"{path} is not a {{symbol: id}} map with ids 0..n-1; use scGPT's vocab.json")
    return vocab


# ---- the checkpoint folder --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScGPTCheckpoint:
    """A loaded checkpoint folder: the encoder (frozen, eval mode, on its device) and what came with it."""

    folder: Path
    args: ScGPTArgs
    vocab: dict[str, int]  # symbol -> token id, special tokens included
    model: ScGPTEncoder
    ignored: list[str]  # head modules present in best_model.pt and not rebuilt
    model_id: str  # portable identity: the hub id for a hub snapshot, else the folder's name
    revision: str  # the hub commit, else "sha256:<hex>" of best_model.pt
    files: dict[str, str]  # {file name: sha256} of best_model.pt, vocab.json, args.json

    @functools.cached_property
    def genes(self) -> dict[str, int]:
        """The vocabulary's gene symbols and their token ids: every entry but the special tokens, which scGPT writes
        in angle brackets (`<pad>`, `<cls>`, `<eoc>`)."""
        return {k: v for k, v in self.vocab.items() if not (k.startswith("<") and k.endswith(">"))}

    def missing_symbols(self, ids: list[str]) -> list[str]:
        """Symbols (gene ids or profile columns) that are no gene of the vocabulary, in input order, each once."""
        return list(dict.fromkeys(str(i) for i in ids if str(i) not in self.genes))

    def special_tokens(self, ids: list[str]) -> list[str]:
        """Those of `ids` that are special tokens of the vocabulary (`<pad>`, `<cls>`, ...), each once."""
        return list(dict.fromkeys(str(i) for i in ids if str(i) in self.vocab and str(i) not in self.genes))


def load_checkpoint(
    model_path: str | None, device: torch.device, revision: str | None = None, random_init: int | None = None
) -> ScGPTCheckpoint:
    """Read and strictly load an scGPT checkpoint folder; ModelError naming what is missing or wrong. With
    `random_init` (`--random-init SEED`) best_model.pt is not read: the encoder args.json and vocab.json describe
    gets every weight from `randomize_(encoder, SEED)`."""
    if revision:
        raise ModelError(f"scgpt reads a local checkpoint folder; --revision {revision!r} does not apply: drop it")
    if not model_path or not Path(model_path).is_dir():
        raise ModelError(
            f"scGPT checkpoint folder {model_path!r} not found; download it (e.g. whole-human) "
            f"and pass its local path with --model-path; it must hold {', '.join(FILES)}"
        )
    folder = Path(model_path)
    needed = FILES if random_init is None else FILES[1:]
    absent = [f for f in needed if not (folder / f).is_file()]
    if absent:
        raise ModelError(
            f"{folder} lacks {', '.join(absent)}; an scGPT checkpoint folder holds "
            f"{', '.join(FILES)} (state dict, {{symbol: id}} vocabulary, arguments)"
        )
    args = ScGPTArgs.from_json(folder / "args.json")
    vocab = read_vocab(folder / "vocab.json")
    for token in (CLS_TOKEN, args.pad_token):
        if token not in vocab:
            raise ModelError(f"{folder / 'vocab.json'} lacks the special token {token!r}; use scGPT's")
    if random_init is not None:
        model, ignored, weights = randomize_(ScGPTEncoder(len(vocab), args), random_init), [], None
    else:
        weights = folder / "best_model.pt"
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same to the user
            raise ModelError(f"cannot load {weights} as a state dict: {exc}") from exc
        if not isinstance(state, dict):
            raise ModelError(f"{weights} holds a {type(state).__name__}, not a state dict")
        model, ignored = load_encoder(state, len(vocab), args)
    model = model.to(torch.device(device)).eval().requires_grad_(False)
    source = ModelSource(folder, *(hub_snapshot(folder) or (None, None)))
    return ScGPTCheckpoint(folder, args, vocab, model, ignored, *recorded_identity(source, weights, random_init))


def checkpoint_config(checkpoint: ScGPTCheckpoint) -> dict:
    """Manifest facts both scGPT adapters record."""
    return {"vocab_size": len(checkpoint.vocab), "ignored_checkpoint_modules": checkpoint.ignored}


# ---- a tiny checkpoint in the real layout, for tests and `models make-tiny` --------------------------------
def write_tiny_scgpt(directory: Path, genes: list[str], seed: int = 0) -> Path:
    """A random scGPT checkpoint folder laid out like whole-human: flash-attn `Wqkv` keys, the decoder, MVC
    decoder and flag encoder a real checkpoint carries, a vocabulary with `<pad>`, `<cls>`, `<eoc>` after the
    genes, and args.json with small sizes (embsize 32, 2 layers, 4 heads, d_hid 64)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    args = {
        "embsize": 32,
        "nlayers": 2,
        "nheads": 4,
        "d_hid": 64,
        "dropout": 0.2,
        "n_bins": 51,
        "pad_token": "<pad>",
        "pad_value": -2,
        "mask_value": -1,
        "input_style": "binned",
        "input_emb_style": "continuous",
        "max_seq_len": 1200,
        "n_layers_cls": 3,
        "fast_transformer": True,
        "USE_GENERATIVE_TRAINING": True,
        "MVC": True,
    }
    vocab = {g: i for i, g in enumerate(dict.fromkeys([*genes, "<pad>", CLS_TOKEN, "<eoc>"]))}
    arch = ScGPTArgs(**{k: args[k] for k in ("embsize", "nlayers", "nheads", "d_hid")})
    d = arch.embsize
    shapes = {k: tuple(v.shape) for k, v in ScGPTEncoder(len(vocab), arch).state_dict().items()}
    shapes |= {
        "flag_encoder.weight": (2, d),
        "decoder.fc.0.weight": (d, d),
        "decoder.fc.0.bias": (d,),
        "decoder.fc.2.weight": (d, d),
        "decoder.fc.2.bias": (d,),
        "decoder.fc.4.weight": (1, d),
        "decoder.fc.4.bias": (1,),
        "mvc_decoder.gene2query.weight": (d, d),
        "mvc_decoder.gene2query.bias": (d,),
        "mvc_decoder.W.weight": (d, d),
    }
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        gain = 1.0 if "norm" in key and key.endswith("weight") else 0.0  # LayerNorm gains near 1
        noise = 0.2 * torch.randn(shape, generator=generator)
        state[key.replace("self_attn.in_proj_", "self_attn.Wqkv.")] = gain + noise
    torch.save(state, directory / "best_model.pt")
    (directory / "vocab.json").write_text(json.dumps(vocab, indent=1))
    (directory / "args.json").write_text(json.dumps(args, indent=1))
    return directory
