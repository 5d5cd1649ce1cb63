"""Outputs to the host (`embed/transfer.py`): `HostCopy` gives `to_host`'s bytes and errors, later; every storage
dtype; NaN/Inf and float16 overflow name the item. (`tests/test_gpu_embed.py` runs the CUDA path.)"""

import numpy as np
import pytest
import torch
from dogmacache.embed.transfer import HostCopy, to_host
from dogmacache.errors import CacheError


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_a_host_copy_gives_to_hosts_bytes(dtype):
    x = torch.randn(3, 5, 4)
    ids = ["a", "b", "c"]
    copy = HostCopy(x, dtype, ids)
    want = to_host(x, dtype, ids)
    got = copy.result()
    assert got.dtype == want.dtype and np.array_equal(got.view(np.uint8), want.view(np.uint8))
    assert copy.result() is got  # asked twice: the same array
    # and both are the cast's own bits, taken apart from transfer.py (bfloat16 as its int16 bits)
    cast = x.to(getattr(torch, dtype))
    bits = (cast.view(torch.int16) if dtype == "bfloat16" else cast).numpy()
    assert got.shape == (3, 5, 4) and got.tobytes() == bits.tobytes()
    if dtype == "bfloat16":
        assert np.allclose(got.astype(np.float32), x.numpy(), rtol=1 / 128)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_nan_is_refused_naming_the_item_when_the_copy_is_read(dtype):
    x = torch.randn(3, 4)
    x[1, 2] = float("inf")
    copy = HostCopy(x, dtype, ["a", "b", "c"])  # queued: nothing raised yet
    with pytest.raises(CacheError, match=r"item 'b' has NaN/Inf values .*1 of the 3 items"):
        copy.result()


def test_float16_overflow_is_refused_naming_the_item():
    x = torch.zeros(2, 3)
    x[1, 0] = 1e6
    with pytest.raises(CacheError, match=r"item 'y' has values beyond float16's range.*--dtype float32"):
        HostCopy(x, "float16", ["x", "y"]).result()
    assert np.isfinite(HostCopy(x, "float32", ["x", "y"]).result()).all()  # float32 holds it


def test_an_output_beyond_bfloat16s_range_is_refused_as_beyond_float16s_is():
    out = torch.ones(2, 3)
    out[1, 0] = 3.4e38  # finite in float32, inf once cast to bfloat16
    with pytest.raises(CacheError, match=r"item 'b' has values beyond bfloat16's range \(\|x\| > 3.38953e\+38\)"):
        to_host(out, "bfloat16", ["a", "b"])
