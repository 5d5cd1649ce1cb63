"""dogmacache: run frozen DNA/RNA/protein foundation models once into Zarr caches, then train small
cross-omics bridges (CDT, IsoFormer, CDBridge, Bio-DTA) from those caches on cheap hardware.

Subpackages: `cache` (the Zarr cache: the contract between embed and train), `embed`, `train`, `data_recipes`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dogmacache")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
