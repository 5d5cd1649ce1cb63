"""DNA windows cut from a genome FASTA: the model's full input length centred on a position.

Coordinates: a window of `length` bp centred on the 1-based `center` is `contracts/windows.py`'s
(`window_start0`). Soft-masked lowercase is upper-cased;
positions past a chromosome end are padded with N and counted per item (never invented sequence).
The FASTA is opened lazily in each process (DataLoader and dask workers must not share a file handle).
Its index (`.fai`) is the one beside it when that one describes the file (`index_fits`: not older than the FASTA,
its records ending where the file's sequence does), else built (again) there; in a read-only folder it is built
once into the user's cache folder (`fai_cache_dir`), named after the FASTA's path, size and mtime. A FASTA that
cannot be indexed (ragged lines, two records of one name) is an InputError saying how to mend it.
Its digest (`genome_digest`) identifies the contents a cache was cut from; it is kept beside the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
from dogmacache.contracts.provenance import file_sha256
from dogmacache.contracts.windows import window_start0
from dogmacache.errors import InputError

VALID_DNA = frozenset("ACGTN")


_VALID_BYTES = np.zeros(256, dtype=bool)
_VALID_BYTES[[ord(b) for b in VALID_DNA]] = True


def check_dna(seq: str, item: str) -> None:
    """An InputError naming `item` and its first characters other than A, C, G, T, N (a byte-table lookup:
    a 2 kb window in ~2 us, where a set of its characters took ~20 us)."""
    if _VALID_BYTES[np.frombuffer(seq.encode("ascii", errors="replace"), dtype=np.uint8)].all():
        return
    bad = set(seq) - VALID_DNA
    if bad:
        raise InputError(
            f"item {item!r} has characters {sorted(bad)[:5]} outside A, C, G, T, N; "
            "replace ambiguity codes with N (or clean the input) and re-run"
        )


def chrom_alias(chrom: str) -> str:
    """The other common spelling of a chromosome's name (UCSC / Ensembl): chr1 <-> 1, chrM <-> MT. A table and a
    genome (or chrom.sizes) may each use either; every stage resolves a name through this one rule."""
    return {"chrM": "MT", "MT": "chrM"}.get(chrom) or (chrom[3:] if chrom.startswith("chr") else f"chr{chrom}")


class Genome:
    """A FASTA opened on first use in each process; chromosome names as the FASTA has them, plus the other
    convention (`chr1` <-> `1`, `chrM` <-> `MT`) when only that one is present."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"genome FASTA {str(self.path)!r} does not exist; pass it with --genome")
        if self.path.suffix == ".gz":
            raise InputError(
                f"{self.path} is gzip-compressed; random access needs a plain FASTA: gunzip it first "
                "(or bgzip it and install biopython for pyfaidx)"
            )
        with open(self.path, "rb") as fh:
            first = fh.read(1)
        if first != b">":
            raise InputError(
                f"{self.path} is not a FASTA file (it starts with {first!r}, not '>'); pass the genome FASTA "
                "the windows are cut from with --genome"
            )
        self._fasta = None
        self._pid = None

    def __getstate__(self):  # workers reopen the file
        return {"path": self.path, "_fasta": None, "_pid": None}

    @property
    def fasta(self):
        if self._fasta is None or self._pid != os.getpid():
            from pyfaidx import Fasta, FastaIndexingError

            index = self._index()
            try:
                self._fasta = Fasta(
                    str(self.path), indexname=index, sequence_always_upper=True, as_raw=True, rebuild=False
                )
            except (FastaIndexingError, ValueError) as err:  # a duplicate record name is a ValueError
                raise unindexable(self.path, err) from None
            self._pid = os.getpid()
        return self._fasta

    def _index(self) -> str:
        """The `.fai` to open: beside the FASTA if it describes the file (`index_fits`), else built there (an
        older one replaced) when the folder can be written, else one built once in the user's cache folder. An
        InputError saying how to make one when neither can be written."""
        beside = self.path.with_name(self.path.name + ".fai")
        if beside.is_file() and index_fits(self.path, beside):
            return str(beside)
        if os.access(self.path.parent, os.W_OK):
            try:
                build_index(self.path, beside)
                return str(beside)
            except OSError:  # e.g. an old index another user owns: build one in the cache folder instead
                pass
        stat = self.path.stat()
        key = hashlib.sha256(f"{self.path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()
        kept = fai_cache_dir() / f"{self.path.name}.{key[:20]}.fai"
        if kept.is_file():
            return str(kept)
        try:
            kept.parent.mkdir(parents=True, exist_ok=True)
            build_index(self.path, kept)
        except OSError as err:
            raise InputError(
                f"genome FASTA {str(self.path)!r} has no up-to-date index (.fai) and neither its folder nor "
                f"{kept.parent} can be written ({err.strerror or err}); make one with `samtools faidx {self.path}`, "
                "copy the FASTA to a writable folder, or set XDG_CACHE_HOME to a writable folder"
            ) from err
        return str(kept)

    @property
    def chromosomes(self) -> list[str]:
        return list(self.fasta.keys())

    def resolve(self, chrom: str) -> str:
        names = self.fasta.keys()
        if chrom in names:
            return chrom
        alias = chrom_alias(chrom)
        if alias in names:
            return alias
        shown = ", ".join(list(names)[:8]) + (" ..." if len(names) > 8 else "")
        raise InputError(f"chromosome {chrom!r} is not in {self.path} (it has {shown}); check the genome build")

    def length(self, chrom: str) -> int:
        return len(self.fasta[self.resolve(chrom)])

    def window(self, chrom: str, center: int, length: int) -> tuple[str, int]:
        """(sequence of `length` bp, number of N added past the chromosome ends). A centre outside the
        chromosome is an InputError: the window would hold no sequence at all."""
        name = self.resolve(chrom)
        record = self.fasta[name]
        size = len(record)
        if not 1 <= int(center) <= size:
            raise InputError(
                f"centre {int(center):,} is outside chromosome {chrom!r} (1..{size:,}); check the table's "
                "coordinates and genome build, or drop the row"
            )
        return self.span(name, window_start0(int(center), length), length)

    def span(self, chrom: str, start0: int, length: int) -> tuple[str, int]:
        """(`length` bases from 0-based `start0`, N past either chromosome end; how many such N)."""
        record = self.fasta[self.resolve(chrom)]
        size, end = len(record), start0 + length
        lo, hi = min(max(0, start0), size), max(0, min(size, end))  # a span wholly off the chromosome: no bases
        bases = record[lo:hi] if lo < hi else ""
        left = min(length, max(0, -start0))
        return "N" * left + bases + "N" * (length - left - len(bases)), length - len(bases)


def index_fits(fasta: Path, fai: Path) -> bool:
    """Whether `fai` describes `fasta` as it is now: not older than it (htslib's test), and every record it lists
    ending inside the file, the last where the file's sequence ends (nothing but line ends after it). A FASTA
    replaced in place fails this; its old index would cut windows at the old file's byte offsets."""
    try:
        stat = fasta.stat()
        size = stat.st_size
        if fai.stat().st_mtime_ns < stat.st_mtime_ns:
            return False
        end = 0
        for line in fai.read_text().splitlines():
            length, offset, bases, width = (int(field) for field in line.split("\t")[1:5])
            if length > 0 and bases > 0:  # the byte after the record's last base (its line end not counted)
                full, rest = divmod(length - 1, bases)
                end = max(end, offset + full * width + rest + 1)
            else:  # an empty record: its sequence would start at `offset`
                end = max(end, offset)
        if not 0 < end <= size or size - end > 4096:
            return False
        with open(fasta, "rb") as fh:
            fh.seek(end)
            return not fh.read().strip()
    except (OSError, ValueError):  # unreadable, or not a .fai: build a new one
        return False


def build_index(fasta: Path, target: Path) -> None:
    """Write `fasta`'s `.fai` to `target`, whole or not at all (another process may be building the same index).
    OSError when `target` cannot be written; InputError for a FASTA that cannot be indexed."""
    from pyfaidx import Faidx, FastaIndexingError

    part = target.with_name(f"{target.name}.{os.getpid()}.part")
    try:
        Faidx(str(fasta), indexname=str(part), rebuild=False).close()
        os.replace(part, target)
    except (FastaIndexingError, ValueError) as err:  # a duplicate record name is a ValueError
        raise unindexable(fasta, err) from None
    finally:
        part.unlink(missing_ok=True)


def unindexable(fasta: Path, err: Exception) -> InputError:
    """The one-line error for a FASTA pyfaidx cannot index, saying how to mend it."""
    message = str(err).splitlines()[0] if str(err) else type(err).__name__
    duplicate = re.match(r'Duplicate key "(.*)"', message)
    if duplicate:
        return InputError(
            f"genome FASTA {str(fasta)!r} has more than one record named {duplicate[1]!r}; a window names its "
            "chromosome, so names must be unique: rename or drop the duplicates (e.g. `seqkit rmdup -n`) and re-run"
        )
    return InputError(
        f"genome FASTA {str(fasta)!r} cannot be indexed ({message[:160]}); random access needs the lines of each "
        f"record to have one length: re-wrap it (`seqkit seq -w 60 {fasta} > fixed.fa`; `samtools faidx` names "
        "any other problem) and pass the fixed file with --genome"
    )


def fai_cache_dir() -> Path:
    """Where indexes of FASTAs in read-only folders are kept: `$XDG_CACHE_HOME/dogmacache/fai` (default
    `~/.cache/dogmacache/fai`)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dogmacache" / "fai"


def genome_digest(path: str | os.PathLike) -> str:
    """ "sha256:<hex>" of a genome FASTA, kept beside it in `<name>.sha256` (with the file's size and mtime) so a
    3 GB FASTA is hashed once, not on every run; hashed again whenever the size or mtime differ. A folder that
    cannot be written to only costs the hashing."""
    path = Path(path)
    stat = path.stat()
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    sidecar = path.with_name(path.name + ".sha256")
    try:
        kept = json.loads(sidecar.read_text())
        if {k: kept.get(k) for k in stamp} == stamp and str(kept.get("sha256", "")).startswith("sha256:"):
            return kept["sha256"]
    except (OSError, ValueError):
        pass
    digest = file_sha256(path)
    try:
        sidecar.write_text(json.dumps({**stamp, "sha256": digest}) + "\n")
    except OSError:
        pass
    return digest
