"""ESM-family transformers from Hugging Face: ESM-2 (proteins) and the Nucleotide Transformer (DNA/RNA).

Both are `EsmModel`s with a tokenizer that adds `<cls>` (and for ESM-2 `<eos>`); outputs per token (T, D).
Layer -1 is `last_hidden_state`, which is after the final LayerNorm; `--layer k` is hidden state k, counted
from 0 = the embedding output: the earlier ones are not normalised, the last (k = the number of layers) is
layer -1 again. One forward pass gives any set of them (`embed_layers`, `--layers`). Pooling "mean" averages
real tokens only (`<cls>`, `<eos>`, `<pad>` masked); pooling "none" stores per-token outputs padded to a fixed
length with a `mask`.
Truncation is stated in the manifest: ESM-2 keeps 1,022 residues (+2 specials); NT v1 1,000 tokens of 6-mers.
NT v2 checkpoints need `trust_remote_code` (turned on when the folder's config has an `auto_map`).
"""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch
from dogmacache.cache.layout import ExtraArray
from dogmacache.embed.adapters.base import (
    LAYER_FLAG,
    STRAND_POLICY_FLAG,
    WINDOW_BP_FLAG,
    AdapterOptions,
    LayeredAdapter,
    ModelInfo,
)
from dogmacache.embed.adapters.tokens import padded_ids, pool_tokens, real_mask, token_extras
from dogmacache.embed.adapters.weights import (
    SAVED_TOGETHER,
    damaged_weights,
    key_differences,
    load_state_dict_file,
    read_config_json,
    recorded_identity,
    resolve_model_dir,
    shapes_differ,
    state_differences,
    weights_file,
)
from dogmacache.embed.digest import digest_header, item_digest
from dogmacache.embed.genome import check_dna
from dogmacache.embed.random_weights import randomize_
from dogmacache.embed.shapes import length_bucket
from dogmacache.errors import InputError, ModelError, WeightsMismatchError

PROTEIN_LETTERS = frozenset("ACDEFGHIKLMNPQRSTVWYXBZUO")
STANDARD_AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"  # a protein model's tokenizer has a token for each
POOLINGS = ("mean", "cls", "none")
POOLING_FLAG = {
    "flags": ("--pooling",),
    "choices": POOLINGS,
    "help": "mean over real tokens, the <cls> token, or none (per-token, padded, with a mask)",
}
ESM2_MAX_TOKENS = 1024  # 1,022 residues + <cls> + <eos>
# ESM-family position ids start at padding_idx + 1 = 2 (transformers' EsmEmbeddings), so a config's
# max_position_embeddings holds 2 more than the tokens a sequence may have: ESM-2's 1,026 for 1,024, NT v1's 1,002
# for 1,000, NT v2's 2,050 for 2,048
POSITION_OFFSET = 2


_PROTEIN_BYTES = np.zeros(256, dtype=bool)
_PROTEIN_BYTES[[ord(letter) for letter in PROTEIN_LETTERS]] = True


def _protein_text(row: dict[str, Any]) -> str:
    """The row's protein as `clean_protein` reads it: upper case, surrounding space and a final stop (*) removed."""
    return str(row["sequence"]).strip().upper().rstrip("*")


def _all_amino_acids(text: str) -> bool:
    """Whether every letter of `text` is one ESM-2 reads (a byte-table lookup)."""
    return bool(_PROTEIN_BYTES[np.frombuffer(text.encode("ascii", errors="replace"), dtype=np.uint8)].all())


def clean_protein(row: dict[str, Any]) -> str:
    """The item's protein sequence, upper case, a final stop (*) removed; InputError for an empty sequence or a
    letter that is no amino acid."""
    seq = _protein_text(row)
    if seq and _all_amino_acids(seq):
        return seq  # a byte-table lookup: the set of a protein's letters cost more than tokenising it
    bad = set(seq) - PROTEIN_LETTERS
    if not seq or bad:
        raise InputError(
            f"protein {row['id']!r}: "
            + (f"characters {sorted(bad)[:5]} are not amino acids" if seq else "empty")
            + "; clean the sequence in the recipe (ESM-2 reads the 20 standard letters and X, B, Z, U, O)"
        )
    return seq


_BASE = np.full(256, -1, dtype=np.int64)  # A, C, G, T -> 0..3, N -> 4, anything else -1
for _k, _letter in enumerate("ACGTN"):
    _BASE[ord(_letter)] = _k
_PLACES = 4 ** np.arange(5, -1, -1, dtype=np.int64)  # a 6-mer's bases as one base-4 number, first base first


def _dna_token_ids(seq: str, table: np.ndarray, around: tuple[np.ndarray, np.ndarray]) -> np.ndarray | None:
    """The ids a 6-mer tokenizer gives `seq` (upper-case A, C, G, T, N), its specials around them: from the left,
    each 6 bases without N are one token and every other base (an N, or one of the last 1-5 before an N or the
    end) a token of its own; `table` from `_kmer_ids`. None for any other letter (the tokenizer decides)."""
    codes = _BASE[np.frombuffer(seq.encode("ascii", errors="replace"), dtype=np.uint8)]
    if (codes < 0).any():
        return None
    n = codes == 4
    bounds = [0, *(np.flatnonzero(n[1:] != n[:-1]) + 1).tolist(), len(codes)]  # runs of N, and of A, C, G, T
    pieces = [around[0]]
    for a, b in zip(bounds[:-1], bounds[1:], strict=False):
        if a == b:
            continue
        if n[a]:
            pieces.append(np.full(b - a, table[4100]))
            continue
        whole = a + (b - a) // 6 * 6
        pieces.append(table[codes[a:whole].reshape(-1, 6) @ _PLACES])
        pieces.append(table[4096 + codes[whole:b]])
    pieces.append(around[1])
    return np.concatenate(pieces)


@dataclass(frozen=True)
class EsmOptions(AdapterOptions):
    layer: int = -1  # hidden layer: -1 the last (after the final LayerNorm), k counted from 0 = embedding output
    pooling: str = "mean"  # mean over real tokens | cls (the <cls> token) | none (per token, padded, with a mask)
    max_length: int | None = None  # tokens kept per item, specials included; None: the model's sequence limit
    special_tokens: ClassVar[tuple[str, ...]] = ("<cls>", "<eos>")  # what the tokenizer adds around a sequence

    flags: ClassVar[dict[str, dict[str, Any]]] = {
        "layer": LAYER_FLAG,
        "pooling": POOLING_FLAG,
        "max_length": {
            "flags": ("--max-length",),
            "type": int,
            "help": "tokens kept per item incl. specials (default: esm2 1,024 = 1,022 residues; nt 1,000, which a v2 "
            "model may raise to 2,048; esmc 2,048; never above the model's limit); longer items are cut, counted in "
            "the cache's n_truncated and the run's summary",
        },
    }

    def __post_init__(self):
        self._check_choice("pooling", POOLINGS)
        least = len(self.special_tokens) + 1
        if self.max_length is not None and self.max_length < least:  # 0 was read as "the default", 1-2 as no residue
            raise InputError(
                f"--max-length {self.max_length} keeps no token of the sequence: it counts the special tokens "
                f"({', '.join(self.special_tokens)}) too; expected at least {least}, or leave it out for the model's "
                "limit"
            )
        object.__setattr__(self, "layer", layer_number(self.layer))

    def resolve(self, default_length: int, position_limit: int) -> Self:
        """`max_length` None becomes `default_length` (within the model's `position_limit`); a longer one asked for
        is refused (both counted with special tokens); the layer is checked against the model by the adapter."""
        if self.max_length is not None and self.max_length > position_limit:
            raise InputError(
                f"--max-length {self.max_length} is above this model's limit of {position_limit} tokens (special "
                f"tokens included: its config.json's max_position_embeddings, {position_limit + POSITION_OFFSET}, "
                f"less the {POSITION_OFFSET} ids ESM-family position ids start after); give at most "
                f"{position_limit}, or leave it out"
            )
        return replace(self, max_length=self.max_length or min(default_length, position_limit))


@dataclass(frozen=True)
class NucleotideTransformerOptions(EsmOptions):
    special_tokens: ClassVar[tuple[str, ...]] = ("<cls>",)
    window_bp: int | None = None  # genome windows (--modality dna) need it; e.g. 5994 for v1

    strand_policy: str = "forward"  # genome windows are read on the reference strand, whatever the item's strand
    keep: str = "start"  # a sequence past max_length keeps its start, or its end (a cDNA's 3' end, as IsoFormer)

    flags: ClassVar[dict[str, dict[str, Any]]] = {
        **EsmOptions.flags,
        "window_bp": WINDOW_BP_FLAG,
        "strand_policy": STRAND_POLICY_FLAG,
        "keep": {
            "flags": ("--keep",),
            "choices": ("start", "end"),
            "help": "nucleotide-transformer: which end of a sequence "
            "longer than --max-length is kept (end: a cDNA's "
            "3' end, as IsoFormer crops)",
        },
    }

    def __post_init__(self):
        super().__post_init__()
        self._check_choice("strand_policy", ("forward",))
        self._check_choice("keep", ("start", "end"))


def layer_number(layer: int | str) -> int:
    """`--layer` as an ESM-family layer number (the flag is text for every model); InputError for other text."""
    if isinstance(layer, str):
        try:
            return int(layer)
        except ValueError:
            raise InputError(
                f"--layer {layer!r} is not a layer number; ESM-family layers are -1 (the last, after the final "
                "LayerNorm) or k (0 = the embedding output)"
            ) from None
    return layer


# The masked-LM head that ESM-2 and Nucleotide Transformer checkpoints carry; embeddings never pass through it.
IGNORED_HEADS = ("lm_head.",)


def loading_what(directory) -> str:
    """Which weights do not fit which config, for a `WeightsMismatchError`."""
    return f"{weights_file(Path(directory)) or directory} does not match the model in {Path(directory) / 'config.json'}"


_SIZE_MISMATCH = re.compile(
    r"size mismatch for (\S+): copying a param with shape torch\.Size\(\[([\d, ]*)\]\) from checkpoint, "
    r"the shape in current model is torch\.Size\(\[([\d, ]*)\]\)"
)


def torch_size_mismatches(text: str) -> str:
    """torch's size-mismatch error in a phrase: transformers loads module by module and stops at the first that
    does not fit, so the key is named inside that module and others may follow. Its first line where it names no
    shapes."""
    found = [
        shapes_differ(
            key, tuple(int(n) for n in a.split(",") if n.strip()), tuple(int(n) for n in b.split(",") if n.strip())
        )
        for key, a, b in _SIZE_MISMATCH.findall(text)
    ]
    return f"weights of another shape (the first found: {found[0]})" if found else text.strip().splitlines()[0][:300]


def esm_key_differences(directory: Path) -> str | None:
    """Every key by which the folder's weights file differs from the `EsmModel` its config.json describes (built
    without memory), counted as every adapter counts them; None where the file cannot be read that way. transformers
    names only the first module that does not fit, with a key relative to it."""
    from transformers import EsmConfig, EsmModel

    try:
        state, _ = load_state_dict_file(Path(directory))
        with torch.device("meta"):
            expected = EsmModel(EsmConfig.from_pretrained(str(directory)), add_pooling_layer=False).state_dict()
    except Exception:  # noqa: BLE001 - then the first mismatch transformers named is what is said
        return None
    state = {k.removeprefix("esm."): v for k, v in state.items() if not k.startswith(IGNORED_HEADS)}
    return state_differences(expected, state) or None


def check_loading(directory, info: dict[str, list]) -> list[str]:
    """Strict loading on top of transformers' lenient one: a missing key (which it would fill with random
    weights), a key of the checkpoint the model does not have, or a shape mismatch is a one-line
    `WeightsMismatchError` counting the keys, as every adapter's (`weights.load_strict`). Returns the known heads
    that were present and skipped."""
    unexpected = [k for k in info.get("unexpected_keys", []) if not k.startswith(IGNORED_HEADS)]
    misshapen = [shapes_differ(*m) if len(m) == 3 else str(m[0]) for m in info.get("mismatched_keys", [])]
    differences = key_differences(sorted(info.get("missing_keys", [])), sorted(unexpected), misshapen)
    what = loading_what(directory)
    if differences:
        raise WeightsMismatchError(what, differences, SAVED_TOGETHER)
    if info.get("error_msgs"):
        raise WeightsMismatchError(
            what, "; ".join(str(e).splitlines()[0] for e in info["error_msgs"][:3]), SAVED_TOGETHER
        )
    return sorted({k.split(".")[0] for k in info.get("unexpected_keys", [])} - {k.split(".")[0] for k in unexpected})


class _EsmFamily(LayeredAdapter):
    default_model: str
    max_sequence_length: int  # tokens per item by default, special tokens included (the family's limit)
    options: EsmOptions

    def _check_vocabulary(self, directory: Path) -> None:
        """A ModelError where the folder's tokenizer is another member's of the family (one architecture)."""

    def __init__(
        self,
        model_path: str | None,
        options: EsmOptions,
        device: torch.device,
        revision: str | None = None,
        random_init: int | None = None,
    ):
        from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer, EsmModel

        source = resolve_model_dir(model_path or self.default_model, revision, weights=random_init is None)
        directory = source.directory
        config = read_config_json(directory, "a Hugging Face model")
        remote = "auto_map" in config  # NT v2 ships its own modelling code
        if not remote and config.get("model_type") != "esm":
            raise ModelError(
                f"{directory} holds a {config.get('model_type')!r} model (its config.json), not an ESM-architecture "
                f"one (such as {self.default_model}); point --model-path at one, or pick the --model that matches "
                "this folder"
            )
        weights = None if random_init is not None else weights_file(directory)
        # the file recorded is the file loaded: transformers is told which, where a folder holds both formats
        chosen = {} if weights is None else {"use_safetensors": weights.suffix == ".safetensors"}
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=remote)
        except (OSError, ValueError, ImportError) as err:  # no vocab.txt: transformers asks for protobuf instead
            raise ModelError(
                f"cannot read {directory}'s tokenizer ({str(err).splitlines()[0][:120]}); its tokenizer files "
                "(vocab.txt, tokenizer_config.json, special_tokens_map.json) belong beside the weights: copy them"
            ) from None
        try:
            if random_init is not None:  # a control: the architecture alone, as the tiny writers draw it
                architecture = AutoConfig.from_pretrained(str(directory), trust_remote_code=remote)
                if remote:
                    model = AutoModelForMaskedLM.from_config(architecture, trust_remote_code=True)
                else:
                    model = EsmModel(architecture, add_pooling_layer=False)
                model, info = randomize_(model, random_init), {}
            elif remote:
                model, info = AutoModelForMaskedLM.from_pretrained(
                    str(directory), trust_remote_code=True, output_loading_info=True, **chosen
                )
            else:
                model, info = EsmModel.from_pretrained(
                    str(directory), add_pooling_layer=False, output_loading_info=True, **chosen
                )
        except (OSError, ValueError) as err:  # transformers: a ValueError for an architecture it does not know
            raise ModelError(f"cannot load {directory}: {str(err).splitlines()[0]}") from err
        except RuntimeError as err:  # torch's load_state_dict, module by module: weights of another size
            found = None if remote else esm_key_differences(directory)
            raise WeightsMismatchError(
                loading_what(directory), found or torch_size_mismatches(str(err)), SAVED_TOGETHER
            ) from err
        except Exception as err:  # safetensors' SafetensorError for a truncated file (not an OSError)
            if type(err).__name__ != "SafetensorError":
                raise
            raise ModelError(damaged_weights(weights or directory, err)) from err
        self._check_vocabulary(directory)
        self.ignored_heads = check_loading(directory, info)
        self.model = model.to(device).eval().requires_grad_(False)
        self.device, self.remote = device, remote
        limit = int(config.get("max_position_embeddings", self.max_sequence_length + POSITION_OFFSET)) - POSITION_OFFSET
        self.options = options.resolve(self.max_sequence_length, limit)
        self.n_layers = int(config.get("num_hidden_layers", 0))
        self.pooling, self.max_length = self.options.pooling, self.options.max_length
        self.dim = int(config["hidden_size"])
        extras = [ExtraArray("n_tokens", "int32"), ExtraArray("n_truncated", "int32")]
        # genome windows: N added past a chromosome end, per item (sequence rows count 0)
        self.counts_padding = getattr(self.options, "window_bp", None) is not None
        if self.counts_padding:
            extras.append(ExtraArray("n_padded", "int32"))
        if self.pooling == "none":
            extras.append(ExtraArray("mask", "bool", (self.max_length,)))
        model_id, model_revision, files = recorded_identity(source, weights, random_init)
        self._info = ModelInfo(
            model=model_id,
            model_revision=model_revision,
            files=files,
            layer=-1,  # set by select_layer
            pooling=self.pooling,
            item_shape=(self.max_length, self.dim) if self.pooling == "none" else (self.dim,),
            extras=tuple(extras),
            config={
                "truncation": f"{'last' if getattr(self.options, 'keep', 'start') == 'end' else 'first'} "
                f"{self.max_length} tokens incl. specials",
                "trust_remote_code": remote,
                "ignored_checkpoint_modules": self.ignored_heads,
            },
        )

        self.select_layer(str(self.options.layer))

    def layers(self) -> tuple[str, ...]:
        return (*(str(k) for k in range(self.n_layers + 1)), "-1")

    def select_layer(self, layer: str) -> None:
        index = int(self.check_layer(layer))
        self.layer, self.options = layer, replace(self.options, layer=index)
        self._info = replace(self._info, layer=index)

    def info(self) -> ModelInfo:
        return self._info

    def default_max_tokens(self, device: torch.device) -> int:
        return self.max_length * (64 if device.type == "cuda" else 8)

    def sequence(self, row: dict[str, Any]) -> tuple[str, int]:
        """The item's sequence, and the number of N added to it past a chromosome end."""
        raise NotImplementedError

    def _sequences(self, rows: list[dict[str, Any]]) -> list[tuple[str, int]]:
        """`sequence` of each row."""
        return [self.sequence(row) for row in rows]

    @property
    def cheap_inputs(self) -> bool:  # type: ignore[override]
        """Token ids by table where the tokenizer allows (ESM-2's letters, ~3 us per protein; Nucleotide
        Transformer's 6-mers counted by numpy, `_dna_token_ids`, ~20 us per cDNA): cheaper to prepare here than to
        pass between processes. The tokenizer's own loop (~430 us per cDNA) is worth a worker. Demo cDNAs x 6
        (2,226), tiny model, 2 cores: 1.03-1.12 s in the embedding process, 1.32-1.36 s with a worker."""
        self._tokens_ready()
        return self._letters is not None or self._kmers is not None

    def _letter_ids(self) -> np.ndarray | None:
        """Per byte, its token id, for a tokenizer that reads one token per protein letter (ESM-2's); None for
        any other (Nucleotide Transformer's 6-mers). Checked against the tokenizer itself on every letter."""
        vocab = self.tokenizer.get_vocab()
        if not all(letter in vocab for letter in PROTEIN_LETTERS):
            return None
        table = np.full(256, -1, dtype=np.int64)
        for letter in PROTEIN_LETTERS:
            table[ord(letter)] = vocab[letter]
        probe = "".join(sorted(PROTEIN_LETTERS)) + "MKVLAAGIV"
        fast = self.tokenizer.build_inputs_with_special_tokens(table[np.frombuffer(probe.encode(), np.uint8)].tolist())
        return table if fast == self.tokenizer(probe, add_special_tokens=True)["input_ids"] else None

    def _kmer_ids(self) -> np.ndarray | None:
        """For a tokenizer of 6-mers with single nucleotides for the rest (Nucleotide Transformer's): per 6-mer of
        A, C, G, T as a base-4 number (A=0, C=1, G=2, T=3, first base most significant), its token id, then the
        ids of A, C, G, T, N at 4096..4100; None for any other vocabulary, or where the tokenizer itself does not
        split probe sequences the way `_dna_token_ids` does (checked on every start)."""
        vocab = self.tokenizer.get_vocab()
        kmers = ["".join(k) for k in itertools.product("ACGT", repeat=6)]
        if not all(k in vocab for k in kmers) or not all(letter in vocab for letter in "ACGTN"):
            return None
        table = np.asarray([vocab[k] for k in kmers] + [vocab[letter] for letter in "ACGTN"], dtype=np.int64)
        rng = np.random.default_rng(0)
        probes = ["", "N", "ACGTA", "ACGTAC", "NACGTACGTAC", "ACGNACGTACGTACGT", "ACGTACNNNNNNACGTACG"]
        probes += ["".join(rng.choice(list("ACGTN"), int(n), p=[0.24] * 4 + [0.04])) for n in (37, 64, 101)]
        for probe in probes:
            ids = _dna_token_ids(probe, table, self._around)
            if ids is None or not np.array_equal(ids, self.tokenizer(probe, add_special_tokens=True)["input_ids"]):
                return None
        return table

    def _tokens_ready(self) -> None:
        """The letter table, the count of special tokens and the specials around the letters, found once."""
        if not hasattr(self, "_letters"):
            self._letters = self._letter_ids()
            self._n_special = len(self.tokenizer.build_inputs_with_special_tokens([]))
            marked = self.tokenizer.build_inputs_with_special_tokens([-1])  # where the letters go between the specials
            at = marked.index(-1)
            self._around = (np.asarray(marked[:at], dtype=np.int64), np.asarray(marked[at + 1 :], dtype=np.int64))
            self._kmers = self._kmer_ids() if self._letters is None else None

    def _token_ids(self, seq: str) -> np.ndarray:
        """The tokenizer's ids with its special tokens: by table lookup where the tokenizer reads letters one by
        one (the same ids, ~100x faster than the tokenizer's own Python loop), else through the tokenizer."""
        self._tokens_ready()
        if self._letters is not None:
            codes = self._letters[np.frombuffer(seq.encode(), dtype=np.uint8)]
            if (codes >= 0).all():
                return np.concatenate([self._around[0], codes, self._around[1]])
        elif self._kmers is not None:
            ids = _dna_token_ids(seq, self._kmers, self._around)
            if ids is not None:
                return ids
        return np.asarray(self.tokenizer(seq, add_special_tokens=True)["input_ids"], dtype=np.int64)

    def prepare(self, row: dict[str, Any]) -> dict[str, np.ndarray]:
        seq, n_padded = self.sequence(row)
        ids = self._token_ids(seq)
        n_special = self._n_special
        if len(ids) > self.max_length and getattr(self.options, "keep", "start") == "end":
            head = ids[:1] if ids[0] == self.tokenizer.cls_token_id else ids[:0]  # <cls> stays in front
            kept = np.concatenate([head, ids[len(ids) - (self.max_length - len(head)) :]])
        else:
            kept = ids[: self.max_length].copy()
            if (
                len(ids) > self.max_length
                and self.tokenizer.eos_token_id is not None
                and ids[-1] == self.tokenizer.eos_token_id
            ):
                kept[-1] = self.tokenizer.eos_token_id  # truncated sequences keep their <eos>, as ESM's own scripts do
        return {
            "ids": np.asarray(kept, dtype=np.int64),
            "n_truncated": np.int32(max(0, len(ids) - len(kept))),
            "n_special": np.int32(n_special),
            "n_padded": np.int32(n_padded),
        }

    def digests(self, rows: list[dict[str, Any]]) -> np.ndarray:
        """`item_digest(self.prepare(row))` per row, several times faster for a letter tokenizer (ESM-2's): every
        row's letters are looked up in one table pass, and each untruncated row's digest is hashed from bytes laid
        out as `item_digest` lays them out (ids, n_padded, n_special, n_truncated). Truncated rows, and other
        tokenizers, go through `prepare`; `tests/test_embed_reuse.py` compares both ways."""
        self._tokens_ready()
        if self._letters is None or not rows:
            return super().digests(rows)
        found = self._sequences(rows)
        text = "".join(seq for seq, _ in found).encode("ascii", errors="replace")
        codes = self._letters[np.frombuffer(text, dtype=np.uint8)]
        if (codes < 0).any():  # a letter the table lacks (non-ASCII ones read as "?"): row by row
            return super().digests(rows)
        width = codes.dtype.itemsize
        letters = codes.tobytes()  # each row's ids are a slice of these bytes
        ends = np.cumsum([len(seq) for seq, _ in found]).tolist()
        head, tail = self._around[0].tobytes(), self._around[1].tobytes()
        n_around = len(self._around[0]) + len(self._around[1])
        i4, i8 = np.dtype(np.int32).str, codes.dtype.str  # what prepare's arrays are: "<i4", "<i8" here
        rest = digest_header("n_special", i4, (1,)) + np.int32(self._n_special).tobytes()
        rest += digest_header("n_truncated", i4, (1,)) + np.int32(0).tobytes()
        after: dict[int, bytes] = {}  # n_padded -> the bytes after the letters
        before: dict[int, bytes] = {}  # token count -> the bytes before the letters
        sha256, digests, start = hashlib.sha256, [], 0
        for row, (_, n_padded), end in zip(rows, found, ends, strict=True):
            n = n_around + end - start
            if n > self.max_length:
                digests.append(item_digest(self.prepare(row)).tobytes())
            else:
                if n not in before:
                    before[n] = digest_header("ids", i8, (n,)) + head
                if n_padded not in after:
                    after[n_padded] = tail + digest_header("n_padded", i4, (1,)) + np.int32(n_padded).tobytes() + rest
                digests.append(sha256(before[n] + letters[start * width : end * width] + after[n_padded]).digest())
            start = end
        return np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(rows), 32).copy()

    def n_tokens(self, prepared: dict[str, np.ndarray]) -> int:
        return len(prepared["ids"])

    def shape_bucket(self, prepared: dict[str, np.ndarray]) -> int | None:
        return length_bucket(len(prepared["ids"]), self.max_length)

    def filler(self, n_tokens: int) -> dict[str, np.ndarray]:
        """`n_tokens` ids of one ordinary token after the first special one: a sequence of that length."""
        token = self.tokenizer("AAAAAA", add_special_tokens=False)["input_ids"][0]
        ids = np.full(n_tokens, token, dtype=np.int64)
        if self.tokenizer.cls_token_id is not None:
            ids[0] = self.tokenizer.cls_token_id
        zero = np.int32(0)
        return {"ids": ids, "n_truncated": zero, "n_special": zero, "n_padded": zero}

    def embed_layers(
        self, batch: list[dict[str, np.ndarray]], layers: tuple[str, ...]
    ) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
        ids, lengths = padded_ids(batch, self.tokenizer.pad_token_id)
        attention = (ids != self.tokenizer.pad_token_id).long()
        ids, attention = ids.to(self.device), attention.to(self.device)
        index = {layer: int(layer) for layer in layers}
        all_states = self.remote or any(k != -1 for k in index.values())
        out = self.model(input_ids=ids, attention_mask=attention, output_hidden_states=all_states)
        special = torch.zeros_like(attention, dtype=torch.bool)
        for token in (self.tokenizer.cls_token_id, self.tokenizer.eos_token_id, self.tokenizer.bos_token_id):
            if token is not None:
                special |= ids == token
        real = attention.bool() & ~special  # (B, T)
        extras = token_extras(batch, lengths)
        if self.counts_padding:
            extras["n_padded"] = np.array([item["n_padded"] for item in batch], dtype=np.int32)
        if self.pooling == "none":
            extras["mask"] = real_mask(real, self.max_length)
        outputs = {}
        for layer, k in index.items():
            # (B, T, D); NT v2's remote code has no last_hidden_state of the same meaning: its hidden states
            hidden = out.hidden_states[k] if self.remote or k != -1 else out.last_hidden_state
            outputs[layer] = pool_tokens(hidden, real, self.pooling, self.max_length)
        return outputs, extras


class Esm2Adapter(_EsmFamily):
    options_class = EsmOptions
    default_model = "facebook/esm2_t33_650M_UR50D"
    max_sequence_length = ESM2_MAX_TOKENS

    def _check_vocabulary(self, directory: Path) -> None:
        """A protein model's tokenizer has a token for every standard amino acid; Nucleotide Transformer's (the
        same ESM architecture) has A, C, G, T, N and 6-mers, and would read a protein as unknown tokens."""
        vocab = self.tokenizer.get_vocab()
        missing = [letter for letter in STANDARD_AMINO_ACIDS if letter not in vocab]
        if missing:
            raise ModelError(
                f"{directory}'s tokenizer has no token for the amino acids {', '.join(missing[:5])}"
                f"{' ...' if len(missing) > 5 else ''}: it is no protein model's (a Nucleotide Transformer's, with "
                "the same architecture?); point --model-path at an ESM-2 folder, or use --model nucleotide-transformer"
            )

    def sequence(self, row: dict[str, Any]) -> tuple[str, int]:
        return clean_protein(row), 0

    def _sequences(self, rows: list[dict[str, Any]]) -> list[tuple[str, int]]:
        """`clean_protein` of each row, the letters of all rows checked in one table pass; where one fails, row by
        row, so that the first bad row raises its own error."""
        seqs = [_protein_text(row) for row in rows]
        if all(seqs) and _all_amino_acids("".join(seqs)):
            return [(seq, 0) for seq in seqs]
        return [self.sequence(row) for row in rows]


class NucleotideTransformerAdapter(_EsmFamily):
    options_class = NucleotideTransformerOptions

    def _check_vocabulary(self, directory: Path) -> None:
        """Nucleotide Transformer's tokenizer has a token for every 6-mer of A, C, G, T; ESM-2's (the same ESM
        architecture) has amino-acid letters, and would read DNA as protein."""
        vocab = self.tokenizer.get_vocab()
        missing = [k for k in ("".join(k) for k in itertools.product("ACGT", repeat=6)) if k not in vocab]
        if missing:
            raise ModelError(
                f"{directory}'s tokenizer has no token for {len(missing):,} of the 4,096 6-mers (e.g. {missing[0]}): "
                "it is no Nucleotide Transformer's (an ESM-2 protein model, with the same architecture?); point "
                "--model-path at a Nucleotide Transformer folder, or use --model esm2"
            )

    options: NucleotideTransformerOptions
    default_model = "InstaDeepAI/nucleotide-transformer-500m-human-ref"
    max_sequence_length = 1000  # v1: 1,000 tokens of 6-mers (~6 kb); v2 models allow 2,048 (12 kb)

    def sequence(self, row: dict[str, Any]) -> tuple[str, int]:
        """An rna row's `sequence`; a dna row's genome window (`--window-bp` around `center`)."""
        if "_genome" in row and "sequence" in row:  # --modality dna: the windows come from the genome alone
            raise InputError(
                f"item {row['id']!r}: --modality dna cuts each window from --genome at chrom / center, and this table "
                "also has a sequence column, which the cache's input digest would not cover: embed those sequences "
                "with --modality rna, or drop the column"
            )
        if "_genome" not in row:
            seq, n_padded = str(row["sequence"]).strip().upper().replace("U", "T"), 0  # NT reads DNA letters; U is T
        else:
            window = self.options.window_bp
            if not window:
                raise InputError("nucleotide-transformer on genome windows needs --window-bp (e.g. 5994 for v1)")
            seq, n_padded = row["_genome"].window(str(row["chrom"]), int(row["center"]), window)
        if not seq:
            raise InputError(f"item {row['id']!r} has an empty sequence; drop it in the recipe")
        check_dna(seq, row["id"])
        return seq, n_padded


# ---- tiny random models in the real layouts, for tests and `models make-tiny` ----------------------------------
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
