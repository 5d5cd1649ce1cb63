"""A package's names, imported from their modules when first used (PEP 562), so that importing one light module of
a package (a stage's `cli`, `cache.storage`) does not import torch, zarr or matplotlib through the package's
`__init__`. `dogmacache --help` and every command's start pay only for what that command runs."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_names(namespace: dict[str, Any], homes: dict[str, tuple[str, ...]]) -> tuple[list[str], Callable[[str], Any]]:
    """(`__all__`, `__getattr__`) for the package whose `globals()` is `namespace`; `homes` maps each of its
    submodules to the names it exports. A name is imported on first use and kept in the package."""
    package = namespace["__name__"]
    where = {name: module for module, names in homes.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    return sorted(where), __getattr__
