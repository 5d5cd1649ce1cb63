"""ESM-C (EvolutionaryScale's ESM Cambrian, 300M and 600M) rebuilt in plain PyTorch: the `esm` package needs
Python >= 3.12 and other torch/transformers pins than this environment, so the encoder is written here under the
module names of `esm`'s `ESMC`, and the published weights file loads into it with `load_state_dict(strict=True)`.
This module owns the architecture, the vocabulary, the weights folder and the tiny writer; the adapter is `esmc`.
Every fact used here is in docs/papers.md#esm-c; `make esmc-reference` checks the outputs against `esm` itself.

Architecture (pre-norm blocks, no biases in projections): token embedding (64 rows) -> n_layers x [x + attn(x)/s,
x + ffn(x)/s] with s = sqrt(n_layers / 36) -> LayerNorm without bias. attn: LayerNorm, one Linear to q, k, v;
LayerNorm (no bias) over the full width of q and of k; rotary positions (base 10,000, halves rotated) per head of
width 64; softmax attention where real tokens see real tokens; out Linear. ffn: LayerNorm, Linear to 2 x hidden,
SiLU(first half) * second half, Linear back; hidden = 8/3 x width rounded up to a multiple of 256.

Folder: the hub repositories hold `data/weights/esmc_<size>_2024_12_v0.pth` (a plain state dict, with the masked-LM
`sequence_head`, rebuilt here so that the load is strict over the whole file) and an empty `config.json`.
Shapes: B items, L tokens (`<cls>` + residues + `<eos>`), D = d_model.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from dogmacache.embed.adapters.weights import load_strict
from dogmacache.embed.random_weights import randomize_
from dogmacache.errors import ModelError
from einops import rearrange
from torch import nn

# esm's sequence vocabulary (ESM-2's order, with "|" for a chain break at 31); the embedding table has 64 rows.
VOCAB = ("<cls>", "<pad>", "<eos>", "<unk>", *"LAGVSERTIDPKQNFYMHWCXBUZO", ".", "-", "|", "<mask>")
TOKEN_ID = {token: i for i, token in enumerate(VOCAB)}
CLS_ID, PAD_ID, EOS_ID = TOKEN_ID["<cls>"], TOKEN_ID["<pad>"], TOKEN_ID["<eos>"]
EMBED_ROWS = 64
HEAD_DIM = 64  # 960 / 15 and 1152 / 18
ROTARY_BASE = 10000.0
WEIGHTS_DIR = "data/weights"


@dataclass(frozen=True)
class EsmcArch:
    """The sizes that shape the weights; the published ones are `SIZES`, a tiny model's are in its config.json."""

    d_model: int
    n_heads: int
    n_layers: int

    def __post_init__(self):
        if min(self.d_model, self.n_heads, self.n_layers) < 1 or self.d_model % self.n_heads:
            raise ModelError(f"ESM-C sizes {self} are not valid: d_model must be a multiple of n_heads, all >= 1")

    @property
    def ffn_hidden(self) -> int:
        return int(((8 / 3) * self.d_model + 255) // 256 * 256)


@dataclass(frozen=True)
class EsmcSize:
    """A published ESM-C: its hub repository, the weights file inside it, and its architecture."""

    hub_id: str
    weights: str  # path inside the repository
    arch: EsmcArch


SIZES = {
    "300m": EsmcSize(
        "EvolutionaryScale/esmc-300m-2024-12", f"{WEIGHTS_DIR}/esmc_300m_2024_12_v0.pth", EsmcArch(960, 15, 30)
    ),
    "600m": EsmcSize(
        "EvolutionaryScale/esmc-600m-2024-12", f"{WEIGHTS_DIR}/esmc_600m_2024_12_v0.pth", EsmcArch(1152, 18, 36)
    ),
}


def tokenize(sequence: str) -> list[int]:
    """`<cls>` + one token per residue + `<eos>`; a letter outside the vocabulary is `<unk>`, as esm's tokenizer."""
    return [CLS_ID, *(TOKEN_ID.get(letter, TOKEN_ID["<unk>"]) for letter in sequence), EOS_ID]


# ---- the encoder, under esm's module names -----------------------------------------------------------------
def rotary_tables(length: int, dim: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """cos and sin (L, dim) of the rotary angles, computed in float32 and cast to `dtype` (as esm does)."""
    inv_freq = 1.0 / ROTARY_BASE ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, L, d): each head's first half and second half rotated as pairs (GPT-NeoX style)."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


class _Attention(nn.Module):
    def __init__(self, arch: EsmcArch):
        super().__init__()
        d = arch.d_model
        self.n_heads = arch.n_heads
        self.layernorm_qkv = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 3 * d, bias=False))
        self.out_proj = nn.Linear(d, d, bias=False)
        self.q_ln = nn.LayerNorm(d, bias=False)
        self.k_ln = nn.LayerNorm(d, bias=False)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, rotary: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """x (B, L, D), allowed (B, 1, L, L) True where a query may see a key -> (B, L, D)."""
        q, k, v = self.layernorm_qkv(x).chunk(3, dim=-1)
        q, k = self.q_ln(q).to(q.dtype), self.k_ln(k).to(q.dtype)
        q, k, v = (rearrange(t, "b l (h d) -> b h l d", h=self.n_heads) for t in (q, k, v))
        cos, sin = rotary
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.out_proj(rearrange(out, "b h l d -> b l (h d)"))


class _SwiGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up


class _Block(nn.Module):
    def __init__(self, arch: EsmcArch):
        super().__init__()
        d, hidden = arch.d_model, arch.ffn_hidden
        self.attn = _Attention(arch)
        self.ffn = nn.Sequential(
            nn.LayerNorm(d), nn.Linear(d, 2 * hidden, bias=False), _SwiGLU(), nn.Linear(hidden, d, bias=False)
        )
        self.scale = math.sqrt(arch.n_layers / 36)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, rotary: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x = x + self.attn(x, allowed, rotary) / self.scale
        return x + self.ffn(x) / self.scale


class _Stack(nn.Module):
    def __init__(self, arch: EsmcArch):
        super().__init__()
        self.blocks = nn.ModuleList(_Block(arch) for _ in range(arch.n_layers))
        self.norm = nn.LayerNorm(arch.d_model, bias=False)


class EsmcModel(nn.Module):
    """ESM-C's encoder and its masked-LM head (`sequence_head`, never used for embeddings); state-dict keys as in
    the published weights file."""

    def __init__(self, arch: EsmcArch):
        super().__init__()
        d = arch.d_model
        self.arch = arch
        self.embed = nn.Embedding(EMBED_ROWS, d)
        self.transformer = _Stack(arch)
        self.sequence_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d), nn.Linear(d, EMBED_ROWS))

    def forward(self, tokens: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """tokens (B, L), `<pad>` after each item's tokens -> (B, L, D) at `layer`: -1 the output after the final
        LayerNorm (esm's `embeddings`), 0 the token embeddings, k in 1..n_layers block k's output (esm's
        `hidden_states[k - 1]`). Positions at `<pad>` hold numbers that mean nothing."""
        keep = tokens != PAD_ID
        allowed = (keep[:, :, None] == keep[:, None, :]).unsqueeze(1)  # real tokens see real tokens (pads: pads)
        x = self.embed(tokens)
        if layer == 0:
            return x
        rotary = rotary_tables(tokens.shape[1], self.arch.d_model // self.arch.n_heads, x.device, x.dtype)
        for k, block in enumerate(self.transformer.blocks, start=1):
            x = block(x, allowed, rotary)
            if k == layer:
                return x
        return self.transformer.norm(x)

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L, 64) masked-LM logits (esm's `sequence_logits`), for checks against `esm`."""
        return self.sequence_head(self.forward(tokens))


# ---- the weights folder ------------------------------------------------------------------------------------
def read_arch(folder: Path, size: str) -> EsmcArch:
    """The architecture of the model in `folder`: the sizes its config.json names (a tiny model writes them), else
    the published `size`'s (the hub repositories' config.json is empty)."""
    path = folder / "config.json"
    raw = {}
    if path.is_file():
        try:
            raw = json.loads(path.read_text() or "{}")
        except json.JSONDecodeError as exc:
            raise ModelError(f"cannot read {path}: {exc}; an ESM-C folder's config.json is {{}} or its sizes") from exc
    keys = [f for f in EsmcArch.__dataclass_fields__ if f in raw]
    if not keys:
        return SIZES[size].arch
    if len(keys) < len(EsmcArch.__dataclass_fields__):
        raise ModelError(f"{path} names {keys} but not all of d_model, n_heads, n_layers; give all three or none")
    return EsmcArch(**{k: int(raw[k]) for k in keys})


def find_weights(folder: Path, size: str) -> Path:
    """The weights file of an ESM-C folder: the published `size`'s path if present, else the one `.pth` file under
    data/weights/. ModelError when there is none, several, or the file of the other published size."""
    published = folder / SIZES[size].weights
    if published.is_file():
        return published
    found = sorted((folder / WEIGHTS_DIR).glob("*.pth"))
    other = [name for name, s in SIZES.items() if any(p.name == Path(s.weights).name for p in found)]
    if other:
        raise ModelError(f"{folder} holds the ESM-C {other[0].upper()} weights; pass --esmc-size {other[0]}")
    if len(found) != 1:
        raise ModelError(
            f"{folder} holds {len(found)} .pth files under {WEIGHTS_DIR}/ ({', '.join(p.name for p in found)}); "
            f"an ESM-C folder holds one, e.g. {SIZES[size].weights} as in {SIZES[size].hub_id}"
        )
    return found[0]


def load_weights(model: EsmcModel, path: Path) -> EsmcModel:
    """Every parameter of `model` from the state dict in `path`, strictly (`weights.load_strict`): a missing,
    unexpected or misshapen key is a one-line `WeightsMismatchError` counting the keys."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise ModelError(f"cannot load {path} as a state dict: {exc}") from exc
    if not isinstance(state, dict):
        raise ModelError(f"{path} holds a {type(state).__name__}, not a state dict")
    what = f"{path} is not an ESM-C checkpoint of {asdict(model.arch)}"
    return load_strict(model, state, what, "--esmc-size, or the sizes in config.json, must match the weights")


# ---- a tiny model in the published layout, for tests and `models make-tiny` ---------------------------------
TINY_ARCH = EsmcArch(d_model=32, n_heads=2, n_layers=2)


def write_tiny_esmc(directory: Path, seed: int = 0, arch: EsmcArch = TINY_ARCH) -> Path:
    """An ESM-C folder in the hub repositories' layout: `data/weights/esmc_tiny.pth` (the full state dict, LM head
    included, every weight drawn by `randomize_`), and a config.json naming the tiny sizes (head width 16)."""
    directory = Path(directory)
    (directory / WEIGHTS_DIR).mkdir(parents=True, exist_ok=True)
    model = randomize_(EsmcModel(arch), seed)
    torch.save(model.state_dict(), directory / WEIGHTS_DIR / "esmc_tiny.pth")
    (directory / "config.json").write_text(json.dumps(asdict(arch), indent=1))
    return directory
