"""Where an adapter's weights come from: a local directory as is, or a hub id downloaded once into the
huggingface_hub cache; the weights file inside it; the revision recorded in the cache manifest (the hub's
commit, or the sha256 of the weights file for a local directory)."""

from __future__ import annotations

from pathlib import Path

import torch
from dogmacache.contracts.provenance import file_sha256
from dogmacache.errors import ModelError

WEIGHT_FILES = ("pytorch_model.bin", "model.safetensors")  # the names Hugging Face folders use, in this order


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


def weights_file(directory: Path) -> Path | None:
    """The first of WEIGHT_FILES present in `directory`, or None."""
    return next((directory / name for name in WEIGHT_FILES if (directory / name).is_file()), None)


def load_state_dict_file(directory: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The state dict of `directory`'s weights file, and that file's path."""
    path = weights_file(directory)
    if path is None:
        raise ModelError(f"{directory} holds no weights file ({' or '.join(WEIGHT_FILES)}); is it a model folder?")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path)), path
    return torch.load(path, map_location="cpu", weights_only=True), path


def weights_digest(path: str | Path) -> str:
    """sha256 of a weights file, recorded as the revision when a model comes from a local directory."""
    return file_sha256(str(path))
