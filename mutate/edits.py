"""Sequence edits and the edited DNA windows they make.

An edit replaces the reference bases [start0, start0 + len(ref)) of a chromosome by `alt` (0-based here; users
write 1-based positions). Three spellings: `chr:pos ref>alt` (an SNV or a small indel; alt `-` or empty = the
ref bases deleted), `chr:start-end` (a deletion of the 1-based inclusive range; its ref bases are read from the
genome) and VCF records (CHROM POS ID REF ALT, one ALT each). The ref bases must match the genome.

An edited window keeps the reference window's first base and length: edits are applied to the reference from
that base on, and the result is cut to the window length (a deletion pulls in bases from the right, an
insertion pushes them out); past a chromosome end the window is padded with N, as `embed/genome.py` does.
"""

from __future__ import annotations

import dataclasses
import gzip
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dogmacache.contracts.windows import window_holds
from dogmacache.embed.genome import Genome
from dogmacache.errors import InputError

_SNV = re.compile(r"^(?P<chrom>[^:\s]+):(?P<pos>[\d,]+)\s*(?P<ref>[ACGTNacgtn]+)>(?P<alt>[ACGTNacgtn]*|-)$")
_RANGE = re.compile(r"^(?P<chrom>[^:\s]+):(?P<start>[\d,]+)-(?P<end>[\d,]+)$")
_BASES = re.compile(r"^[ACGTN]+$")


@dataclass(frozen=True)
class Edit:
    chrom: str  # as the genome names it (resolved)
    start0: int  # 0-based first reference base replaced
    ref: str  # reference bases replaced (checked against the genome)
    alt: str  # bases put in their place ("" = deletion)
    label: str  # as the user wrote it

    @property
    def end0(self) -> int:
        return self.start0 + len(self.ref)


_GROUPED = re.compile(r"^(\d+|\d{1,3}(,\d{3})+)$")  # 1000 or 1,000: commas between thousands only


def _number(text: str, what: str, spec: str) -> int:
    if not _GROUPED.match(text):  # "1,5" would read as 15, another base that may hold the same REF
        raise InputError(
            f"edit {spec!r}: {what} {text!r} is not a number (digits, with commas only between thousands, e.g. "
            "1,000,000); fix its spelling"
        )
    value = int(text.replace(",", ""))
    if value < 1:
        raise InputError(f"edit {spec!r}: {what} {value} is not a 1-based position (>= 1); positions start at 1")
    return value


def parse_edit(spec: str, genome: Genome) -> Edit:
    """One `chr:pos ref>alt` or `chr:start-end` edit, its ref bases checked against `genome`."""
    text = spec.strip()
    if m := _SNV.match(text):
        chrom, pos = genome.resolve(m["chrom"]), _number(m["pos"], "position", spec)
        alt = "" if m["alt"] == "-" else m["alt"].upper()
        return unanchored(check_ref(Edit(chrom, pos - 1, m["ref"].upper(), alt, text), genome))
    if m := _RANGE.match(text):
        chrom = genome.resolve(m["chrom"])
        start, end = _number(m["start"], "start", spec), _number(m["end"], "end", spec)
        if end < start:
            raise InputError(f"edit {spec!r}: end {end:,} is before start {start:,}; write chr:start-end, start <= end")
        ref = reference(genome, chrom, start - 1, end - start + 1)
        return check_ref(Edit(chrom, start - 1, ref, "", text), genome)  # past the chromosome's end: refused
    raise InputError(
        f"edit {spec!r} is not `chr:pos REF>ALT` (e.g. chr1:1000 A>G, chr1:1000 AT>-) nor a "
        "deletion `chr:start-end` (1-based, inclusive); fix its spelling"
    )


def read_vcf(path: str | Path, genome: Genome) -> list[Edit]:
    """Edits from a VCF's records (plain or gzipped); one ALT per record; symbolic ALTs refused by line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"VCF {str(path)!r} does not exist; pass the path of a .vcf or .vcf.gz")
    with open(path, "rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    with gzip.open(path, "rt") if gzipped else open(path) as fh:
        lines = list(enumerate(fh, 1))
    edits = []
    for n, line in lines:
        if line.startswith("#") or not line.strip():
            continue
        cols = line.rstrip("\n").split("\t")
        if len(cols) < 5:
            raise InputError(
                f"{path} line {n}: {len(cols)} tab-separated fields; a VCF record has at least 5 (CHROM POS ID REF ALT)"
            )
        chrom, pos, _, ref, alt = cols[:5]
        ref, alt = ref.upper(), alt.upper()
        if not pos.isdigit() or int(pos) < 1:
            raise InputError(f"{path} line {n} column 2 (POS): {pos!r} is not a 1-based position")
        if not _BASES.match(ref) or not _BASES.match(alt):
            raise InputError(
                f"{path} line {n}: REF {ref!r} / ALT {alt!r} are not plain bases (one ALT of A, C, G, "
                "T, N; symbolic or multiple ALTs are not supported): split or normalise the VCF"
            )
        label = f"{chrom}:{pos} {ref}>{alt}"
        edit = Edit(genome.resolve(chrom), int(pos) - 1, ref, alt, label)
        edits.append(unanchored(check_ref(edit, genome, where=f"{path} line {n}: ")))  # VCF indels carry an anchor
    if not edits:
        raise InputError(f"{path} holds no VCF record; pass a VCF with at least one variant")
    return edits


def unanchored(edit: Edit) -> Edit:
    """The edit without the bases its REF and ALT begin with alike (a VCF indel's anchor base, `T>TGGGG`'s T):
    the same edited sequence, written as what changes, so that the matched edits of its control (`null.py`) insert
    or delete those bases alone rather than also changing the base they would sit on. An edit whose REF equals its
    ALT (no change) is kept as written."""
    if edit.ref == edit.alt:
        return edit
    k = 0
    while k < min(len(edit.ref), len(edit.alt)) and edit.ref[k] == edit.alt[k]:
        k += 1
    return dataclasses.replace(edit, start0=edit.start0 + k, ref=edit.ref[k:], alt=edit.alt[k:]) if k else edit


def reference(genome: Genome, chrom: str, start0: int, length: int) -> str:
    """`length` reference bases from 0-based `start0`, N past either chromosome end (`Genome.span`)."""
    return genome.span(chrom, start0, length)[0]


def check_ref(edit: Edit, genome: Genome, where: str = "") -> Edit:
    size = genome.length(edit.chrom)
    if edit.end0 > size:
        raise InputError(
            f"{where}edit {edit.label!r} reaches past the end of {edit.chrom} ({size:,} bp); check the "
            "position and the genome build"
        )
    found = reference(genome, edit.chrom, edit.start0, len(edit.ref))
    if found != edit.ref:
        raise InputError(
            f"{where}edit {edit.label!r}: the genome ({genome.path.name}) has {found} at "
            f"{edit.chrom}:{edit.start0 + 1:,}, not the ref allele {edit.ref}; check the genome build "
            "or the allele"
        )
    return edit


def in_window(edit: Edit, chrom: str, start0: int, length: int) -> bool:
    """The edit lies wholly inside the window [start0, start0 + length) of `chrom`; an insertion between two of its
    bases (one before its first base would shift the whole window, one after its last would change nothing)."""
    return edit.chrom == chrom and bool(window_holds(start0, length, edit.start0, edit.end0))


def edited_window(genome: Genome, chrom: str, start0: int, length: int, edits: Sequence[Edit]) -> tuple[str, int]:
    """(the window of `length` bp from 0-based `start0` with `edits` applied, N added past chromosome ends)."""
    ordered = sorted(edits, key=lambda e: (e.start0, e.end0))  # an insertion before an edit of the base it precedes
    for a, b in zip(ordered, ordered[1:], strict=False):
        if b.start0 < a.end0:
            raise InputError(f"edits {a.label!r} and {b.label!r} overlap; apply them as one edit or in separate runs")
    extra = sum(max(0, len(e.ref) - len(e.alt)) for e in ordered)  # bases a deletion pulls in from the right
    seq = reference(genome, chrom, start0, length + extra)
    for edit in reversed(ordered):
        a = edit.start0 - start0
        seq = seq[:a] + edit.alt + seq[a + len(edit.ref) :]
    size = genome.length(chrom)
    # the N past the end close the edited sequence (no edit reaches them); those an insertion pushes out of the
    # window are not in it
    right = max(0, max(0, start0 + length + extra - size) - (len(seq) - length))
    return seq[:length], max(0, -start0) + right


class WindowSource:
    """Stands in for the genome in one prepared row: returns a given (edited) window for that row's request."""

    def __init__(self, sequence: str, n_padded: int):
        self.sequence, self.n_padded = sequence, n_padded

    def window(self, chrom: str, center: int, length: int) -> tuple[str, int]:
        assert length == len(self.sequence), "the edited window was cut for another window length"
        return self.sequence, self.n_padded
