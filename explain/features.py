"""Do the top-k bins land on annotated intervals (CTCF peaks, DHS, Hi-C anchors ...) more often than bins at the
same window positions in other windows? pyranges (the `explain` extra) does the interval work.

Position-matched background: item i's top-k bins sit at window positions S_i; the background is the bins at
S_i in every other window (each window once, whatever number of its items were explained). Windows are centred
on enhancers, and annotations crowd near them, so a background of random positions would credit any centred
ranking; this one asks only whether the ranking picks better than the same positions elsewhere.

The items of one window (an enhancer paired with several genes) share its bins and mostly their top bins, so
they are no independent draws: the p-value is a window-level permutation test. The windows' top bins are dealt
to other windows at random (the items of one window move together, each window's own flags are those of the
window it is dealt to), `PERMUTATIONS` times, seeded, and p = (1 + draws scoring at least the observed
fraction) / (1 + draws). With fewer than 2 windows there is no test.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
from dogmacache.contracts.windows import BinCoordinates
from dogmacache.embed.genome import chrom_alias
from dogmacache.errors import InputError

EXTRA = "pip install 'dogmacache[explain]' (or pyranges alone)"


def _pyranges():
    if importlib.util.find_spec("pyranges") is None:
        raise InputError(f"--features needs pyranges for the interval overlaps; {EXTRA}")
    import pyranges

    return pyranges


def read_bed(path: Path) -> pd.DataFrame:
    """The intervals (Chromosome, Start, End) of a BED file's first three columns (tab or space separated, plain or
    gzipped); `#` comments, blank, `track` and `browser` lines skipped. A line without a non-negative integer
    start and end, or with start > end, is one error naming the file, the line and the value."""
    if not path.is_file():
        raise InputError(f"--features {str(path)!r} does not exist; pass a BED file (chrom, start, end)")
    with open(path, "rb") as head:
        gzipped = head.read(2) == b"\x1f\x8b"
    chroms, starts, ends = [], [], []
    try:
        with gzip.open(path, "rt") if gzipped else open(path) as lines:
            for n, line in enumerate(lines, 1):
                if not line.strip() or line.startswith(("#", "track", "browser")):
                    continue
                fields = line.split(None, 3)
                if len(fields) < 3:
                    raise InputError(
                        f"{path} line {n}: {line.strip()[:60]!r} has {len(fields)} field(s); a BED line is "
                        "chrom<TAB>start<TAB>end"
                    )
                bounds = []
                for column, text in ((2, fields[1]), (3, fields[2])):
                    if not text.isdigit():
                        raise InputError(
                            f"{path} line {n} column {column} ({('start', 'end')[column - 2]}): {text!r} is not a "
                            "non-negative integer; a BED line is chrom<TAB>start<TAB>end, 0-based"
                        )
                    bounds.append(int(text))
                if bounds[0] >= bounds[1]:  # an empty interval covers no base, and overlaps no bin as pyranges sees it
                    raise InputError(
                        f"{path} line {n}: start {bounds[0]} is not before end {bounds[1]}; a BED interval has start < "
                        "end (0-based, half-open: it covers bases start+1..end): fix or drop it"
                    )
                chroms.append(fields[0])
                starts.append(bounds[0])
                ends.append(bounds[1])
    except UnicodeDecodeError as err:
        raise InputError(
            f"{path} is not a text BED file (bytes at offset {err.start} do not decode as text: a parquet or other "
            "binary file?); pass a BED file of chrom, start, end"
        ) from None
    if not chroms:
        raise InputError(f"{path} holds no intervals; pass a BED file with chrom, start, end")
    return pd.DataFrame(
        {
            "Chromosome": chroms,
            "Start": np.asarray(starts, dtype=np.int64),
            "End": np.asarray(ends, dtype=np.int64),
        }
    )


class FeatureSet:
    """The intervals of a BED file (first three columns), checked to use the windows' chromosome names."""

    def __init__(self, path: str | Path, window_chroms: set[str]):
        path = Path(path)
        table = read_bed(path)
        pr = _pyranges()
        bed_chroms = set(table["Chromosome"])
        # a name the windows' tracks spell the other way (chr1 / 1, chrM / MT) is read as theirs: one rule for
        # every stage (`genome.chrom_alias`)
        renamed = {c: chrom_alias(c) for c in bed_chroms - window_chroms if chrom_alias(c) in window_chroms}
        if renamed:
            example = sorted(renamed)[0]
            print(
                f"explain: {path} names {len(renamed)} chromosome(s) as the tracks do not (e.g. {example!r}, "
                f"{renamed[example]!r} in the tracks): read as the tracks name them"
            )
            table = table.assign(Chromosome=table["Chromosome"].map(lambda c: renamed.get(c, c)))
            bed_chroms = set(table["Chromosome"])
        if not bed_chroms & window_chroms:
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


PERMUTATIONS = 5000  # window-level draws of the permutation test


class FeatureOverlap:
    """Per item: its window, and its top-k bins per ranking; per window: the feature flags of all its bins.
    `result` compares them."""

    def __init__(self, features: FeatureSet, rankings: tuple[str, ...], seed: int = 0):
        self.features, self.rankings, self.seed = features, rankings, seed
        self.window_flags: dict[str, np.ndarray] = {}  # per window (B,) bool
        self.windows: list[str] = []  # per item
        self.top: dict[str, list[np.ndarray]] = {r: [] for r in rankings}

    def add(self, coordinates: BinCoordinates, top: dict[str, np.ndarray], window: str) -> None:
        if window not in self.window_flags:
            self.window_flags[window] = self.features.bin_flags(coordinates)
        self.windows.append(window)
        for name in self.rankings:
            self.top[name].append(np.asarray(top[name]))

    def result(self) -> dict:
        names = {w: k for k, w in enumerate(self.window_flags)}
        flags = np.stack(list(self.window_flags.values()))  # (W, B)
        of_item = np.array([names[w] for w in self.windows])  # (n,) window of each item
        n_windows = len(names)
        column = flags.sum(axis=0)  # per position: windows whose bin there overlaps a feature
        out = {
            "features": str(self.features.path),
            "n_intervals": self.features.n_intervals,
            "n_items": len(of_item),
            "n_windows": n_windows,
            "fraction_of_all_bins": float(flags.mean()),
        }
        for name in self.rankings:
            top = np.stack(self.top[name])  # (n, k)
            own = flags[of_item[:, None], top]  # (n, k)
            hits, total = int(own.sum()), own.size
            entry = {"top_bins": total, "top_bins_on_feature": hits, "fraction": hits / total}
            if n_windows > 1:
                background = float(((column[top] - own) / (n_windows - 1)).mean())
                rng = np.random.default_rng(self.seed)  # the same deals for every ranking, drawn one at a time
                null = np.array(
                    [flags[rng.permutation(n_windows)[of_item][:, None], top].sum() for _ in range(PERMUTATIONS)]
                )
                entry.update(
                    background_fraction=background,
                    enrichment=hits / total / background if background > 0 else float("nan"),
                    permutation_p_greater=float((1 + (null >= hits).sum()) / (1 + len(null))),
                    permutations=len(null),
                    null_mean_fraction=float(null.mean() / total),
                )
            out[name] = entry
        return out
