"""scGPT (bowang-lab) read straight from its checkpoint folder: the `scgpt` package does not import with
current torch (torchtext, flash-attn v1), so the encoder is rebuilt here in plain PyTorch.

Folder: `best_model.pt` (a plain state dict), `vocab.json` ({symbol: id}, special tokens included), `args.json`.
- "gene": one gene symbol per row (`id`) -> (D,) = enc_norm(embedding[vocab[id]]), the token embedding CDT uses.
- "context": one expression profile per row (`id` plus one numeric column per gene symbol; tissues or cells)
  -> (D,) = last-layer output at `<cls>`, as scGPT's `tasks.cell_emb` computes cell embeddings.
Both are L2-normalised unless `--scgpt-no-l2`.

Context input, as scGPT's `embed_data` builds it: genes outside the vocabulary are dropped (counted per item),
zeros are dropped, the rest are binned per profile (`bin_expression`), then capped at `max_genes`; `<cls>` is
prepended with value `pad_value`; a batch is padded with `<pad>` and masked. Two choices differ from scGPT, both
for reproducible caches: the cap keeps the `max_genes` highest raw values (ties by column order; scGPT samples at
random), and bin ties are broken by a generator seeded per item (`--scgpt-bin-seed`).

Shapes: B items, L tokens (`<cls>` + genes), D = embsize.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from dogmacache.cache.layout import ExtraArray
from dogmacache.embed.adapters.base import EmbeddingAdapter, ModelError, ModelInfo, register, weights_digest
from dogmacache.errors import InputError
from einops import rearrange
from torch import nn

FILES = ("best_model.pt", "vocab.json", "args.json")
CLS_TOKEN = "<cls>"
REBUILT = ("encoder", "value_encoder", "transformer_encoder")  # top-level modules of scGPT's TransformerModel
# Heads and training-only modules of TransformerModel that never touch the encoder output: ignored if present.
IGNORED = ("decoder", "mvc_decoder", "cls_decoder", "flag_encoder", "batch_encoder",
           "grad_reverse_discriminator")  # fmt: skip
VALUE_CLAMP = 512.0  # ContinuousValueEncoder.max_value: inputs are clipped to at most this
SHOW = 5  # offending names shown in an error message


def _listing(names: list[str]) -> str:
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
        x = self.encoder(genes) + self.value_encoder(values)
        for layer in self.transformer_encoder.layers:
            x = layer(x, keep)
        return x


# ---- checkpoint --------------------------------------------------------------------------------------------
def plain_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """flash-attn names (`self_attn.Wqkv.weight`) -> torch's (`self_attn.in_proj_weight`); others unchanged."""
    return {k.replace("self_attn.Wqkv.", "self_attn.in_proj_"): v for k, v in state.items()}


def load_encoder(
    state: dict[str, torch.Tensor], n_tokens: int, args: ScGPTArgs
) -> tuple[ScGPTEncoder, list[str]]:
    """The encoder with every parameter taken from `state`, and the ignored head modules found there.
    ModelError for any missing, unexpected or misshapen key among the rebuilt modules, or an unknown module."""
    state = plain_keys(state)
    top = {key: key.split(".", 1)[0] for key in state}
    unknown = sorted(k for k, t in top.items() if t not in REBUILT + IGNORED)
    if unknown:
        raise ModelError(
            f"best_model.pt holds keys of modules this adapter neither rebuilds nor knows to be heads: "
            f"{_listing(unknown)}; such a checkpoint (batch norm, other attention) is not supported"
        )
    model = ScGPTEncoder(n_tokens, args)
    kept = {k: v for k, v in state.items() if top[k] in REBUILT}
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(kept)), sorted(set(kept) - set(expected))
    if missing or unexpected:
        pairs = (("missing", missing), ("unexpected", unexpected))
        found = "; ".join(f"{what} {_listing(keys)}" for what, keys in pairs if keys)
        raise ModelError(
            f"best_model.pt does not match args.json (nlayers={args.nlayers}): {found}; "
            "use the best_model.pt, args.json and vocab.json saved together"
        )
    misshapen = [f"{k} {tuple(kept[k].shape)} vs {tuple(v.shape)}"
                 for k, v in expected.items() if kept[k].shape != v.shape]  # fmt: skip
    if misshapen:
        raise ModelError(
            f"best_model.pt shapes differ from what args.json and vocab.json ({n_tokens} tokens) imply "
            f"(checkpoint vs expected): {'; '.join(misshapen[:SHOW])}; use the three files saved together"
        )
    model.load_state_dict(kept, strict=True)
    return model, sorted({t for t in top.values() if t in IGNORED})


def read_vocab(path: Path) -> dict[str, int]:
    try:
        vocab = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {path}: {exc}; it must be scGPT's vocab.json") from exc
    if not isinstance(vocab, dict) or sorted(vocab.values()) != list(range(len(vocab))):
        raise ModelError(f"{path} is not a {{symbol: id}} map with ids 0..n-1; use scGPT's vocab.json")
    return vocab


# ---- binning -----------------------------------------------------------------------------------------------
def bin_expression(values: np.ndarray, n_bins: int, rng: np.random.Generator) -> np.ndarray:
    """scGPT's `preprocess.binning`: (G,) non-negative values -> (G,) int64 bins. Zeros stay 0; non-zero values
    go to bins 1..n_bins-1 by the n_bins-1 quantiles of this profile's non-zero values. A value on a run of
    equal edges (ties) gets a uniformly random bin among them (scGPT's `_digitize(side="both")`)."""
    binned = np.zeros(values.shape, dtype=np.int64)
    nonzero = np.flatnonzero(values)
    if nonzero.size == 0:
        return binned
    x = values[nonzero]
    edges = np.quantile(x, np.linspace(0, 1, n_bins - 1))
    left, right = np.digitize(x, edges), np.digitize(x, edges, right=True)
    binned[nonzero] = np.ceil(rng.random(x.size) * (right - left) + left).astype(np.int64)
    return binned


# ---- the adapter -------------------------------------------------------------------------------------------
@register
class ScGPTAdapter(EmbeddingAdapter):
    """scGPT gene-token embeddings ("gene") and `<cls>` embeddings of expression profiles ("context")."""

    name = "scgpt"
    modalities = ("gene", "context")
    required_columns = {"gene": ("id",), "context": ("id",)}  # context: plus one numeric column per gene

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("scgpt")
        group.add_argument("--scgpt-no-l2", action="store_true", help="keep vectors as they are, not unit length")
        group.add_argument("--scgpt-max-genes", type=int, default=1200,
                           help="context: most genes per profile (+ <cls>), the highest expressed (default 1200)")
        group.add_argument("--scgpt-bin-seed", type=int, default=0,
                           help="context: seed for breaking ties between equal bin edges (default 0)")  # fmt: skip

    def __init__(self, model_path: str, modality: str, options: argparse.Namespace, device: torch.device):
        if modality not in self.modalities:
            raise ModelError(f"scgpt embeds {' or '.join(self.modalities)}, not {modality!r}; fix --modality")
        self.modality = modality
        self.l2 = not getattr(options, "scgpt_no_l2", False)
        self.max_genes = int(getattr(options, "scgpt_max_genes", 1200))
        self.bin_seed = int(getattr(options, "scgpt_bin_seed", 0))
        if self.max_genes < 1:
            raise ModelError(f"--scgpt-max-genes is {self.max_genes}; it must be at least 1")
        folder = Path(model_path)
        if not folder.is_dir():
            raise ModelError(f"scGPT checkpoint folder {model_path!r} not found; download it (e.g. whole-human) "
                             f"and pass its local path; it must hold {', '.join(FILES)}")  # fmt: skip
        absent = [f for f in FILES if not (folder / f).is_file()]
        if absent:
            raise ModelError(f"{folder} lacks {', '.join(absent)}; an scGPT checkpoint folder holds "
                             f"{', '.join(FILES)} (state dict, {{symbol: id}} vocabulary, arguments)")  # fmt: skip
        self.folder = folder
        self.args = ScGPTArgs.from_json(folder / "args.json")
        self.vocab = read_vocab(folder / "vocab.json")
        for token in (CLS_TOKEN, self.args.pad_token):
            if token not in self.vocab:
                raise ModelError(f"{folder / 'vocab.json'} lacks the special token {token!r}; use scGPT's")
        try:
            state = torch.load(folder / "best_model.pt", map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same to the user
            raise ModelError(f"cannot load {folder / 'best_model.pt'} as a state dict: {exc}") from exc
        if not isinstance(state, dict):
            raise ModelError(f"{folder / 'best_model.pt'} holds a {type(state).__name__}, not a state dict")
        model, self.ignored = load_encoder(state, len(self.vocab), self.args)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.revision = weights_digest(str(folder / "best_model.pt"))

    def missing_symbols(self, ids: list[str]) -> list[str]:
        """Symbols (gene ids or profile columns) absent from the vocabulary, in input order, each once."""
        return list(dict.fromkeys(str(i) for i in ids if str(i) not in self.vocab))

    def check_table(self, table) -> None:
        """Gene tokens: every symbol of the table must be in the vocabulary; all absent ones named at once."""
        if self.modality != "gene":
            return
        missing = self.missing_symbols(table["id"].tolist())
        if missing:
            raise ModelError(f"{len(missing)} gene symbols are not in the scGPT vocabulary ({self.folder}): "
                             f"{_listing(missing)}; filter the gene list with the recipe's --rna-vocab")  # fmt: skip

    def info(self) -> ModelInfo:
        context = self.modality == "context"
        config: dict[str, Any] = {"l2_normalised": self.l2, "vocab_size": len(self.vocab), "dtype": "float32",
                                  "ignored_checkpoint_modules": self.ignored}  # fmt: skip
        if context:
            config |= {"n_bins": self.args.n_bins, "max_genes": self.max_genes, "bin_seed": self.bin_seed,
                       "pad_value": self.args.pad_value, "cap_rule": "highest raw values, ties by column order",
                       "missing_in_vocab": "per item: extra array n_missing"}  # fmt: skip
        else:
            config["missing_in_vocab"] = 0  # a symbol outside the vocabulary is an error
        return ModelInfo(
            model=str(self.folder),
            model_revision=self.revision,
            layer="cls_last_layer" if context else "gene_embedding+enc_norm",
            pooling="cls" if context else "token",
            item_shape=(self.args.embsize,),
            extras=(ExtraArray("n_genes", "int32"), ExtraArray("n_missing", "int32")) if context else (),
            config=config,
        )

    def prepare(self, row: dict[str, Any]) -> dict[str, np.ndarray]:
        return self._prepare_profile(row) if self.modality == "context" else self._prepare_symbol(row)

    def _prepare_symbol(self, row: dict[str, Any]) -> dict[str, np.ndarray]:
        symbol = str(row["id"])
        if symbol not in self.vocab:
            raise ModelError(f"gene symbol {symbol!r} is not in the scGPT vocabulary ({self.folder}); "
                             "filter the gene list with the recipe's --rna-vocab")  # fmt: skip
        return {"genes": np.array([self.vocab[symbol]], dtype=np.int64)}

    def _prepare_profile(self, row: dict[str, Any]) -> dict[str, np.ndarray]:
        item, columns = row["id"], [c for c in row if c != "id"]
        try:
            values = np.array([row[c] for c in columns], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(f"profile {item!r} has a non-numeric gene column ({exc}); context rows are `id` "
                             "plus one numeric column per gene symbol") from exc  # fmt: skip
        bad = [c for c, v in zip(columns, values, strict=True) if not (math.isfinite(v) and v >= 0)]
        if bad:
            raise InputError(f"profile {item!r} has negative or non-finite values in {_listing(bad)}; scGPT "
                             "expects non-negative expression (counts, TPM or log1p of them)")  # fmt: skip
        known = np.array([c in self.vocab for c in columns], dtype=bool)
        use = known & (values > 0)
        if not use.any():
            raise InputError(f"profile {item!r} expresses no gene of the scGPT vocabulary; drop the row or "
                             "check that its columns are gene symbols")  # fmt: skip
        genes = np.array([self.vocab[c] for c, u in zip(columns, use, strict=True) if u], dtype=np.int64)
        expression = values[use]
        rng = np.random.default_rng(self.bin_seed)  # per item: the same bins whatever the worker or order
        bins = bin_expression(expression, self.args.n_bins, rng)  # over all expressed genes, as scGPT does
        if genes.size > self.max_genes:
            top = np.sort(np.argsort(-expression, kind="stable")[: self.max_genes])  # keep column order
            genes, bins = genes[top], bins[top]
        return {
            "genes": np.concatenate([[self.vocab[CLS_TOKEN]], genes]).astype(np.int64),
            "values": np.concatenate([[self.args.pad_value], bins]).astype(np.float32),
            "n_genes": np.array(genes.size, dtype=np.int32),
            "n_missing": np.array((~known).sum(), dtype=np.int32),
        }

    def n_tokens(self, prepared: dict[str, np.ndarray]) -> int:
        return len(prepared["genes"])

    @torch.inference_mode()
    def embed(self, batch: list[dict[str, np.ndarray]]) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
        if self.modality == "gene":
            genes = torch.from_numpy(np.concatenate([p["genes"] for p in batch])).to(self.device)
            out = self.model.encoder(genes)  # (B, D)
            return (F.normalize(out, dim=-1) if self.l2 else out), {}
        length = max(len(p["genes"]) for p in batch)
        genes = np.full((len(batch), length), self.vocab[self.args.pad_token], dtype=np.int64)
        values = np.full((len(batch), length), self.args.pad_value, dtype=np.float32)
        keep = np.zeros((len(batch), length), dtype=bool)
        for i, p in enumerate(batch):
            n = len(p["genes"])
            genes[i, :n], values[i, :n], keep[i, :n] = p["genes"], p["values"], True
        inputs = (torch.from_numpy(a).to(self.device) for a in (genes, values, keep))
        out = self.model(*inputs)[:, 0]  # (B, D) at <cls>
        extras = {k: np.stack([p[k] for p in batch]) for k in ("n_genes", "n_missing")}
        return (F.normalize(out, dim=-1) if self.l2 else out), extras


# ---- a tiny checkpoint in the real layout, for tests and `models make-tiny` --------------------------------
def write_tiny_scgpt(directory: Path, genes: list[str], seed: int = 0) -> Path:
    """A random scGPT checkpoint folder laid out like whole-human: flash-attn `Wqkv` keys, the decoder, MVC
    decoder and flag encoder a real checkpoint carries, a vocabulary with `<pad>`, `<cls>`, `<eoc>` after the
    genes, and args.json with small sizes (embsize 32, 2 layers, 4 heads, d_hid 64)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    args = {"embsize": 32, "nlayers": 2, "nheads": 4, "d_hid": 64, "dropout": 0.2, "n_bins": 51,
            "pad_token": "<pad>", "pad_value": -2, "mask_value": -1, "input_style": "binned",
            "input_emb_style": "continuous", "max_seq_len": 1200, "n_layers_cls": 3, "fast_transformer": True,
            "USE_GENERATIVE_TRAINING": True, "MVC": True}  # fmt: skip
    vocab = {g: i for i, g in enumerate(dict.fromkeys([*genes, "<pad>", CLS_TOKEN, "<eoc>"]))}
    arch = ScGPTArgs(**{k: args[k] for k in ("embsize", "nlayers", "nheads", "d_hid")})
    d = arch.embsize
    shapes = {k: tuple(v.shape) for k, v in ScGPTEncoder(len(vocab), arch).state_dict().items()}
    shapes |= {"flag_encoder.weight": (2, d), "decoder.fc.0.weight": (d, d), "decoder.fc.0.bias": (d,),
               "decoder.fc.2.weight": (d, d), "decoder.fc.2.bias": (d,), "decoder.fc.4.weight": (1, d),
               "decoder.fc.4.bias": (1,), "mvc_decoder.gene2query.weight": (d, d),
               "mvc_decoder.gene2query.bias": (d,), "mvc_decoder.W.weight": (d, d)}  # fmt: skip
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
