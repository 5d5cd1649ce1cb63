"""ESM-C against the `esm` package (`make esmc-reference`): the native encoder (`embed/adapters/esmc_model.py`)
must give `esm`'s numbers for the same weights. Two halves in one file:

- `build OUT` runs in the reference environment (Python 3.12, `esm` and torch, no dogmacache): for each case of
  `CASES` it builds `esm`'s own `ESMC` with weights drawn by `draw_weights` (numpy, seeded), saves its state dict
  as `OUT/<case>/model/data/weights/esmc_<case>.pth` (the published layout; config.json names the sizes) and
  `esm`'s outputs for `SEQUENCES` (final embeddings, every block's hidden states, LM logits) to
  `OUT/<case>/esm.npz`. The `tiny` case's npz is the fixture tests/data/esmc_reference.npz.
- `compare OUT` runs in the main environment: loads each saved folder through the `esmc` adapter's strict path,
  embeds the same sequences at every layer, per residue and mean-pooled, and prints the largest absolute
  difference and the smallest cosine against `esm`; exit 1 past `TOLERANCE`.

This file imports only numpy at the top, so the reference environment needs no dogmacache; run it with
`python -P` there (bench/ holds modules whose names a library could import).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

# name: (d_model, n_heads, n_layers). tiny: the committed fixture (head width 16); wide: the published head width 64.
CASES = {"tiny": (32, 2, 2), "wide": (192, 3, 4)}
SEED = 0
SEQUENCES = ("MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", "ACDEFGHIKLMNPQRSTVWYXBZUO", "MSKGEELFTGVVPILV", "MKV")
TOLERANCE = 1e-4  # fp32 on a CPU; measured differences are about 1e-6


def draw_weights(shapes: dict[str, tuple[int, ...]], seed: int = SEED) -> dict[str, np.ndarray]:
    """Every tensor of a state dict drawn from one numpy generator, keys in sorted order, so that both
    environments draw the same numbers: matrices N(0, 1/fan_in), 1-d gains 1 + N(0, 0.1^2), other vectors
    N(0, 0.1^2)."""
    rng = np.random.default_rng(seed)
    drawn = {}
    for key in sorted(shapes):
        shape = tuple(shapes[key])
        noise = rng.standard_normal(shape)
        if len(shape) >= 2:
            value = noise / np.sqrt(np.prod(shape[1:]))
        else:
            value = (1.0 if key.endswith("weight") else 0.0) + 0.1 * noise
        drawn[key] = value.astype(np.float32)
    return drawn


def checksums(state: dict[str, np.ndarray]) -> np.ndarray:
    """Sum of absolute values of each tensor, keys in sorted order: the two environments drew the same weights."""
    return np.array([float(np.abs(np.asarray(state[k], dtype=np.float64)).sum()) for k in sorted(state)])


def build(out: Path) -> None:
    """The reference half: esm's ESMC, seeded weights, outputs. Needs `esm` (imported here only)."""
    import importlib.metadata
    import platform

    import torch
    from esm.models.esmc import ESMC
    from esm.tokenization import get_esmc_model_tokenizers

    versions = {
        "esm": importlib.metadata.version("esm"),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    tokenizer = get_esmc_model_tokenizers()
    for case, (d_model, n_heads, n_layers) in CASES.items():
        model = ESMC(d_model=d_model, n_heads=n_heads, n_layers=n_layers, tokenizer=tokenizer, use_flash_attn=False)
        model = model.eval()
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        drawn = draw_weights(shapes)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in drawn.items()}, strict=True)
        folder = out / case / "model"
        (folder / "data/weights").mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), folder / f"data/weights/esmc_{case}.pth")
        sizes = {"d_model": d_model, "n_heads": n_heads, "n_layers": n_layers}
        (folder / "config.json").write_text(json.dumps(sizes, indent=1))
        tokens = model._tokenize(list(SEQUENCES))
        with torch.no_grad():
            output = model(sequence_tokens=tokens)
        np.savez_compressed(
            out / case / "esm.npz",
            sizes=np.array([d_model, n_heads, n_layers]),
            seed=np.array(SEED),
            keys=np.array(sorted(shapes)),
            checksums=checksums(drawn),
            sequences=np.array(SEQUENCES),
            tokens=tokens.numpy(),
            embeddings=output.embeddings.numpy(),
            hidden_states=output.hidden_states.numpy(),  # (n_layers, B, L, D): block k's output at k - 1
            logits=output.sequence_logits.numpy(),
            versions=np.array(json.dumps(versions)),
        )
        print(f"{case}: esm {versions['esm']}, torch {versions['torch']}, python {versions['python']} -> {out / case}")


def residue_mask(tokens: np.ndarray) -> np.ndarray:
    """(B, L) True at residues: not `<cls>` (0), `<pad>` (1), `<eos>` (2)."""
    return tokens > 2


def differences(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, float]:
    """(largest absolute difference, smallest cosine over rows, in float64) of two (N, D) arrays."""
    ours, theirs = ours.astype(np.float64), theirs.astype(np.float64)
    cosine = (ours * theirs).sum(-1) / (np.linalg.norm(ours, axis=-1) * np.linalg.norm(theirs, axis=-1))
    return float(np.abs(ours - theirs).max()), float(cosine.min())


def compare_case(folder: Path, reference: dict[str, np.ndarray]) -> list[dict]:
    """Rows of (case, layer, pooling, max |diff|, min cosine): the esmc adapter on `folder` against `esm`."""
    import torch
    from dogmacache.embed.adapters.esmc import EsmcAdapter, EsmcOptions

    tokens, n_layers = reference["tokens"], int(reference["sizes"][2])
    real = residue_mask(tokens)
    expected = {-1: reference["embeddings"], **{k + 1: reference["hidden_states"][k] for k in range(n_layers)}}
    rows = []
    for layer, theirs in expected.items():
        for pooling in ("none", "mean"):
            options = EsmcOptions(layer=layer, pooling=pooling)
            adapter = EsmcAdapter(str(folder), options, torch.device("cpu"))
            batch = [adapter.prepare({"id": str(i), "sequence": s}) for i, s in enumerate(reference["sequences"])]
            out, extras = adapter.embed(batch)
            ours = out.float().numpy()
            if pooling == "none":
                assert (extras["mask"][:, : tokens.shape[1]] == real).all(), "residue masks differ"
                diff = differences(ours[:, : tokens.shape[1]][real], theirs[real])
            else:
                weights = real[..., None].astype(np.float64)
                pooled = (theirs * weights).sum(1) / weights.sum(1)
                diff = differences(ours, pooled)
            rows.append({"layer": layer, "pooling": pooling, "max_abs_diff": diff[0], "min_cosine": diff[1]})
    return rows


def compare(out: Path) -> int:
    """The main-environment half; prints one line per case and layer, returns the exit code."""
    import platform

    import torch

    worst = 0.0
    for case in CASES:
        reference = dict(np.load(out / case / "esm.npz"))
        versions = json.loads(str(reference["versions"]))
        print(
            f"{case} {tuple(int(x) for x in reference['sizes'])} (d_model, n_heads, n_layers): esm {versions['esm']} "
            f"(torch {versions['torch']}, python {versions['python']}) vs dogmacache (torch {torch.__version__}, "
            f"python {platform.python_version()})"
        )
        for row in compare_case(out / case / "model", reference):
            worst = max(worst, row["max_abs_diff"])
            print(
                f"  layer {row['layer']:>2} pooling {row['pooling']:<4} max |diff| {row['max_abs_diff']:.2e} "
                f"min cosine {row['min_cosine']:.8f}"
            )
    print(
        f"largest difference {worst:.2e} (tolerance {TOLERANCE:.0e}): {'same' if worst <= TOLERANCE else 'DIFFERENT'}"
    )
    return 0 if worst <= TOLERANCE else 1


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("build", "compare"):
        print("usage: esmc_reference.py build|compare OUT", file=sys.stderr)
        return 2
    if argv[0] == "build":
        build(Path(argv[1]))
        return 0
    return compare(Path(argv[1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
