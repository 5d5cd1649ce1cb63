"""Embedding on the GPU (`make test-gpu`): every adapter on CUDA against its CPU output, and a CUDA embed run
killed with SIGKILL after its first shard resuming to the bytes of a run that was never interrupted.

Every adapter runs through `dogmacache embed` on the tiny models of the real architectures (`make_tiny`), with
float32 storage, against the same command on the CPU in float32. Tolerances are on the worst item's relative L2
distance (`embed.fidelity.deviation`): float32 on CUDA with TF32 off (`full_fp32`), where only the order of
summation differs, within FP32_TOLERANCE; bf16 autocast on CUDA within BF16_TOLERANCE (bf16 keeps 8 bits of
mantissa; the full-size Enformer's bf16 deviation was 0.0087, README "On one GPU").
"""

from __future__ import annotations

import functools
import importlib.util
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from dogmacache.cache import open_cache
from dogmacache.cli import main
from dogmacache.embed.fidelity import deviation, full_fp32
from dogmacache.embed.tiny import DEMO_GENES, make_tiny
from gpu_device import DEVICE, GPU, cuda_only

pytestmark = GPU

FP32_TOLERANCE = 1e-4  # worst item's relative L2, CUDA float32 (TF32 off) against the CPU
BF16_TOLERANCE = 5e-2  # the same, CUDA bf16 autocast against the CPU in float32
CHROM_BP = 6000

# name -> (model, modality, input table, extra flags); "flashzoi" is its plain-PyTorch attention
CASES = {
    "enformer": ("enformer", "dna", "dna", ["--strand-policy", "rc-average"]),
    "borzoi": ("borzoi", "dna", "dna", ["--strand-policy", "rc-average"]),
    "flashzoi": ("flashzoi", "dna", "dna", ["--attention", "plain"]),
    "esm2": ("esm2", "protein", "protein", []),
    "esmc": ("esmc", "protein", "protein", []),
    "nucleotide-transformer": ("nucleotide-transformer", "dna", "dna", ["--window-bp", "600"]),
    "scgpt-gene": ("scgpt", "gene", "gene", []),
    "scgpt-context": ("scgpt", "context", "context", []),
    "kmer": ("kmer", "dna", "dna", ["--kmer-bins", "8"]),
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A random genome, a table per modality and every tiny model, written once."""
    root = tmp_path_factory.mktemp("gpu-embed")
    rng = np.random.default_rng(7)
    sequence = "".join(rng.choice(list("ACGT"), CHROM_BP))
    (root / "g.fa").write_text(">chr1\n" + "\n".join(sequence[i : i + 60] for i in range(0, CHROM_BP, 60)) + "\n")
    centers = [60, *rng.integers(1000, CHROM_BP - 1000, 9).tolist(), CHROM_BP - 30]  # both ends: N padding
    strands = ["+", "-"] * 5 + ["-"]
    pd.DataFrame(
        {"id": [f"w{i}" for i in range(11)], "chrom": "chr1", "center": centers, "strand": strands}
    ).to_parquet(root / "dna.parquet")
    amino = list("ACDEFGHIKLMNPQRSTVWY")
    proteins = ["".join(rng.choice(amino, n)) for n in (5, 17, 40, 9, 63, 28)]
    pd.DataFrame({"id": [f"p{i}" for i in range(6)], "sequence": proteins}).to_parquet(root / "protein.parquet")
    pd.DataFrame({"id": list(DEMO_GENES[:10])}).to_parquet(root / "gene.parquet")
    expression = rng.gamma(1.0, 20.0, (5, 12)) * (rng.random((5, 12)) > 0.3)  # zeros are dropped per profile
    context = pd.DataFrame(expression, columns=list(DEMO_GENES[:12]))
    context.insert(0, "id", [f"tissue{i}" for i in range(5)])
    context.to_parquet(root / "context.parquet")
    models = make_tiny(root / "models")
    return root, models


def embed_args(inputs, name: str, out, *flags: str) -> list[str]:
    root, models = inputs
    model, modality, table, extra = CASES[name]
    args = ["embed", "--input", str(root / f"{table}.parquet"), "--modality", modality, "--model", model]
    args += [] if model == "kmer" else ["--model-path", str(models[model])]
    args += ["--genome", str(root / "g.fa")] if modality == "dna" else []
    return [*args, *extra, "--out", str(out), "--no-progress", *flags]


def embed(inputs, name: str, out, device: str, precision: str, *flags: str) -> np.ndarray:
    """The float32 cache of one run, read back (per-position items keep their positions)."""
    args = ["--device", device, "--precision", precision, "--dtype", "float32", "--fidelity-items", "0"]
    args += ["--num-workers", "0", "--shard-items", "4", *flags]
    assert main(embed_args(inputs, name, out, *args)) == 0, name
    return open_cache(out)[:].astype(np.float32)


@pytest.fixture(scope="module")
def cpu_reference(inputs, tmp_path_factory):
    """Each case embedded once on the CPU in float32, on first use."""
    found: dict[str, np.ndarray] = {}

    def get(name: str) -> np.ndarray:
        if name not in found:
            found[name] = embed(inputs, name, tmp_path_factory.mktemp("cpu") / name, "cpu", "fp32")
        return found[name]

    return get


def assert_close(got: np.ndarray, want: np.ndarray, tolerance: float, what: str) -> None:
    assert got.shape == want.shape, what
    assert np.isfinite(got).all(), f"{what}: non-finite outputs"
    worst = deviation(got, want)["relative_l2_max"]
    assert worst <= tolerance, f"{what}: worst item's relative L2 {worst:.3g} > {tolerance:g}"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("name", list(CASES))
def test_adapter_on_the_device_equals_its_cpu_output(inputs, cpu_reference, tmp_path, name, precision):
    want = cpu_reference(name)
    assert np.abs(want).max() > 0 and len(np.unique(want.reshape(len(want), -1), axis=0)) > 1  # items differ
    with full_fp32():  # bf16 autocast is unaffected; float32 runs as written, no TF32
        got = embed(inputs, name, tmp_path / "c.zarr", str(DEVICE), precision)
    tolerance = FP32_TOLERANCE if precision == "fp32" else BF16_TOLERANCE
    assert_close(got, want, tolerance, f"{name} {precision} on {DEVICE}")


@cuda_only("flash-attn")
@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="flash-attn is not installed")
def test_flashzoi_flash_attention_equals_the_plain_cpu_output(inputs, cpu_reference, tmp_path):
    got = embed(inputs, "flashzoi", tmp_path / "c.zarr", str(DEVICE), "bf16", "--attention", "flash")
    cache = open_cache(tmp_path / "c.zarr")
    assert cache.manifest.config["options"]["attention"] == "flash"
    assert_close(got, cpu_reference("flashzoi"), BF16_TOLERANCE, "flashzoi flash-attn bf16")


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_enformer_embed_on_the_device_equals_its_cpu_output(inputs, cpu_reference, tmp_path, mode):
    """`embed --compile MODE` (rc-average: two compiled forwards per minus-strand batch) in bf16 against the CPU."""
    got = embed(inputs, "enformer", tmp_path / "c.zarr", str(DEVICE), "bf16", "--compile", mode)
    assert open_cache(tmp_path / "c.zarr").manifest.config["compile"] == mode
    assert_close(got, cpu_reference("enformer"), BF16_TOLERANCE, f"enformer --compile {mode} bf16 on {DEVICE}")


def test_layers_from_one_pass_on_the_device_equal_single_layer_runs(inputs, cpu_reference, tmp_path):
    """`embed --layers` on the device (each batch's copies collected one batch later): each layer's cache holds the
    bytes of the `--layer` run of that layer on the same device, and the trunk is the CPU's within tolerance."""
    with full_fp32():
        args = ["--device", str(DEVICE), "--precision", "fp32", "--dtype", "float32", "--fidelity-items", "0"]
        args += ["--num-workers", "0", "--shard-items", "4", "--layers", "conv_tower,trunk"]
        assert main(embed_args(inputs, "enformer", tmp_path / "{layer}.zarr", *args)) == 0
        for layer in ("conv_tower", "trunk"):
            alone = embed(inputs, "enformer", tmp_path / f"alone-{layer}.zarr", str(DEVICE), "fp32", "--layer", layer)
            together = open_cache(tmp_path / f"{layer}.zarr")[:].astype(np.float32)
            assert np.array_equal(together, alone), layer
    assert_close(together, cpu_reference("enformer"), FP32_TOLERANCE, f"enformer --layers trunk on {DEVICE}")


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_host_copies_from_the_device_equal_to_host(dtype):
    """`transfer.HostCopy` on the device (pinned memory, a copy queued behind the forward) gives `to_host`'s bytes,
    while a later batch is computed, and refuses NaN naming the item when read."""
    import torch
    from dogmacache.embed.transfer import HostCopy, to_host
    from dogmacache.errors import CacheError

    x = torch.randn(8, 64, 32, device=DEVICE)
    copy = HostCopy(x, dtype, [f"i{k}" for k in range(8)])
    later = x @ x.transpose(1, 2)  # more work queued on the device before the copy is read
    got, want = copy.result(), to_host(x, dtype, [f"i{k}" for k in range(8)])
    assert got.dtype == want.dtype and np.array_equal(got.view(np.uint8), want.view(np.uint8))
    assert float(later.float().abs().sum()) > 0
    x[5, 3, 1] = float("nan")
    with pytest.raises(CacheError, match="item 'i5' has NaN/Inf values"):
        HostCopy(x, dtype, [f"i{k}" for k in range(8)]).result()


# ---- a killed CUDA run resumes to the same bytes ---------------------------------------------------------------
RESUME_FLAGS = ["--shard-items", "2", "--max-batch", "2", "--num-workers", "2"]  # precision auto: bf16 on CUDA
# each shard write sleeps after it, so that the parent sees the first shard before the run ends
SLOW_WRITES = (
    "import sys, time\n"
    "from dogmacache.cache.writer import CacheWriter\n"
    "from dogmacache.cli import main\n"
    "write = CacheWriter.write_shard\n"
    "def slow(self, *args, **kwargs):\n"
    "    out = write(self, *args, **kwargs)\n"
    "    time.sleep(0.5)\n"
    "    return out\n"
    "CacheWriter.write_shard = slow\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def shards_done(path) -> int | None:
    """Shards with a recorded sha256 in a cache being written, None before its arrays exist."""
    import zarr

    try:
        digests = zarr.open_group(str(path), mode="r")["shard_sha256"][:]
    except Exception:  # not created yet, or caught mid-write: ask again
        return None
    return int(np.asarray(digests).any(axis=1).sum())


def same_bytes(a, b) -> None:
    x, y = open_cache(a), open_cache(b)
    assert x.manifest.complete and y.manifest.complete
    assert x.manifest.shards == y.manifest.shards  # sha256 of every shard's rows
    assert x.manifest.extra_arrays == y.manifest.extra_arrays
    assert np.array_equal(x[:].view(np.uint8), y[:].view(np.uint8))
    for name in x.manifest.extra_arrays:
        assert np.array_equal(np.asarray(x.extra(name)[:]), np.asarray(y.extra(name)[:])), name


def test_a_killed_run_on_the_device_resumes_to_the_bytes_of_an_uninterrupted_one(inputs, tmp_path):
    def argv(out):
        return [*embed_args(inputs, "enformer", out, "--device", str(DEVICE)), *RESUME_FLAGS]

    killed = tmp_path / "killed.zarr"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITES, *argv(killed)], stderr=subprocess.PIPE, text=True)
    deadline, done = time.time() + 120, None
    while time.time() < deadline and proc.poll() is None and not done:
        done = shards_done(killed)
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, f"the run ended before it was killed: {proc.stderr.read()}"
    partial = open_cache(killed, allow_partial=True)
    assert not partial.manifest.complete
    assert 1 <= shards_done(killed) < 6, "the kill came before the first shard or after the last"

    run = functools.partial(subprocess.run, capture_output=True, text=True, timeout=180)  # a hung run fails, alone
    resumed = run([sys.executable, "-m", "dogmacache.cli", *argv(killed)])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    whole = tmp_path / "whole.zarr"
    fresh = run([sys.executable, "-m", "dogmacache.cli", *argv(whole)])
    assert fresh.returncode == 0, fresh.stderr
    assert open_cache(whole).manifest.config["device"] == DEVICE.type
    same_bytes(killed, whole)
