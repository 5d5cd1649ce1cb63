"""DNA window geometry, defined once: which genomic bases each output bin of a window covers.

Every stage takes these from here (recipes' `dna_windows` tables and coding masks, `embed/genome.py` cutting
windows, `explain`, `mutate`):

- `center` is 1-based (as recipes write it); c0 = center - 1 is the same base 0-based. A TSS-centred window has
  the transcript's first base as its centre: the GTF start on '+', the GTF end on '-' (`tss`).
- A window of `span_bp` bases covers the 0-based half-open [c0 - span_bp // 2, c0 - span_bp // 2 + span_bp). The
  model's input window and its output span are both centred this way, so the output bins of a model that crops
  its input symmetrically (Enformer: 896 bins of 128 bp = the central 114,688 bp of 196,608; Borzoi: 6,144 bins
  of 32 bp = the central 196,608 bp of 524,288) follow from
  span_bp = n_bins * bin_bp alone; the centre base is the first base of bin n_bins // 2 (for an odd n_bins it lies
  half a bin into it).
- Bin k covers [w0 + k * bin_bp, w0 + (k + 1) * bin_bp) with w0 the window's first base, in "reference"
  orientation (bin 0 = lowest coordinate, on both strands: what the embed stage writes, since it reads the
  reference strand and flips reverse-complement outputs back). In "transcript" orientation minus-strand windows
  are reversed, so bin 0 is the 5'-most (highest-coordinate) bin.
- Offsets from the centre are measured from the window's midpoint w0 + span_bp / 2 to a bin's middle, signed
  along the item's strand: positive = downstream on that strand. For an even span_bp the midpoint is c0 (the left
  edge of the centre base); for an odd one it is the middle of the centre base, c0 + 0.5, so that a '-' window's
  offsets in transcript order equal a '+' window's in reference order for every span.
- Clipping: a bin is cut to [0, chrom_size); a bin wholly past a chromosome end lies on padding (N) and has no
  coordinates (`inside` False).

Shapes: B bins per window; every function takes one window and returns arrays over its bins (B,).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from dogmacache.errors import InputError

ORIENTATIONS = ("reference", "transcript")
STRANDS = ("+", "-")

# Borzoi and Flashzoi (borzoi-pytorch; docs/papers.md#borzoi-and-flashzoi): a 524,288 bp input window in, the
# central 6,144 bins of 32 bp (196,608 bp) out; the trunk halves the input 7 times, so an input window is a
# multiple of 128 bp (one transformer position), and the central crop of the 32 bp bins is symmetric.
BORZOI_WINDOW_BP = 524_288
BORZOI_BINS = 6_144
BORZOI_BIN_BP = 32
BORZOI_STRIDE_BP = 128


@dataclass(frozen=True)
class WindowGeometry:
    """The output bins of a window: `n_bins` bins of `bin_bp` bases, centred on the item's `center`."""

    n_bins: int  # B, model output positions per window (Enformer 896; the demo 8)
    bin_bp: int = 128  # bases per bin (Enformer 128)
    orientation: str = "reference"  # bin order of the cache: reference | transcript (see the module docstring)

    def __post_init__(self) -> None:
        if self.n_bins < 1 or self.bin_bp < 1:
            raise InputError(f"a window needs n_bins >= 1 and bin_bp >= 1, got {self.n_bins} and {self.bin_bp}")
        if self.orientation not in ORIENTATIONS:
            raise InputError(f"bin orientation {self.orientation!r} is not one of {ORIENTATIONS}; pick one of them")

    @property
    def span_bp(self) -> int:
        return self.n_bins * self.bin_bp


# A window's id in the recipes' tables: "chrom:center:strand" (readable, and the same in every run over the same
# coordinates). Its site, "chrom:center", is what its two strands share: a window is cut from the reference strand,
# so both read the same bases (the two strands of a bidirectional promoter)
def window_site_id(chrom: pd.Series, center: pd.Series) -> pd.Series:
    """The "chrom:center" site of each window (`window_id` without the strand)."""
    return chrom.astype(str) + ":" + center.astype(str)


def window_id(site: pd.Series, strand: pd.Series) -> pd.Series:
    """The "chrom:center:strand" id of each window at `site` (`window_site_id`)."""
    return site + ":" + strand.astype(str)


def site_of(ids: pd.Series) -> pd.Series:
    """The site of each window id (its trailing ":+" or ":-" removed; an id of another form as it is)."""
    return ids.str.replace(r":[+-]$", "", regex=True)


def strand_of(ids: pd.Series) -> list[str]:
    """The strand each window id ends with, "." where it names none (an id of another form)."""
    return [w.rsplit(":", 1)[-1] if w.rsplit(":", 1)[-1] in STRANDS else "." for w in ids.astype(str)]


def window_start0(center: int | np.ndarray, span_bp: int) -> int | np.ndarray:
    """0-based first base of a `span_bp` window centred on the 1-based `center` (an int, or an array of them)."""
    if isinstance(center, np.ndarray):
        return center.astype(np.int64) - 1 - span_bp // 2
    return int(center) - 1 - span_bp // 2


def interval_center(start0: int | np.ndarray, end0: int | np.ndarray) -> int | np.ndarray:
    """1-based `center` of a window centred on the 0-based half-open interval [start0, end0): the base whose left
    edge is the interval's midpoint, so that the window's midpoint is the interval's (of the two middle bases of an
    even-length interval, the right one). A 1-based inclusive [start, stop] is [start - 1, stop)."""
    return (start0 + end0) // 2 + 1


def window_label(chrom: str, center: int, span_bp: int) -> str:
    """The window as people write it: "chrom:first-last", 1-based inclusive, with thousands separators."""
    start0 = window_start0(int(center), span_bp)
    return f"{chrom}:{start0 + 1:,}-{start0 + span_bp:,}"


def window_holds(window_start: int | np.ndarray, span_bp: int, start0: int, end0: int) -> bool | np.ndarray:
    """Whether the window(s) starting at 0-based `window_start` hold all of 0-based half-open [start0, end0); an
    empty span (an insertion before base `start0`) only between two of their bases: before the first it would shift
    the whole window, after the last it would change nothing in it."""
    if start0 == end0:
        return (window_start < start0) & (start0 < window_start + span_bp)
    return (window_start <= start0) & (end0 <= window_start + span_bp)


def tss(start: int | np.ndarray, end: int | np.ndarray, strand: str | np.ndarray) -> int | np.ndarray:
    """1-based transcription start of GTF features [start, end] (1-based inclusive): `start` on '+', `end` on
    '-'; arrays are taken element by element."""
    if isinstance(strand, str):
        _check_strand(strand)
        return int(start) if strand == "+" else int(end)
    return np.where(np.asarray(strand) == "+", start, end)


def orient_bins(values: np.ndarray, strands: str | np.ndarray, orientation: str) -> np.ndarray:
    """Per-bin values computed in reference order (last axis = bins, (B,) for one window or (T, B) for T) put in
    `orientation`: "transcript" reverses the bins of minus-strand windows, "reference" keeps them. Returns a new
    array."""
    if orientation not in ORIENTATIONS:
        raise InputError(f"bin orientation {orientation!r} is not one of {ORIENTATIONS}; pick one of them")
    out = np.array(values, copy=True)
    if orientation == "reference":
        return out
    if out.ndim == 1:
        return out[::-1].copy() if str(strands) == "-" else out
    minus = np.asarray(strands) == "-"
    out[minus] = out[minus, ::-1]
    return out


def bin_of(position0: int, center: int, strand: str, geometry: WindowGeometry) -> int | None:
    """The bin (in `geometry`'s orientation) that holds 0-based `position0` in the window centred on 1-based
    `center`; None when the window does not hold it."""
    _check_strand(strand)
    offset = int(position0) - window_start0(int(center), geometry.span_bp)
    if not 0 <= offset < geometry.span_bp:
        return None
    k = offset // geometry.bin_bp
    return int(_reference_order(np.asarray(k), geometry, strand))


def _check_strand(strand: str) -> None:
    if strand not in STRANDS:
        raise InputError(f"strand {strand!r} is not one of {STRANDS}; fix the dna_windows table's strand column")


def _reference_order(k: np.ndarray, geometry: WindowGeometry, strand: str) -> np.ndarray:
    """Bin indices as they lie on the reference (0 = lowest coordinate)."""
    if geometry.orientation == "transcript" and strand == "-":
        return geometry.n_bins - 1 - k
    return k


@dataclass(frozen=True)
class BinCoordinates:
    """Where each bin of one window lies: 0-based half-open [start, end) per bin (B,), clipped to the chromosome;
    `inside` False for bins wholly past a chromosome end (their start == end); `offset_bp` the signed distance of
    the bin's middle from the window centre along the item's strand (unclipped)."""

    chrom: str
    start: np.ndarray  # (B,) int64
    end: np.ndarray  # (B,) int64
    inside: np.ndarray  # (B,) bool
    offset_bp: np.ndarray  # (B,) float64


def bin_coordinates(
    chrom: str, center: int, strand: str, geometry: WindowGeometry, chrom_size: int | None = None
) -> BinCoordinates:
    """Genomic coordinates of every bin of the window at (chrom, 1-based center, strand).

    `chrom_size` None: the chromosome end is unknown and only the start (position 0) clips."""
    _check_strand(strand)
    k = _reference_order(np.arange(geometry.n_bins), geometry, strand)
    w0 = window_start0(center, geometry.span_bp)
    start = w0 + k * geometry.bin_bp
    end = start + geometry.bin_bp
    midpoint = w0 + geometry.span_bp / 2.0  # c0 for an even span, the centre base's middle for an odd one
    middle = (start + end) / 2.0
    offset = (middle - midpoint) if strand == "+" else (midpoint - middle)
    upper = np.iinfo(np.int64).max if chrom_size is None else int(chrom_size)
    clipped_start, clipped_end = np.clip(start, 0, upper), np.clip(end, 0, upper)
    return BinCoordinates(
        chrom=str(chrom), start=clipped_start, end=clipped_end, inside=clipped_end > clipped_start, offset_bp=offset
    )


def bin_offsets(geometry: WindowGeometry) -> np.ndarray:
    """(B,) signed distance (bp) of each bin's middle from the centre, along the strand, for a '+' window in
    reference order; the same for a '-' window in transcript order (bins listed 5' to 3' on its strand)."""
    k = np.arange(geometry.n_bins)
    return k * geometry.bin_bp + geometry.bin_bp / 2.0 - geometry.span_bp / 2.0  # as `bin_coordinates` measures
