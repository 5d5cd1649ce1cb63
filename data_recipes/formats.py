"""Readers for the public file formats the recipes start from, checked by header name, never by position.

Every reader names the file (and the column) when something is wrong: a missing column, a wrong header,
a truncated gzip; tables come back indexed by their line number in the file, so a later check on a value
names the file, line and column (`cell`, `numbers`). Formats (see data_recipes/README.md):
GCT 1.2 (GTEx), tab-separated tables with a header
(GTEx sample attributes, Gasperini results), FASTA (UCSC genome, Ensembl cDNA/peptide, UniProt), Ensembl GTF.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
from dogmacache.errors import InputError

_TRUNCATED = (EOFError, zlib.error, gzip.BadGzipFile)


def open_source(path: str | Path, binary: bool = False):
    """A plain or gzipped source file opened for text (or bytes); an InputError when it does not exist."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"source file {str(path)!r} does not exist; download it or pass --source-dir")
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if binary:
        return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")  # noqa: SIM115
    # utf-8-sig: a byte-order mark some editors write reads as nothing, not as part of the first column's name
    encoding = "utf-8-sig"
    return gzip.open(path, "rt", encoding=encoding) if magic == b"\x1f\x8b" else open(path, encoding=encoding)  # noqa: SIM115


@contextmanager
def open_text(path: str | Path) -> Iterator[io.TextIOBase]:
    """Text lines of a plain or gzipped file; a truncated or corrupt gzip becomes an InputError naming it."""
    path = Path(path)
    try:
        with open_source(path) as fh:
            yield fh
    except _TRUNCATED as err:
        raise InputError(f"{path} is truncated or not valid gzip ({err}); delete it and download it again") from err


def header_of(path: str | Path, comment_lines: int = 0, sep: str = "\t") -> list[str]:
    with open_text(path) as fh:
        for _ in range(comment_lines):
            fh.readline()
        line = fh.readline()
    if not line:
        raise InputError(f"{path} is empty; expected a header line")
    return line.rstrip("\n").rstrip("\r").split(sep)


def require_columns(path: str | Path, found: Sequence[str], required: Sequence[str]) -> None:
    missing = [c for c in required if c not in found]
    if missing:
        shown = ", ".join(found[:12]) + (" ..." if len(found) > 12 else "")
        raise InputError(
            f"{path} has no column {missing[0]!r}"
            + (f" (nor {missing[1:]})" if len(missing) > 1 else "")
            + f"; its header has: {shown}. Is it the right file and release?"
        )


def read_table(
    path: str | Path,
    required: Sequence[str],
    *,
    usecols: Sequence[str] | None = None,
    dtype: dict | None = None,
    comment_lines: int = 0,
    na_values: Sequence[str] = ("NA", ""),
) -> pd.DataFrame:
    """A tab-separated table with a header; `required` columns must be present (by name). The index is each
    row's line number. Every line must have as many fields as the header (`FieldCheck`): a line cut short would
    read as empty values, and one with a field too many would put each later value under the next column's name."""
    found = header_of(path, comment_lines)
    require_columns(path, found, required)
    first_line = comment_lines + 2
    try:
        with _checked_bytes(path, found, first_line) as fh:
            table = pd.read_csv(
                fh,
                sep="\t",
                skiprows=comment_lines,
                usecols=list(usecols or required),
                index_col=False,
                dtype=dtype,
                na_values=list(na_values),
                keep_default_na=False,
                low_memory=False,
                skip_blank_lines=False,
                encoding="utf-8-sig",
                quoting=csv.QUOTE_NONE,  # a quote is a character: lines split as FieldCheck counts them
            )
    except _TRUNCATED as err:
        raise InputError(f"{path} is truncated or not valid gzip ({err}); delete it and download it again") from err
    except (ValueError, pd.errors.ParserError) as err:
        reason = " ".join(str(err).split())
        raise InputError(f"{path} could not be parsed as a tab-separated table: {reason}") from err
    table.index = pd.RangeIndex(first_line, first_line + len(table))
    return table


CR_LINE_ENDS = -1  # FieldCheck's field count for a file whose lines end in a lone '\r'


class FieldCheck:
    """Each line's tab-separated fields against the header's count, as blocks of bytes pass (numpy finds the tabs
    and newlines: a Python loop over millions of lines is slower; about 1 ms per MB). `feed` and `end` return
    (line number, fields) of the first line from `first_line` on whose count differs, or None; a blank line has 0
    fields."""

    def __init__(self, n_fields: int, first_line: int) -> None:
        self.n_fields, self.first_line = n_fields, first_line
        self.line, self.carry = 1, b""

    def feed(self, block: bytes) -> tuple[int, int] | None:
        data = np.frombuffer(self.carry + block, dtype=np.uint8)
        ends = np.flatnonzero(data == 10)  # (lines,) positions of '\n'
        if not len(ends):
            self.carry = bytes(data)
            return None
        tabs_before = np.searchsorted(np.flatnonzero(data == 9), ends)  # (lines,) tabs before each '\n'
        fields = np.diff(tabs_before, prepend=0) + 1
        starts = np.concatenate([[0], ends[:-1] + 1])
        length = ends - starts - (data[np.maximum(ends - 1, 0)] == 13)  # a CRLF line's '\r' is no content
        fields[length <= 0] = 0  # a blank line
        returns = np.flatnonzero(data[:-1] == 13)
        lone = returns[data[returns + 1] != 10]  # a '\r' not before '\n': a line end pandas takes, this count not
        if len(lone):
            return int(self.line + np.searchsorted(ends, lone[0])), CR_LINE_ENDS
        lines = self.line + np.arange(len(ends))
        bad = np.flatnonzero((fields != self.n_fields) & (lines >= self.first_line))
        self.line += len(ends)
        self.carry = bytes(data[ends[-1] + 1 :])
        return (int(lines[bad[0]]), int(fields[bad[0]])) if len(bad) else None

    def end(self) -> tuple[int, int] | None:
        """The last line, when the file does not end with a newline."""
        if b"\r" in self.carry.rstrip(b"\r"):
            return self.line, CR_LINE_ENDS
        if self.carry.strip() and self.line >= self.first_line and self.carry.count(b"\t") + 1 != self.n_fields:
            return self.line, self.carry.count(b"\t") + 1
        return None


def misshapen_line_error(path: str | Path, header: Sequence[str], line: int, n_fields: int) -> InputError:
    """The one-line error for a line whose field count differs from the header's."""
    if n_fields == CR_LINE_ENDS:
        return InputError(
            f"{path} line {line} ends in a carriage return alone (old Mac line ends), which pandas splits lines at and "
            "this check cannot count: convert the file to newline ends (e.g. tr '\\r' '\\n') or download it again"
        )
    if n_fields < len(header):
        return InputError(
            f"{cell(path, line, header, header[n_fields])}: the line ends early, with {n_fields} of the header's "
            f"{len(header)} tab-separated fields; the file is damaged or edited, download it again"
        )
    return InputError(
        f"{path} line {line} has {n_fields} tab-separated fields, {n_fields - len(header)} more than the header's "
        f"{len(header)}: its values cannot be matched to their columns (a tab inside a value?); the file is "
        "damaged or edited, download it again"
    )


class _CheckedReader:
    """A binary file for pandas to read, whose lines `FieldCheck` counts on the way: the read stops with
    `misshapen_line_error` at the first line whose field count differs from the header's."""

    def __init__(self, raw, path: str | Path, header: Sequence[str], first_line: int) -> None:
        self.raw, self.path, self.header = raw, path, list(header)
        self.check = FieldCheck(len(header), first_line)

    def read(self, size: int = -1) -> bytes:
        block = self.raw.read(size)
        bad = self.check.feed(block) if block else self.check.end()
        if bad is not None:
            raise misshapen_line_error(self.path, self.header, *bad)
        return block

    def readable(self) -> bool:
        return True


@contextmanager
def _checked_bytes(path: str | Path, header: Sequence[str], first_line: int) -> Iterator[_CheckedReader]:
    with open_source(path, binary=True) as raw:
        yield _CheckedReader(raw, path, header, first_line)


def cell(path: str | Path, line: int, header: Sequence[str], column: str) -> str:
    """Where a value sits, as errors name it: `FILE line L column C ('NAME')` (columns count from 1)."""
    return f"{path} line {line} column {list(header).index(column) + 1} ({column!r})"


def numbers(
    table: pd.DataFrame,
    column: str,
    path: str | Path,
    header: Sequence[str],
    *,
    expected: str,
    allow_missing: bool = False,
    whole: bool = False,
) -> pd.Series:
    """`table[column]` as float64 (index = line numbers, as `read_table` returns). The first value that is not a
    finite number (with `whole`, a whole one: a position), or is missing when `allow_missing` is False, is an
    InputError naming file, line and column."""
    raw = table[column]
    values = pd.to_numeric(raw, errors="coerce").astype(np.float64)
    bad = ~np.isfinite(values) & (raw.notna() | (not allow_missing))
    if whole:
        bad |= np.isfinite(values) & (values != np.floor(values))
    if bad.any():
        line = bad.index[np.argmax(bad.to_numpy())]
        value = raw[line]
        shown = "is empty or NA" if pd.isna(value) else f"has {value!r}"
        raise InputError(
            f"{cell(path, line, header, column)} {shown}; expected {expected}. Fix or remove that "
            "row, or download the file again"
        )
    return values


def read_fasta(path: str | Path) -> Iterator[tuple[str, str]]:
    """(header without '>', sequence) for each record; any line width; case kept (callers decide)."""
    header, chunks = None, []
    with open_text(path) as fh:
        for line in fh:
            line = line.rstrip("\n").rstrip("\r")
            if line.startswith(">"):
                if header is not None:
                    yield header, "".join(chunks)
                header, chunks = line[1:], []
            elif header is None:
                if line.strip():
                    raise InputError(f"{path} is not FASTA: the first line must start with '>', got {line[:40]!r}")
            else:
                chunks.append(line.strip())
        if header is not None:
            yield header, "".join(chunks)


_UNIPROT_GN = re.compile(r"\bGN=(\S+)")


def read_vocab_json(path: str | Path, flag: str) -> list[str]:
    """Gene symbols of an scGPT `vocab.json` ({symbol: id}) in file order, its special tokens (`<pad>`, `<cls>`,
    ...) skipped; InputError naming `flag` for a file that is missing, not JSON, or not such a map."""
    path = Path(path)
    try:
        vocab = json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as err:
        raise InputError(f"{flag} {str(path)!r}: could not read it ({err}); pass scGPT's vocab.json") from err
    except json.JSONDecodeError as err:
        raise InputError(
            f"{flag} {path} line {err.lineno}: not valid JSON ({err.msg}); expected scGPT's vocab.json"
        ) from err
    if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
        kind = type(vocab).__name__ if not isinstance(vocab, dict) else "map whose values are not all token ids"
        raise InputError(f"{flag} {path} holds a JSON {kind}; expected scGPT's vocab.json, a {{symbol: id}} map")
    return [g for g in vocab if not (g.startswith("<") and g.endswith(">"))]


def read_uniprot(path: str | Path) -> pd.DataFrame:
    """UniProt FASTA (`>sp|P31946|1433B_HUMAN ... GN=YWHAB PE=1 SV=3`) as columns accession, entry, gene, sequence.
    Entries without `GN=` are dropped (they cannot be joined by symbol)."""
    rows = []
    for header, seq in read_fasta(path):
        parts = header.split("|")
        if len(parts) < 3:
            raise InputError(f"{path}: header {header[:60]!r} is not UniProt's 'db|ACCESSION|ENTRY ...' form")
        gene = _UNIPROT_GN.search(header)
        if gene:
            rows.append((parts[1], parts[2].split()[0], gene.group(1), seq.upper()))
    if not rows:
        raise InputError(f"{path} holds no UniProt entry with a GN= gene symbol")
    return pd.DataFrame(rows, columns=["accession", "entry", "gene", "sequence"])


_ENSEMBL_FIELD = re.compile(r"(\w+):(\S+)")


def read_ensembl_fasta(path: str | Path) -> pd.DataFrame:
    """Ensembl cDNA/peptide FASTA (`>ENST….N cdna chromosome:GRCh38:1:…:1 gene:ENSG….N … gene_symbol:X`)
    as columns id (the record's versioned id), transcript (versioned), gene (versioned), gene_symbol, sequence."""
    rows = []
    for header, seq in read_fasta(path):
        first, _, rest = header.partition(" ")
        fields = dict(_ENSEMBL_FIELD.findall(rest))
        transcript = fields.get("transcript", first)  # peptide records name their transcript; cDNA records are one
        rows.append((first, transcript, fields.get("gene", ""), fields.get("gene_symbol", ""), seq.upper()))
    if not rows:
        raise InputError(f"{path} holds no FASTA records")
    return pd.DataFrame(rows, columns=["id", "transcript", "gene", "gene_symbol", "sequence"])


_GTF_ATTR = re.compile(r'(\S+) "([^"]*)"')
GTF_COLUMNS = ("seqname", "source", "feature", "start", "end", "score", "strand", "frame", "attribute")


def read_gtf(path: str | Path, features: Sequence[str], attributes: Sequence[str]) -> pd.DataFrame:
    """GTF rows of the given feature types; 1-based inclusive coordinates; the named attributes as columns.
    Every line but a gene line must carry `transcript_id` (GTF 2.2 makes it mandatory; Ensembl omits it on
    gene lines only): a line without it cannot be joined to its transcript, so it stops the read. Blank lines
    are skipped. The genome build the header names (`gtf_build`) is kept in the frame's `attrs["genome_build"]`
    (None where the header names none)."""
    wanted, rows, header = set(features), [], []
    with open_text(path) as fh:
        for n, line in enumerate(fh, 1):
            if line.startswith("#"):
                if not rows:
                    header.append(line)
                continue
            if not line.strip():
                continue
            cols = line.rstrip("\n").rstrip("\r").split("\t")
            if len(cols) != 9:
                raise InputError(
                    f"{path} line {n}: a GTF line has 9 tab-separated columns, this one {len(cols)}; "
                    "the file is damaged or not a GTF, download it again"
                )
            if cols[2] not in wanted:
                continue
            if "=" in cols[8] and not _GTF_ATTR.search(cols[8]):
                raise InputError(
                    f"{path} line {n} column 9 (attribute): {cols[8][:60]!r} is GFF3 (key=value), not GTF "
                    '(key "value";); pass the GTF release of the same annotation (Ensembl and GENCODE publish both)'
                )
            start, end = (_gtf_position(path, n, cols, i) for i in (3, 4))
            if start > end:
                raise InputError(
                    f"{path} line {n}: start {start:,} lies after end {end:,}; a GTF feature spans start..end "
                    "(1-based, start <= end, whatever its strand): the file is damaged, download it again"
                )
            attrs = dict(_GTF_ATTR.findall(cols[8]))
            if cols[2] != "gene" and "transcript_id" not in attrs:
                raise InputError(
                    f"{path} line {n} column 9 (attribute): this {cols[2]} line has no transcript_id; "
                    "every line but a gene line needs one (GTF 2.2). Download the file again"
                )
            rows.append((cols[0], cols[2], start, end, cols[6], *(attrs.get(a) for a in attributes)))
    table = pd.DataFrame(rows, columns=["chrom", "feature", "start", "end", "strand", *attributes])
    table.attrs["genome_build"] = gtf_build(header)
    return table


def _gtf_position(path, line: int, cols: list[str], index: int) -> int:
    text = cols[index]
    if not text.isdigit() or int(text) == 0:
        raise InputError(
            f"{path} line {line} column {index + 1} ({GTF_COLUMNS[index]}): {text!r} is not a "
            "1-based position (a whole number >= 1); the file is damaged, download it again"
        )
    return int(text)


_BUILD = re.compile(r"\b(GRCh\d+|hg\d+|GRCm\d+|mm\d+)", re.IGNORECASE)


def gtf_build(header: Sequence[str]) -> str | None:
    """The genome build a GTF's header lines name: Ensembl's `#!genome-build GRCh38.p10`, GENCODE's
    `##description: ... (GRCh38), version 44 ...` or `##genome-build`; None where they name none."""
    for line in header:
        key = line.lstrip("#!").split(None, 1)[0].rstrip(":").lower() if line.lstrip("#!").strip() else ""
        if key in ("genome-build", "description"):
            found = _BUILD.search(line)
            if found:
                return found.group(1)
    return None


_BUILD_NAMES = {"hg19": "grch37", "hg38": "grch38", "mm10": "grcm38", "mm39": "grcm39"}  # UCSC name -> GRC name


def same_build(name: str) -> str:
    """A build's GRC name, lower case, whichever naming it is given in (`hg38` and `GRCh38` are one assembly)."""
    return _BUILD_NAMES.get(name.lower(), name.lower())


def require_build(table: pd.DataFrame, path: str | Path, build: str, what: str) -> None:
    """InputError where the GTF `table` (`read_gtf`'s) names a genome build other than `build` in its header: its
    coordinates would be cut from a genome they do not belong to. A header naming no build passes."""
    found = table.attrs.get("genome_build")
    if found is not None and same_build(found) != same_build(build):
        raise InputError(
            f"{path} is annotated on {found} (its header's genome-build), but {what} is on {build}: its "
            f"positions would cut other bases; pass the {build} GTF"
        )


def read_gct(path: str | Path, usecols: Sequence[str] | None = None, chunksize: int = 2000) -> Iterator[pd.DataFrame]:
    """GCT 1.2 (`#1.2`, `<rows>\\t<samples>`, header `transcript_id gene_id SAMPID…`) in row chunks, each indexed
    by line number (the first data row is line 4). The header's sample ids must be unique and as many as line 2
    says, and every row as long as the header (`FieldCheck`, counted as pandas reads: one pass over the file)."""
    with open_text(path) as fh:
        version = fh.readline().strip()
        dims = fh.readline().strip().split("\t")
    if version != "#1.2":
        raise InputError(f"{path} is not GCT 1.2: its first line is {version[:20]!r}, expected '#1.2'")
    if len(dims) != 2 or not all(d.isdigit() for d in dims):
        raise InputError(f"{path}: GCT line 2 must be '<n_rows>\\t<n_samples>', got {dims}")
    header = header_of(path, comment_lines=2)
    id_cols = [c for c in ("transcript_id", "gene_id", "Name", "Description") if c in header]
    require_columns(path, header, ["gene_id"] if "transcript_id" in header else ["Name"])
    samples = header[len(id_cols) :]
    seen: set[str] = set()
    twice = next((s for s in samples if s in seen or seen.add(s)), None)
    if twice is not None:
        raise InputError(
            f"{path} line 3 names sample {twice!r} twice; each sample's TPM must have one column. The file is "
            "damaged or edited: download it again"
        )
    if int(dims[1]) != len(samples):
        raise InputError(
            f"{path} line 2 declares {dims[1]} samples but its header (line 3) names {len(samples)}; the file is "
            "damaged or edited: download it again"
        )
    try:
        with _checked_bytes(path, header, 4) as fh:
            reader = pd.read_csv(
                fh,
                sep="\t",
                skiprows=2,
                usecols=list(usecols) if usecols else None,
                index_col=False,
                chunksize=chunksize,
                dtype={c: str for c in id_cols},
                skip_blank_lines=False,
                encoding="utf-8-sig",
                quoting=csv.QUOTE_NONE,  # a quote is a character: lines split as FieldCheck counts them
            )
            for chunk in reader:
                chunk.index = chunk.index + 4
                yield chunk
    except _TRUNCATED as err:
        raise InputError(f"{path} is truncated or not valid gzip ({err}); delete it and download it again") from err
    except (ValueError, pd.errors.ParserError) as err:
        reason = " ".join(str(err).split())
        raise InputError(f"{path} could not be parsed as GCT (tab-separated after line 2): {reason}") from err
