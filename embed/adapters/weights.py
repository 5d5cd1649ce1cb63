"""Where an adapter's weights come from: a local directory as is, or a hub id downloaded once into the
huggingface_hub cache; the weights file inside it; the identity recorded in the cache manifest (the hub id and
commit when the folder is a hub snapshot, else the folder's name and the sha256 of the weights file) and the
digests of every file the adapter reads."""

from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from dogmacache.contracts.provenance import file_sha256, random_init_revision
from dogmacache.errors import ModelError, WeightsMismatchError

# the names Hugging Face folders use, in the order transformers' from_pretrained prefers them (safetensors first):
# a folder holding both is loaded, and recorded by digest, from the same file whichever loader reads it
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are, and the hub repository they are a snapshot of (if any)."""

    directory: Path
    hub_id: str | None = None  # "OWNER/NAME" when the folder is a hub download or a copy of the hub's layout
    hub_revision: str | None = None  # that snapshot's commit

    def identity(self, weights: Path | None) -> tuple[str, str]:
        """(model, model_revision) for the manifest, the same on every machine: the hub id and commit, else the
        folder's name and the sha256 of its weights file (never a local path)."""
        if self.hub_id and self.hub_revision:
            return self.hub_id, self.hub_revision
        return self.directory.name, file_digest(weights) if weights else "unknown"


_SNAPSHOT = re.compile(r"models--(?P<owner>[^/]+?)--(?P<name>[^/]+)/snapshots/(?P<commit>[0-9a-f]{40})")


def hub_snapshot(directory: Path) -> tuple[str, str] | None:
    """(hub id, commit) when `directory` sits where huggingface_hub keeps a snapshot
    (`.../models--OWNER--NAME/snapshots/<commit>`), else None."""
    found = _SNAPSHOT.search(Path(directory).absolute().as_posix() + "/")
    return (f"{found['owner']}/{found['name']}", found["commit"]) if found else None


def resolve_model_dir(model_path: str, revision: str | None = None, weights: bool = True) -> ModelSource:
    """A local directory as is, else a hub id downloaded once (huggingface_hub cache); `weights` False leaves the
    weight files out of the download (`--random-init` reads only the configuration and tokenizer)."""
    local = Path(model_path)
    if local.is_dir():
        hub = hub_snapshot(local)
        return ModelSource(local, *hub) if hub else ModelSource(local)
    if local.exists() or model_path.startswith((".", "/")) or model_path.count("/") != 1:
        raise ModelError(f"model path {model_path!r} is neither a local directory nor a hub id (OWNER/NAME)")
    from huggingface_hub import snapshot_download

    try:
        skip = (
            None
            if weights
            else [*WEIGHT_FILES, "*.bin", "*.safetensors", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack"]
        )
        path = snapshot_download(model_path, revision=revision, ignore_patterns=skip)
    except Exception as err:  # offline, unknown repo, gated model: one message with the way out
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
        raise ModelError(
            f"{model_path!r} is no local folder (none at {local.absolute()}), and as a hub id it cannot be "
            f"downloaded ({type(err).__name__}: {first}); check the path, or download the model elsewhere and pass "
            "its local directory with --model-path"
        ) from err
    return ModelSource(Path(path), model_path, Path(path).name)  # snapshot folders are named by commit hash


# Files besides the weights that change the numbers when they change: architecture, tokenizer, vocabulary,
# scGPT's arguments, remote modelling code (*.py).
MODEL_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "args.json",
)


def recorded_identity(
    source: ModelSource, weights: Path | None, random_init: int | None = None
) -> tuple[str, str, dict[str, str]]:
    """(model, model_revision, files) for the manifest: `ModelSource.identity` and `model_files`; with
    `random_init` (`--random-init SEED`) no weights file was read, and the revision says so."""
    if random_init is not None:
        return source.identity(None)[0], random_init_revision(random_init), model_files(source.directory, None)
    return (*source.identity(weights), model_files(source.directory, weights))


def model_files(directory: Path, weights: Path | None) -> dict[str, str]:
    """{file name: sha256} of what the adapter reads from `directory`: the weights file (named by its path inside
    `directory`, e.g. ESM-C's `data/weights/...`), MODEL_FILES and any modelling code present."""
    names = [n for n in MODEL_FILES if (directory / n).is_file()] + sorted(p.name for p in directory.glob("*.py"))
    if weights is not None:
        inside = Path(weights).is_relative_to(directory)
        names.append(Path(weights).relative_to(directory).as_posix() if inside else Path(weights).name)
    return {name: file_digest(directory / name) for name in sorted(set(names))}


def file_digest(path: str | Path) -> str:
    """ "sha256:<hex>" of a file. A hub download's large files are links to blobs named by their sha256: that
    name is used instead of reading gigabytes again."""
    path = Path(path)
    if path.is_symlink():
        target = Path(os.readlink(path))
        if target.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", target.name):
            return "sha256:" + target.name
    return file_sha256(str(path))


def weights_file(directory: Path) -> Path | None:
    """The first of WEIGHT_FILES present in `directory`, or None."""
    return next((directory / name for name in WEIGHT_FILES if (directory / name).is_file()), None)


def load_state_dict_file(directory: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The state dict of `directory`'s weights file, and that file's path."""
    path = weights_file(directory)
    if path is None:
        raise ModelError(f"{directory} holds no weights file ({' or '.join(WEIGHT_FILES)}); is it a model folder?")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path)), path
        return torch.load(path, map_location="cpu", weights_only=True), path
    except pickle.UnpicklingError as err:  # whole, but pickles objects torch's weights-only load will not build
        raise ModelError(
            f"{path} holds objects other than tensors (a whole training checkpoint?), which are not loaded from a "
            "file that could run code; save the model's state_dict alone and point --model-path at it"
        ) from err
    except Exception as err:  # safetensors' SafetensorError, torch's zip errors, a short read's OSError
        raise ModelError(damaged_weights(path, err)) from err


def damaged_weights(path: Path, err: BaseException) -> str:
    """One line for a weights file that does not read as one: truncated, or another file under that name."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # torch colours some of its messages
    reason = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return f"{path} could not be read as model weights ({reason}); it is truncated or damaged: download it again"


def read_config_json(directory: Path, what: str) -> dict:
    """A model folder's config.json as a dict; ModelError where there is none or it does not parse (`what`: the
    kind of folder, for the message)."""
    import json

    config_file = directory / "config.json"
    if not config_file.is_file():
        raise ModelError(f"{directory} has no config.json; {what} folder holds config.json and the weights")
    try:
        raw = json.loads(config_file.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ModelError(f"{config_file} is not valid JSON ({err}); copy the model folder again") from None
    if not isinstance(raw, dict):
        raise ModelError(f"{config_file} holds a JSON {type(raw).__name__}, not a model config; copy the folder again")
    return raw


def weights_digest(path: str | Path) -> str:
    """sha256 of a weights file, recorded as the revision when a model comes from a local directory."""
    return file_digest(path)


# The way out of weights that do not fit their config, for the adapters whose --model-path folder holds both
SAVED_TOGETHER = "point --model-path at the folder these weights belong to (its config.json and weights together)"
SHOWN_KEYS = 3  # key names shown per kind of difference; the rest are counted


def key_differences(missing: list[str], unexpected: list[str], misshapen: list[str]) -> str:
    """The keys two state dicts differ by as one short phrase: per kind, its count and first names, for example
    "2 missing (e.g. a.weight, a.bias); 1 of another shape (e.g. b.weight 4x8 (the model's: 4x16))"."""
    kinds = (("missing", missing), ("unexpected", unexpected), ("of another shape", misshapen))
    return "; ".join(f"{len(keys)} {kind} (e.g. {', '.join(keys[:SHOWN_KEYS])})" for kind, keys in kinds if keys)


def shapes_differ(key: str, stored: tuple[int, ...], wanted: tuple[int, ...]) -> str:
    """How `key_differences` names a key of another shape: the weights file's shape, then the model's, for
    example "embed.weight 64x32 (the model's: 64x64)"."""

    def size(shape: tuple[int, ...]) -> str:
        return "x".join(str(int(n)) for n in shape) or "scalar"

    return f"{key} {size(tuple(stored))} (the model's: {size(tuple(wanted))})"


def load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str, fix: str) -> torch.nn.Module:
    """Every parameter and buffer of `model` from `state`, strictly. A missing, unexpected or misshapen key is a
    `WeightsMismatchError` in one line: `what` (which weights do not fit which model), the keys counted with their
    first names, and `fix`, where torch's own error lists every key (thousands of characters for a model of
    another size)."""
    differences = state_differences(model.state_dict(), state)
    if differences:
        raise WeightsMismatchError(what, differences, fix)
    model.load_state_dict(state, strict=True)
    return model


def state_differences(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> str:
    """How a weights file's `state` differs from a model's `expected` state dict (`key_differences`); "" when
    every key is there in its shape."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshapen = [
        shapes_differ(k, tuple(state[k].shape), tuple(v.shape))
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    return key_differences(missing, unexpected, misshapen)
