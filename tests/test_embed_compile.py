"""`dogmacache embed --compile MODE`: Enformer's forward through torch.compile, recorded in the manifest, with the
fidelity receipt measured against the eager forward; adapters without fixed batch shapes refuse it in one line.
The compiled run itself takes about a minute on 2 CPU cores (inductor builds C++ kernels), so it is `slow`; the
GPU suite runs it on CUDA (`tests/test_gpu_embed.py`, `tests/test_gpu_compile.py`)."""

import numpy as np
import pandas as pd
import pytest
from dogmacache.cache import open_cache
from dogmacache.cli import main
from dogmacache.embed.adapters.enformer import write_tiny_enformer
from dogmacache.embed.fidelity import deviation, sample_rows
from dogmacache.embed.tiny import write_tiny_esm2


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compile")
    rng = np.random.default_rng(4)
    (root / "g.fa").write_text(">chr1\n" + "".join(rng.choice(list("ACGT"), 6000)) + "\n")
    centers = np.linspace(100, 5900, 10).astype(int)
    windows = {"id": [f"w{i}" for i in range(10)], "chrom": "chr1", "center": centers, "strand": ["+", "-"] * 5}
    pd.DataFrame(windows).to_parquet(root / "dna.parquet")
    pd.DataFrame({"id": ["p1", "p2"], "sequence": ["MKV", "MKVLA"]}).to_parquet(root / "protein.parquet")
    return root, write_tiny_enformer(root / "enformer"), write_tiny_esm2(root / "esm2")


def dna_args(inputs, out, *flags):
    root, enformer, _ = inputs
    return [
        *("embed", "--input", str(root / "dna.parquet"), "--modality", "dna", "--model", "enformer"),
        *("--model-path", str(enformer), "--genome", str(root / "g.fa"), "--out", str(out)),
        *("--device", "cpu", "--dtype", "float32", "--max-batch", "4", "--shard-items", "4"),
        *("--strand-policy", "rc-average", "--num-workers", "0", "--no-progress", *flags),
    ]


def test_compile_is_refused_by_a_model_without_fixed_batch_shapes(inputs, tmp_path, capsys):
    root, _, esm2 = inputs
    argv = ["embed", "--input", str(root / "protein.parquet"), "--modality", "protein", "--model", "esm2"]
    argv += ["--model-path", str(esm2), "--out", str(tmp_path / "p.zarr"), "--compile", "default", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "--compile default: Esm2 runs eager only" in err and "enformer" in err, err
    assert not (tmp_path / "p.zarr").exists()


@pytest.mark.slow
def test_compiled_enformer_equals_eager_and_its_receipt_is_against_eager(inputs, tmp_path):
    assert main(dna_args(inputs, tmp_path / "eager.zarr")) == 0
    assert main(dna_args(inputs, tmp_path / "compiled.zarr", "--compile", "default")) == 0
    eager, compiled = open_cache(tmp_path / "eager.zarr"), open_cache(tmp_path / "compiled.zarr")
    assert (eager.manifest.config["compile"], compiled.manifest.config["compile"]) == ("off", "default")
    a, b = eager[:], compiled[:]
    assert np.abs(a).max() > 0 and np.abs(a - b).max() <= 1e-5 * np.abs(a).max()
    assert eager.manifest.fidelity["relative_l2_max"] == 0.0  # the eager run is its own float32 reference
    # against the eager forward (the eager cache's float32 rows, same batches), not against itself: a receipt
    # measured on the compiled outputs would be 0.0 where the compiled and eager rows differ
    sample, _ = sample_rows(np.arange(len(a)), len(a), compiled.manifest.fidelity["items"])
    want = deviation(b[sample], a[sample])["relative_l2_max"]
    assert 0.0 < want <= 1e-5 and compiled.manifest.fidelity["relative_l2_max"] == pytest.approx(want, rel=1e-6)
    # the compiler is no number setting: an eager cache is resumed by a compiled run (values move by rounding)
    assert main(dna_args(inputs, tmp_path / "eager.zarr", "--compile", "default")) == 0
