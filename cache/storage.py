"""Where a cache lies and what its disk says, decided once for every stage.

- `local_path`: a plain path or a `file://` URL names a local directory; any other URL (`http(s)://`, `hf://`,
  `s3://` ...) is remote (read through fsspec, never written to).
- `disk_error`: an OSError of the disk (full, over quota, read-only, no permission), found anywhere in an
  exception's chain, as one line saying what failed, what was kept and how to go on.
- `replace_whole`: a file written beside its place and renamed into it, so that a kill leaves it whole or as it was.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from dogmacache.errors import CacheError, DogmaError, InputError

DISK_ERRNOS = {
    errno.ENOSPC: "ENOSPC",
    errno.EDQUOT: "EDQUOT",
    errno.EROFS: "EROFS",
    errno.EACCES: "EACCES",
    errno.EPERM: "EPERM",
}


def local_path(url: str | os.PathLike) -> str | None:
    """The local path `url` names (a `file://` prefix dropped); None when it is a remote URL."""
    text = os.fspath(url)
    if text.startswith("file://"):
        return text[len("file://") :]
    return None if "://" in text else text


def disk_cause(err: BaseException) -> OSError | None:
    """The first OSError of the disk (`DISK_ERRNOS`) in `err`'s chain (itself, its cause, its context)."""
    cause: BaseException | None = err
    while cause is not None and not (isinstance(cause, OSError) and cause.errno in DISK_ERRNOS):
        cause = cause.__cause__ or cause.__context__
    return cause


def disk_error(err: BaseException, doing: str, kept: str, kind: type[DogmaError] = CacheError) -> DogmaError | None:
    """`err` as one line (a `kind`, CacheError by default) when a disk error caused it: "cannot `doing`: reason
    (ENOSPC) on file; `kept`; the fix, then re-run the same command to resume"; None for any other error."""
    cause = disk_cause(err)
    if cause is None:
        return None
    fix = (
        "free some space"
        if cause.errno in (errno.ENOSPC, errno.EDQUOT)
        else "make it writable (or choose another output path)"
    )
    where = f" on {cause.filename}" if cause.filename else ""
    return kind(
        f"cannot {doing}: {cause.strerror} ({DISK_ERRNOS[cause.errno]}){where}; {kept}; {fix}, then re-run the same "
        "command to resume"
    )


def check_writable(out: str | os.PathLike, flag: str = "--out", kept: str = "nothing was written") -> None:
    """`out` (a file or folder a command will write) can be written: a probe file is created and removed in it, or
    in the nearest folder above it that exists. A command calls it before its work, so that a read-only disk or an
    `out` that is a file is one line at the start, not a traceback at the end. A URL is left to its writer."""
    local = local_path(out)
    if local is None:
        return
    path = Path(local)
    probe_dir = next(p for p in (path, *path.parents) if p.exists())
    if not probe_dir.is_dir():
        raise CacheError(f"cannot write to {out}: {probe_dir} is a file, not a folder; pick another {flag}")
    try:
        handle, name = tempfile.mkstemp(dir=probe_dir, prefix=".dogmacache-probe-")
        os.close(handle)
        os.unlink(name)
    except OSError as err:
        raise CacheError(
            f"cannot write to {out}: {err.strerror} (in {probe_dir}); pick a writable {flag} ({kept})"
        ) from err


def check_own_summary(out: str | os.PathLike, command: str, marker: str) -> None:
    """An analysis command's `out` holds no summary.json of another command (told by `marker`, a key every summary of
    `command` carries): its run would replace that summary and mix the two commands' files in one folder."""
    summary = Path(out) / "summary.json"
    if not summary.is_file():
        return
    try:
        written = json.loads(summary.read_text())
    except (OSError, ValueError):
        return  # unreadable: a stopped run's, which the run replaces
    if isinstance(written, dict) and marker not in written:
        raise InputError(
            f"--out {out} holds another command's summary.json (no {marker!r}), not {command}'s; pick an empty or "
            f"earlier {command} --out (nothing was computed)"
        )


@contextlib.contextmanager
def replace_whole(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` (".NAME.tmp", in the same folder, so on the same disk) for the block to write;
    renamed over `path` when the block ends, removed when it raises. A kill, Ctrl-C or full disk midway leaves
    `path` whole: the old file (or none), never part of the new one; at most the temporary file stays, and the next
    write replaces it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # gone already where the rename happened
