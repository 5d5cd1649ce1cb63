"""Borzoi and Flashzoi (embed/adapters/borzoi.py) on tiny models whose every weight is random.

- The cache equals borzoi-pytorch's own forward (`return_embeddings=True`, the layer before the heads) on windows
  cut by hand: over a chromosome's start and end (N padding), and a minus-strand item averaged with its reverse
  complement. Flashzoi's reference is the library's Borzoi with its attention written out here head by head
  (rotary as complex multiplication): flash-attn does not run on a CPU, and the adapter's plain path must compute
  what flash-attn's module does.
- Strict loading: a weights file without one key is refused in one line naming it.
- End to end: demo windows embedded with the tiny Borzoi into a cache, and CDT trained on that cache.
"""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import write_cache
from dogmacache.cache import open_cache
from dogmacache.cli import main
from dogmacache.embed.adapters.borzoi import (
    BorzoiAdapter,
    BorzoiOptions,
    FlashzoiAdapter,
    FlashzoiOptions,
    write_tiny_borzoi,
    write_tiny_flashzoi,
)
from dogmacache.errors import ModelError, WeightsMismatchError
from torch import nn

CHROM_BP = {"chr1": 3000}
WRITERS = {"borzoi": write_tiny_borzoi, "flashzoi": write_tiny_flashzoi}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("borzoi")
    return {name: write(root / name, seed=1) for name, write in WRITERS.items()}


@pytest.fixture(scope="module")
def genome(tmp_path_factory):
    root = tmp_path_factory.mktemp("borzoi-genome")
    sequence = "".join(np.random.default_rng(5).choice(list("ACGT"), CHROM_BP["chr1"]))
    (root / "g.fa").write_text(">chr1\n" + "\n".join(sequence[i : i + 60] for i in range(0, len(sequence), 60)) + "\n")
    return root / "g.fa", sequence


class ReferenceAttention(nn.Module):
    """flash-attn's MHA as borzoi-pytorch configures it, written out: grouped heads (2 query heads per key/value
    head), the first 128 features of each query/key head turned by position x 20,000^(-2i/128) as complex numbers
    (feature i the real part, i + 64 the imaginary part), softmax(q k^T / sqrt(d)) v per head."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.kv, self.d = heads, heads // 2, dim // heads
        self.mha = nn.Module()
        self.mha.Wqkv = nn.Linear(dim, self.d * (heads + 2 * self.kv))
        self.mha.out_proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, _ = x.shape
        h, kv, d = self.heads, self.kv, self.d
        qkv = self.mha.Wqkv(x)
        q = qkv[..., : h * d].unflatten(-1, (h, d))
        k = qkv[..., h * d : (h + kv) * d].unflatten(-1, (kv, d))
        v = qkv[..., (h + kv) * d :].unflatten(-1, (kv, d))
        theta = torch.arange(n, dtype=torch.float32)[:, None] * 20_000.0 ** (-torch.arange(64) * 2 / 128)
        turn = torch.polar(torch.ones_like(theta), theta)[None, :, None, :]

        def rope(t):
            z = torch.complex(t[..., :64], t[..., 64:128]) * turn
            return torch.cat([z.real, z.imag, t[..., 128:]], dim=-1)

        q, k = rope(q), rope(k)
        out = torch.empty(b, n, h, d)
        for head in range(h):
            group = head // (h // kv)
            weights = torch.softmax(q[:, :, head] @ k[:, :, group].transpose(1, 2) / d**0.5, dim=-1)
            out[:, :, head] = weights @ v[:, :, group]
        return self.mha.out_proj(out.flatten(2))


def library_model(name: str, folder):
    """The tiny model as borzoi-pytorch loads it (Flashzoi: the library's Borzoi with ReferenceAttention)."""
    from borzoi_pytorch import Borzoi
    from borzoi_pytorch.config_borzoi import BorzoiConfig
    from safetensors.torch import load_file

    if name == "borzoi":
        return Borzoi.from_pretrained(str(folder)).eval()
    config = BorzoiConfig.from_pretrained(str(folder))
    model = Borzoi(BorzoiConfig(**{**config.to_dict(), "flashed": False}))
    for block in model.transformer:
        block[0].fn[1] = ReferenceAttention(config.dim, config.heads)
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    return model.eval()


def _one_hot(sequence: str) -> torch.Tensor:
    return torch.tensor([[b == "A", b == "C", b == "G", b == "T"] for b in sequence], dtype=torch.float32).T


@pytest.mark.parametrize("name", ["borzoi", "flashzoi"])
def test_cache_equals_the_library_forward(tiny, genome, tmp_path, name):
    fasta, sequence = genome
    size, window = CHROM_BP["chr1"], 768  # the tiny models' default: 524,288 bp scaled to 8 bins
    centers, strands = [100, size - 50, size // 2], ["+", "+", "-"]  # start, end, minus (rc-average)
    pd.DataFrame({"id": ["start", "end", "minus"], "chrom": "chr1", "center": centers, "strand": strands}).to_parquet(
        tmp_path / "dna.parquet"
    )
    out = tmp_path / "dna.zarr"
    args = ["--input", str(tmp_path / "dna.parquet"), "--modality", "dna", "--model", name, "--out", str(out)]
    args += ["--model-path", str(tiny[name]), "--genome", str(fasta), "--strand-policy", "rc-average"]
    assert main(["embed", *args, "--dtype", "float32", "--num-workers", "0", "--no-progress"]) == 0
    cache = open_cache(out)
    options = cache.manifest.config["options"]
    assert options["window_bp"] == window and options["strand_policy"] == "rc-average"
    assert options.get("attention") == ("plain" if name == "flashzoi" else None)
    assert cache.item_shape == (8, 1920) and cache.manifest.config["bin_bp"] == 32

    seqs = []  # the reference windows around the 1-based centres, cut here by hand
    for center in centers:
        start = center - 1 - window // 2
        seqs.append("".join(sequence[i] if 0 <= i < size else "N" for i in range(start, start + window)))
    padded = [seq.count("N") for seq in seqs]
    complement = seqs[2][::-1].translate(str.maketrans("ACGTN", "TGCAN"))
    model = library_model(name, tiny[name])
    with torch.no_grad():  # one batch: the three windows and the minus item's reverse complement
        rows = model(torch.stack([_one_hot(s) for s in (*seqs, complement)]), return_embeddings=True)[1]
    rows = rows.transpose(1, 2).numpy()
    want = np.stack([rows[0], rows[1], (rows[2] + rows[3][::-1]) / 2])
    assert padded[0] > 0 and padded[1] > 0 and padded[2] == 0
    assert cache.extra("n_padded")[:].tolist() == padded
    got = cache.read_rows(np.arange(3))
    assert np.abs(want[0] - want[2]).max() > 1e-2  # the windows differ, so equal outputs mean the same windows
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_strict_load_names_a_missing_key_in_one_line(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text((tiny["borzoi"] / "config.json").read_text())
    state = load_file(str(tiny["borzoi"] / "model.safetensors"))
    state.pop("separable0.conv_layer.1.weight")
    save_file(state, folder / "model.safetensors")
    with pytest.raises(WeightsMismatchError) as err:  # mutate says it as its --dna-model (model_load_error)
        BorzoiAdapter(str(folder), BorzoiOptions(), torch.device("cpu"))
    message = str(err.value)
    assert "\n" not in message and "does not match the Borzoi in" in message
    assert ": 1 missing (e.g. separable0.conv_layer.1.weight); point --model-path at the folder" in message


def test_the_model_name_and_the_window_are_checked(tiny):
    cpu = torch.device("cpu")
    with pytest.raises(ModelError, match="holds a flashzoi.*use --model flashzoi"):
        BorzoiAdapter(str(tiny["flashzoi"]), BorzoiOptions(), cpu)
    with pytest.raises(ModelError, match="multiple of 128 covering at least 8 bins"):
        BorzoiAdapter(str(tiny["borzoi"]), BorzoiOptions(window_bp=700), cpu)
    with pytest.raises(ModelError, match="needs flash-attn on a CUDA device"):
        FlashzoiAdapter(str(tiny["flashzoi"]), FlashzoiOptions(attention="flash"), cpu)
    shorter = BorzoiAdapter(str(tiny["borzoi"]), BorzoiOptions(window_bp=384), cpu)  # 12 bins of 32 bp hold the 8
    assert shorter.embed([{"index": np.zeros(384, np.uint8), "n_padded": np.int32(0)}])[0].shape == (1, 8, 1920)


def test_a_borzoi_cache_trains_cdt(tiny, tmp_path):
    from dogmacache.data_recipes.demo import build_demo
    from dogmacache.demo import demo_config
    from dogmacache.train.run import run_training

    recipe = tmp_path / "recipe"
    build_demo(recipe)
    labels = pd.read_parquet(recipe / "cdt" / "labels.parquet")
    keep = labels.drop_duplicates("enhancer").groupby("split").head(2)["enhancer"]  # 2 windows per split
    windows = pd.read_parquet(recipe / "cdt" / "dna_windows.parquet")
    windows[windows["id"].isin(keep)].to_parquet(tmp_path / "windows.parquet")
    labels[labels["enhancer"].isin(keep)].to_parquet(tmp_path / "labels.parquet")
    cache = tmp_path / "dna-borzoi.zarr"
    args = ["--input", str(tmp_path / "windows.parquet"), "--modality", "dna", "--model", "borzoi"]
    args += ["--model-path", str(tiny["borzoi"]), "--genome", str(recipe / "genome.fa"), "--out", str(cache)]
    assert main(["embed", *args, "--num-workers", "0", "--no-progress"]) == 0
    assert open_cache(cache).item_shape == (8, 1920)
    genes = pd.read_parquet(recipe / "cdt" / "genes.parquet")["id"].astype(str).tolist()
    rng = np.random.default_rng(0)
    tables = {}
    for modality in ("gene", "protein"):
        tables[modality] = tmp_path / f"{modality}.zarr"
        write_cache(
            tables[modality], rng.normal(size=(len(genes), 16)).astype(np.float32), ids=genes, modality=modality
        )
    config = demo_config(tmp_path, {"dna": cache, "dna_kmer": cache, **tables}, epochs=2)
    config = dataclasses.replace(
        config,
        data=dataclasses.replace(
            config.data, labels=str(tmp_path / "labels.parquet"), dna_table=str(tmp_path / "windows.parquet")
        ),
        train=dataclasses.replace(config.train, controls=(), control_caches=(), batch_size=8),
    )
    summary = run_training(config, progress=False)
    cdt = summary["models"]["cdt"]
    train_pairs = labels["enhancer"].isin(keep) & (labels["split"] == "train")
    assert summary["counts"]["train"] == train_pairs.sum() and np.isfinite(cdt["test"]["pearson"])


@pytest.mark.gpu
def test_flash_attention_agrees_with_the_plain_path_on_cuda(tiny):
    pytest.importorskip("flash_attn")
    cuda = torch.device("cuda")
    flash = FlashzoiAdapter(str(tiny["flashzoi"]), FlashzoiOptions(attention="flash"), cuda)
    plain = FlashzoiAdapter(str(tiny["flashzoi"]), FlashzoiOptions(attention="plain"), cuda)
    batch = [{"index": np.random.default_rng(0).integers(0, 4, 768).astype(np.uint8), "n_padded": np.int32(0)}]
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        a, b = flash.embed(batch)[0].float(), plain.embed(batch)[0].float()
    assert flash.options.attention == "flash" and plain.options.attention == "plain"
    assert ((a - b).norm() / b.norm()).item() < 2e-2  # bf16 kernels apart


def test_the_receipts_reference_under_flash_attention_is_the_plain_model_on_the_same_weights(tiny, genome):
    """flash-attn runs in bf16 or fp16 only; the fidelity receipt's float32 forward (`adapter.eager()`) puts the
    same weights into a Flashzoi with plain attention for its block. Here (no flash-attn) the loaded plain model
    stands for the flash one: the trunk refuses float32 while `flash` is set, not inside the block, and the
    model is back after it."""
    from dogmacache.embed.adapters import get_adapter
    from dogmacache.errors import ModelError

    cls = get_adapter("flashzoi", "dna")
    adapter = cls(str(tiny["flashzoi"]), cls.options_class(attention="plain"), torch.device("cpu"))
    x = torch.stack([_one_hot("ACGT" * 192)])
    with torch.no_grad():
        want = adapter.trunk(x)
        loaded, adapter.flash = adapter.model, True
        with pytest.raises(ModelError, match="--attention flash runs in bf16 or fp16 only"):
            adapter.trunk(x)
        with adapter.eager():
            assert adapter.model is not loaded and not adapter.flash
            got = adapter.trunk(x)
    assert adapter.model is loaded and adapter.flash
    assert torch.equal(got, want)


def test_rc_average_windows_reused_from_a_cache_keep_a_full_embeds_bytes(tiny, genome, tmp_path):
    """Under rc-average a minus window costs two forwards: with a budget of several windows per batch (a GPU's
    default) plus and minus windows are batched apart, each batch filled out to one shape, so a row's numbers do
    not depend on its neighbours and rows copied by --reuse equal the ones a full embed computes."""
    fasta, _ = genome
    size = CHROM_BP["chr1"]
    rng = np.random.default_rng(3)
    centers, strands = rng.integers(1, size, 35), rng.choice(["+", "-"], 35)
    table = pd.DataFrame({"chrom": "chr1", "center": centers, "strand": strands})
    table.iloc[:30].assign(id=[f"o{i}" for i in range(30)]).to_parquet(tmp_path / "old.parquet")
    new = table.iloc[5:].sample(frac=1.0, random_state=1)  # 25 old windows in another order, 5 new
    new.assign(id=[f"n{i}" for i in range(30)]).to_parquet(tmp_path / "new.parquet")

    def embed(name, out, *extra):
        args = ["embed", "--input", str(tmp_path / f"{name}.parquet"), "--modality", "dna", "--model", "borzoi"]
        args += ["--model-path", str(tiny["borzoi"]), "--genome", str(fasta), "--strand-policy", "rc-average"]
        args += ["--max-tokens", str(4 * 768), "--dtype", "float32", "--shard-items", "4", "--num-workers", "0"]
        assert main([*args, "--out", str(tmp_path / out), "--no-progress", *extra]) == 0
        return open_cache(tmp_path / out)

    embed("old", "old")
    full, reused = embed("new", "full"), embed("new", "reused", "--reuse", str(tmp_path / "old"))
    assert [r["rows"] for r in reused.manifest.reused] == [25]
    assert np.array_equal(full[:].view(np.uint8), reused[:].view(np.uint8))
    assert full.manifest.shards == reused.manifest.shards


def test_only_rc_average_caches_carry_the_batching_mark(tiny):
    """Forward windows are batched as before: their caches stay resumable and reusable across the change."""
    from dogmacache.embed.adapters import get_adapter

    cls = get_adapter("borzoi", "dna")
    marks = {
        policy: cls(str(tiny["borzoi"]), cls.options_class(strand_policy=policy), torch.device("cpu"))
        .info()
        .config.get("batching")
        for policy in ("forward", "rc-average")
    }
    assert marks == {"forward": None, "rc-average": "rc-average windows apart"}
