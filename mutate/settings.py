"""Is the DNA model, genome and device given to `mutate` what its DNA cache was embedded with? One-line answers.

The embed stage records in a cache's manifest every setting that decides its numbers (`embed.runner.
number_fingerprint`: model files by digest, the genome by name and digest, device, precision, options). mutate
re-embeds edited windows and compares them with cached rows, so every one of those must agree. Here the genome
counts by its digest alone (a renamed copy of the same FASTA embeds the same numbers), and a refusal names the
setting, its value in the cache and now, and the flag that fixes it.

A model folder whose weights do not fit its own config is a `WeightsMismatchError` (its keys counted by
`embed/adapters/weights.py`'s `load_strict`, for every adapter); `model_load_error` says it as mutate's --dna-model.
"""

from __future__ import annotations

from typing import Any

from dogmacache.cache.manifest import config_differences
from dogmacache.embed.runner import number_fingerprint
from dogmacache.errors import InputError, ModelError, WeightsMismatchError


def _settings(config: dict[str, Any], flags: dict[str, dict]) -> dict[str, Any]:
    found = number_fingerprint({**config, "genome": None}, flags)
    found["genome"] = (config.get("genome") or {}).get("sha256")
    return found


def _value(value: Any) -> str:
    return "none" if value is None else repr(value)


def check_same_settings(
    url: str, recorded: dict[str, Any], wanted: dict[str, Any], flags: dict[str, dict], genome: str, dna_model: str
) -> None:
    """InputError naming the first setting that differs between the cache's manifest (`recorded`) and this run's
    (`wanted`), both values, and how to fix it."""
    old, new = _settings(recorded, flags), _settings(wanted, flags)
    differ = config_differences(old, new)
    if not differ:
        return
    key = differ[0]
    more = f" (and {len(differ) - 1} more: {', '.join(differ[1:4])})" if len(differ) > 1 else ""
    if key == "genome":
        was, now = recorded.get("genome") or {}, wanted.get("genome") or {}
        raise InputError(
            f"{url} was embedded from another genome: {was.get('name')} ({was.get('sha256')}) in the cache, "
            f"--genome {genome} is {now.get('name')} ({now.get('sha256')}){more}; pass the FASTA the cache was "
            "embedded from, or re-embed the cache from this one"
        )
    if key == "batching":
        raise InputError(
            f"{url} was cut into batches another way ({_value(old.get(key))} in the cache, {_value(new.get(key))} "
            f"now: an earlier version's){more}; re-embed the cache with this version"
        )
    fix = {"device": "pass the --device the cache was embedded on"}.get(
        key,
        f"pass the --dna-model folder the cache was embedded with (not {dna_model})"
        if key.startswith("model file")
        else "pass the --dna-model, --genome and --device the cache was embedded with",
    )
    raise InputError(
        f"{url} was embedded with other settings: {key}: {_value(old.get(key))} in the cache, "
        f"{_value(new.get(key))} now{more}; {fix}, or re-embed the cache"
    )


def model_load_error(err: ModelError, dna_model: str, url: str) -> InputError | ModelError:
    """Weights that do not fit their model's config (`WeightsMismatchError`), said as mutate's --dna-model; any
    other ModelError as it is."""
    if not isinstance(err, WeightsMismatchError):
        return err
    return InputError(
        f"--dna-model {dna_model}: {err.what}: {err.differences}; pass the DNA model folder {url} was embedded with "
        "(its config.json and weights together)"
    )
