"""Each adapter's cache against its upstream library called directly, on tiny models whose every weight is random.

- Enformer: enformer-pytorch's forward (`return_only_embeddings=True`) on windows cut from the FASTA and one-hot
  encoded here: a window over a chromosome's start, one over its end, a minus-strand item averaged with its
  reverse complement (`--strand-policy rc-average`) and a plain one with TF gamma off; with it on (196,608 bp
  windows, seconds a forward) the window over the end and the minus-strand item.
- ESM-2 and Nucleotide Transformer: the transformers tokenizer and `EsmModel`, one item at a time (no padding),
  on ragged lengths with truncation (kept at the start, or for NT at the end), pooled by hand.

The caches store float16: values agree within a float16 rounding of the direct float32 result.
"""

import numpy as np
import pandas as pd
import pytest
import torch
from dogmacache.cache import open_cache
from dogmacache.cli import main
from dogmacache.embed.adapters.enformer import TINY_ENFORMER, write_tiny_enformer
from dogmacache.embed.tiny import write_tiny_esm2, write_tiny_nucleotide_transformer

CHROM_BP = {"chr1": 5000, "chr2": 200_000}  # chr2 holds 196,608 bp windows (TF gamma) without N in the middle
WINDOW = 256 * TINY_ENFORMER["target_length"]  # 2,048 bp


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def _close_to_float16(cache_rows: np.ndarray, direct: np.ndarray) -> None:
    """Stored float16 values equal the float32 ones rounded, within one float16 step plus float32 arithmetic's
    noise between batched and one-by-one forwards (1e-5 of the largest value)."""
    assert cache_rows.shape == direct.shape
    step = np.spacing(np.abs(direct).astype(np.float16)).astype(np.float32)
    np.testing.assert_array_less(np.abs(cache_rows.astype(np.float32) - direct), step + 1e-5 * np.abs(direct).max())


@pytest.fixture(scope="module")
def genome(tmp_path_factory):
    root = tmp_path_factory.mktemp("upstream")
    rng = np.random.default_rng(3)
    sequences = {chrom: "".join(rng.choice(list("ACGT"), n)) for chrom, n in CHROM_BP.items()}
    (root / "g.fa").write_text(
        "".join(
            f">{chrom}\n" + "\n".join(seq[i : i + 60] for i in range(0, len(seq), 60)) + "\n"
            for chrom, seq in sequences.items()
        )
    )
    return root, sequences


def test_tiny_models_have_no_constant_weights(tmp_path):
    from enformer_pytorch import Enformer
    from transformers import EsmModel

    enformer = Enformer.from_pretrained(str(write_tiny_enformer(tmp_path / "e")))
    to_out = [p for n, p in enformer.named_parameters() if n.endswith("to_out.weight")]
    assert to_out and all(float(p.detach().abs().sum()) > 0 for p in to_out)  # the library initialises them to zero
    stats = [m.running_var for m in enformer.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert stats and not any(torch.equal(v, torch.ones_like(v)) for v in stats)
    for model in (
        EsmModel.from_pretrained(str(write_tiny_esm2(tmp_path / "esm")), add_pooling_layer=False),
        EsmModel.from_pretrained(str(write_tiny_nucleotide_transformer(tmp_path / "nt")), add_pooling_layer=False),
    ):
        constant = [n for n, p in model.named_parameters() if p.numel() > 1 and float(p.detach().std()) == 0]
        assert constant == []


def _one_hot(sequence: str) -> torch.Tensor:
    """(len, 4) float32: columns A, C, G, T; any other letter (N) all zeros."""
    letters = np.frombuffer(sequence.encode(), dtype=np.uint8)[:, None]
    return torch.from_numpy(letters == np.frombuffer(b"ACGT", dtype=np.uint8)[None]).float()


def _reverse_complement(sequence: str) -> str:
    return sequence[::-1].translate(str.maketrans("ACGTN", "TGCAN"))


@pytest.mark.parametrize("tf_gamma", ["off", "on"])
def test_enformer_cache_equals_the_library_forward(genome, tmp_path, tf_gamma):
    from enformer_pytorch import Enformer
    from enformer_pytorch.modeling_enformer import Attention

    root, sequences = genome
    chrom = "chr2" if tf_gamma == "on" else "chr1"
    sequence, size = sequences[chrom], CHROM_BP[chrom]
    window = 196_608 if tf_gamma == "on" else WINDOW  # the adapter's default for 896 bins
    model_dir = tmp_path / "enformer"
    if tf_gamma == "on":  # TF's gamma features exist for 1,536 positions (196,608 bp) and 192 features per head
        write_tiny_enformer(model_dir, seed=1, gain=2.0, target_length=896, dim=192, heads=1)
    else:
        write_tiny_enformer(model_dir, seed=1)
    items = {"start": (300, "+"), "end": (size - 100, "+"), "minus": (size // 2, "-"), "plain": (size // 2 + 1000, "+")}
    if tf_gamma == "on":  # a 196,608 bp window costs seconds a forward: one padded and one minus-strand window here
        items = {name: items[name] for name in ("end", "minus")}
    centers, strands = ([c for c, _ in items.values()], [s for _, s in items.values()])
    pd.DataFrame({"id": list(items), "chrom": chrom, "center": centers, "strand": strands}).to_parquet(
        tmp_path / "dna.parquet"
    )
    out = tmp_path / "dna.zarr"
    assert (
        main(
            [
                "embed",
                "--input",
                str(tmp_path / "dna.parquet"),
                "--modality",
                "dna",
                "--model",
                "enformer",
                "--model-path",
                str(model_dir),
                "--genome",
                str(root / "g.fa"),
                "--out",
                str(out),
                "--strand-policy",
                "rc-average",
                "--tf-gamma",
                tf_gamma,
                "--max-batch",
                "3",
                "--num-workers",
                "0",
                "--fidelity-items",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    cache = open_cache(out)

    model = Enformer.from_pretrained(str(model_dir)).eval()
    for module in model.modules():
        if isinstance(module, Attention):
            module.use_tf_gamma = tf_gamma == "on"
    expected, padded, windows = [], [], []
    with torch.no_grad():
        for center, strand in zip(centers, strands, strict=True):
            start = center - 1 - window // 2  # the reference window around the 1-based centre, cut here by hand
            seq = "".join(sequence[i] if 0 <= i < size else "N" for i in range(start, start + window))
            padded.append(seq.count("N"))
            windows.append(seq)
            forward = model(_one_hot(seq)[None], return_only_embeddings=True)[0]
            if strand == "-":
                reverse = model(_one_hot(_reverse_complement(seq))[None], return_only_embeddings=True)[0]
                forward = (forward + reverse.flip(0)) / 2
            expected.append(forward.numpy())
    assert [n > 0 for n in padded] == [name in ("start", "end") for name in items]  # only those hang off an end
    assert cache.extra("n_padded")[:].tolist() == padded
    _close_to_float16(cache.read_rows(np.arange(len(items))), np.stack(expected))
    if tf_gamma == "on":  # with attention live, TF gamma changes the numbers (so a wrong setting fails above)
        for module in model.modules():
            if isinstance(module, Attention):
                module.use_tf_gamma = False
        with torch.no_grad():  # the window over the end, plus strand
            other = model(_one_hot(windows[0])[None], return_only_embeddings=True)[0].numpy()
        assert np.abs(other - expected[0]).max() > 1e-3


def _esm_direct(model_dir, sequences, max_length, keep="start", pooling="mean"):
    """Tokenizer and EsmModel, one item at a time, truncated to `max_length` tokens (specials included) keeping
    <cls> (and a final <eos>), then the mean over the remaining non-special tokens."""
    from transformers import AutoTokenizer, EsmModel

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = EsmModel.from_pretrained(str(model_dir), add_pooling_layer=False).eval()
    special = {tokenizer.cls_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id} - {None}
    rows, truncated = [], []
    for sequence in sequences:
        ids = tokenizer(sequence)["input_ids"]
        truncated.append(max(0, len(ids) - max_length))
        if len(ids) > max_length:
            has_eos = tokenizer.eos_token_id is not None and ids[-1] == tokenizer.eos_token_id
            if keep == "end":
                ids = ids[:1] + ids[len(ids) - (max_length - 1) :]
            else:
                ids = ids[: max_length - 1] + (
                    [tokenizer.eos_token_id] if has_eos else ids[max_length - 1 : max_length]
                )
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        real = torch.tensor([t not in special for t in ids])
        rows.append(hidden[real].mean(0).numpy() if pooling == "mean" else hidden.numpy())
    return rows, truncated


def test_esm2_cache_equals_the_library_on_ragged_and_truncated_proteins(tmp_path):
    model_dir = write_tiny_esm2(tmp_path / "esm2", seed=2)
    proteins = [
        "MKV",
        "MKTAYIAKQRQISFVK",
        "ACDEFGHIKLMNPQRSTVWY" * 2,
        "W",
    ]  # 3, 16, 40 (truncated), 1 residues
    pd.DataFrame({"id": [f"p{i}" for i in range(4)], "sequence": proteins}).to_parquet(tmp_path / "p.parquet")
    out = tmp_path / "p.zarr"
    assert (
        main(
            [
                "embed",
                "--input",
                str(tmp_path / "p.parquet"),
                "--modality",
                "protein",
                "--model",
                "esm2",
                "--model-path",
                str(model_dir),
                "--out",
                str(out),
                "--max-length",
                "24",
                "--max-batch",
                "4",
                "--num-workers",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    cache = open_cache(out)
    expected, truncated = _esm_direct(model_dir, proteins, max_length=24)
    assert cache.extra("n_truncated")[:].tolist() == truncated and truncated[2] == 42 - 24
    _close_to_float16(cache.read_rows(np.arange(4)), np.stack(expected))


@pytest.mark.parametrize("keep", ["start", "end"])
def test_nucleotide_transformer_cache_equals_the_library_on_ragged_and_truncated_cdnas(tmp_path, keep):
    model_dir = write_tiny_nucleotide_transformer(tmp_path / "nt", seed=3)
    rng = np.random.default_rng(4)
    cdnas = ["".join(rng.choice(list("ACGT"), n)) for n in (9, 40, 97, 6)]  # ragged; 97 bp = 16 six-mers + 1
    pd.DataFrame({"id": [f"t{i}" for i in range(4)], "sequence": cdnas}).to_parquet(tmp_path / "t.parquet")
    out = tmp_path / "t.zarr"
    assert (
        main(
            [
                "embed",
                "--input",
                str(tmp_path / "t.parquet"),
                "--modality",
                "rna",
                "--model",
                "nucleotide-transformer",
                "--model-path",
                str(model_dir),
                "--out",
                str(out),
                "--max-length",
                "10",
                "--keep",
                keep,
                "--max-batch",
                "4",
                "--num-workers",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    cache = open_cache(out)
    expected, truncated = _esm_direct(model_dir, cdnas, max_length=10, keep=keep)
    assert cache.extra("n_truncated")[:].tolist() == truncated and truncated[2] > 0
    _close_to_float16(cache.read_rows(np.arange(4)), np.stack(expected))
