"""Genome-browser tracks: bedGraph always, bigWig when pyBigWig is installed (the `explain` extra).

bedGraph: a `track type=bedGraph` line, then `chrom<TAB>start<TAB>end<TAB>value` with 0-based half-open
coordinates, sorted, no two lines overlapping (bigWig conversion and IGV both need that). Bins that lie past a
chromosome end (padding) are left out.

`TrackAverage` averages many windows' scores on the genome: where windows overlap, each base gets the mean of
the scores of every window covering it (segments cut at every bin edge), so the result never overlaps itself.
"""

from __future__ import annotations

import importlib.util
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
from dogmacache.contracts.windows import BinCoordinates

BEDGRAPH_COLUMNS = ["chrom", "start", "end", "value"]


def has_bigwig() -> bool:
    return importlib.util.find_spec("pyBigWig") is not None


def write_bedgraph(path: Path, track: pd.DataFrame, name: str, description: str) -> Path:
    """Write a (chrom, start, end, value) frame as a bedGraph with a track line; returns the path."""
    track = track.sort_values(["chrom", "start"], kind="stable")
    with open(path, "w") as out:
        out.write(
            f'track type=bedGraph name="{name}" description="{description}" visibility=full '
            "autoScale=on alwaysZero=on\n"
        )
        for chrom, start, end, value in track[BEDGRAPH_COLUMNS].itertuples(index=False):
            out.write(f"{chrom}\t{int(start)}\t{int(end)}\t{float(value):.6g}\n")
    return path


def read_bedgraph(path: Path) -> pd.DataFrame:
    """A bedGraph as (chrom, start, end, value), track and comment lines skipped."""
    rows = [
        line.split("\t")
        for line in Path(path).read_text().splitlines()
        if line and not line.startswith(("track", "browser", "#"))
    ]
    frame = pd.DataFrame(rows, columns=BEDGRAPH_COLUMNS)
    return frame.astype({"start": np.int64, "end": np.int64, "value": np.float64})


def window_track(coordinates: BinCoordinates, values: np.ndarray) -> pd.DataFrame:
    """One window's scores (B,) as a track frame, bins past a chromosome end dropped."""
    keep = coordinates.inside
    return pd.DataFrame(
        {
            "chrom": coordinates.chrom,
            "start": coordinates.start[keep],
            "end": coordinates.end[keep],
            "value": np.asarray(values, dtype=np.float64)[keep],
        }
    )


class TrackAverage:
    """The mean over windows of their scores at each base; `add` one window at a time."""

    def __init__(self) -> None:
        self._parts: dict[str, list[pd.DataFrame]] = defaultdict(list)

    def add(self, track: pd.DataFrame) -> None:
        for chrom, part in track.groupby("chrom", sort=False):
            self._parts[str(chrom)].append(part[["start", "end", "value"]])

    def result(self) -> pd.DataFrame:
        out = []
        for chrom in sorted(self._parts):
            parts = pd.concat(self._parts[chrom])
            start, end, value = (parts[c].to_numpy() for c in ("start", "end", "value"))
            edges = np.unique(np.concatenate([start, end]))
            # +value / +1 where an interval opens, - where it closes; running sums give each segment's cover
            total = np.zeros(len(edges))
            count = np.zeros(len(edges))
            np.add.at(total, np.searchsorted(edges, start), value)
            np.add.at(total, np.searchsorted(edges, end), -value)
            np.add.at(count, np.searchsorted(edges, start), 1)
            np.add.at(count, np.searchsorted(edges, end), -1)
            total, count = np.cumsum(total)[:-1], np.cumsum(count)[:-1]
            covered = count > 0.5
            out.append(
                pd.DataFrame(
                    {
                        "chrom": chrom,
                        "start": edges[:-1][covered],
                        "end": edges[1:][covered],
                        "value": total[covered] / count[covered],
                    }
                )
            )
        return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=BEDGRAPH_COLUMNS)


def write_bigwig(path: Path, track: pd.DataFrame, chrom_sizes: dict[str, int] | None) -> Path:
    """The same track as a bigWig (needs pyBigWig). Chromosomes without a known size get the track's last end."""
    import pyBigWig

    track = track.sort_values(["chrom", "start"], kind="stable")
    chroms = list(dict.fromkeys(track["chrom"]))
    sizes = [(c, int((chrom_sizes or {}).get(c) or track.loc[track["chrom"] == c, "end"].max())) for c in chroms]
    writer = pyBigWig.open(str(path), "w")
    try:
        writer.addHeader(sizes)
        for chrom in chroms:
            part = track[track["chrom"] == chrom]
            writer.addEntries(
                [chrom] * len(part),
                part["start"].astype(int).tolist(),
                ends=part["end"].astype(int).tolist(),
                values=part["value"].astype(float).tolist(),
            )
    finally:
        writer.close()
    return path
