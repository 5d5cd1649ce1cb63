"""Do the top-k bins land on annotated intervals (CTCF peaks, DHS, Hi-C anchors ...) more often than bins at the
same window positions in other items? pyranges (the `explain` extra) does the interval work.

Position-matched background: item i's top-k bins sit at window positions S_i; the background is the bins at
S_i in every other item's window. Windows are centred on enhancers, and annotations crowd near them, so a
background of random positions would credit any centred ranking; this one asks only whether the ranking picks
better than the same positions elsewhere. Bins of different windows are not independent draws, so the binomial
p-value reported is a guide, not a test to trust at face value.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
from dogmacache.contracts.windows import BinCoordinates
from dogmacache.errors import InputError

EXTRA = "pip install 'dogmacache[explain]' (or pyranges alone)"


def _pyranges():
    if importlib.util.find_spec("pyranges") is None:
        raise InputError(f"--features needs pyranges for the interval overlaps; {EXTRA}")
    import pyranges

    return pyranges


def _alias(chrom: str) -> str:
    if chrom in ("chrM", "MT"):
        return {"chrM": "MT", "MT": "chrM"}[chrom]
    return chrom[3:] if chrom.startswith("chr") else f"chr{chrom}"


class FeatureSet:
    """The intervals of a BED file (first three columns), checked to use the windows' chromosome names."""

    def __init__(self, path: str | Path, window_chroms: set[str]):
        pr = _pyranges()
        path = Path(path)
        if not path.is_file():
            raise InputError(f"--features {str(path)!r} does not exist; pass a BED file (chrom, start, end)")
        try:
            table = pd.read_csv(
                path,
                sep="\t",
                header=None,
                comment="#",
                usecols=[0, 1, 2],
                names=["Chromosome", "Start", "End"],
                dtype={0: str},
            )
            table = table[~table["Chromosome"].str.startswith(("track", "browser"))]
            table = table.astype({"Start": np.int64, "End": np.int64})
        except (ValueError, pd.errors.ParserError) as err:
            raise InputError(f"{path} is not a BED file with integer start and end in columns 2-3 ({err})") from err
        if table.empty:
            raise InputError(f"{path} holds no intervals; pass a BED file with chrom, start, end")
        bed_chroms = set(table["Chromosome"])
        if not bed_chroms & window_chroms:
            renamed = {_alias(c) for c in bed_chroms} & window_chroms
            if renamed:
                example = sorted(bed_chroms)[0]
                fix = (
                    "sed -E 's/^chrM/MT/; s/^chr//'"
                    if example.startswith("chr")
                    else 'awk \'BEGIN{OFS="\\t"} {$1 = ($1 == "MT" ? "chrM" : "chr" $1); print}\''
                )
                raise InputError(
                    f"{path} names chromosomes like {example!r} but the windows use "
                    f"{_alias(example)!r}; rename them: {fix} {path.name} > renamed.bed"
                )
            raise InputError(
                f"{path} shares no chromosome with the windows (it has {sorted(bed_chroms)[:4]}, they "
                f"use {sorted(window_chroms)[:4]}); pass intervals on the same genome build"
            )
        self.path = path
        self.n_intervals = len(table)
        self.ranges = pr.PyRanges(table)

    def bin_flags(self, coordinates: BinCoordinates) -> np.ndarray:
        """(B,) True where a bin overlaps at least one interval (bins past a chromosome end: False)."""
        pr = _pyranges()
        keep = np.flatnonzero(coordinates.inside)
        bins = pr.PyRanges(
            pd.DataFrame(
                {
                    "Chromosome": coordinates.chrom,
                    "Start": coordinates.start[keep],
                    "End": coordinates.end[keep],
                    "Bin": keep,
                }
            )
        )
        hits = bins.overlap(self.ranges).df
        flags = np.zeros(len(coordinates.start), dtype=bool)
        if len(hits):
            flags[hits["Bin"].to_numpy(np.int64)] = True
        return flags


class FeatureOverlap:
    """Per item: the feature flags of all its bins and its top-k bins per ranking; `result` compares them."""

    def __init__(self, features: FeatureSet, rankings: tuple[str, ...]):
        self.features, self.rankings = features, rankings
        self.flags: list[np.ndarray] = []  # per item (B,) bool: n * B bits in all
        self.top: dict[str, list[np.ndarray]] = {r: [] for r in rankings}

    def add(self, coordinates: BinCoordinates, top: dict[str, np.ndarray]) -> None:
        self.flags.append(self.features.bin_flags(coordinates))
        for name in self.rankings:
            self.top[name].append(np.asarray(top[name]))

    def result(self) -> dict:
        from scipy.stats import binomtest

        flags = np.stack(self.flags)  # (n, B)
        n = len(flags)
        column = flags.sum(axis=0)  # per position: items whose bin there overlaps a feature
        out = {
            "features": str(self.features.path),
            "n_intervals": self.features.n_intervals,
            "n_items": n,
            "fraction_of_all_bins": float(flags.mean()),
        }
        for name in self.rankings:
            top = np.stack(self.top[name])  # (n, k)
            own = np.take_along_axis(flags, top, axis=1)  # (n, k)
            hits, total = int(own.sum()), own.size
            entry = {"top_bins": total, "top_bins_on_feature": hits, "fraction": hits / total}
            if n > 1:
                background = float(((column[top] - own) / (n - 1)).mean())
                entry.update(
                    background_fraction=background,
                    enrichment=hits / total / background if background > 0 else float("nan"),
                    binomial_p_greater=float(binomtest(hits, total, background, "greater").pvalue)
                    if 0 < background < 1
                    else float("nan"),
                )
            out[name] = entry
        return out
