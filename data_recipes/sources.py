"""Source files: taken from `--source-dir` when a user already has them, else downloaded once into a cache
folder, resumably (HTTP Range onto a `.part` file, with If-Range on the file's ETag or Last-Modified so that a
`.part` of an older file is not continued with a newer one's bytes) and checksummed (sha256 recorded beside the
file at download and checked on every later use; `Source.sha256` holds a publisher's digest where one is given:
none of today's sources publishes one)."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from dogmacache.cache.storage import disk_error
from dogmacache.contracts.provenance import file_sha256
from dogmacache.errors import InputError
from tqdm.auto import tqdm

DEFAULT_CACHE_DIR = Path(os.environ.get("DOGMACACHE_SOURCES", Path.home() / ".cache" / "dogmacache" / "sources"))


@dataclass(frozen=True)
class Source:
    """One public file a recipe reads."""

    key: str  # how the recipe refers to it
    filename: str  # as published; also the name looked for in --source-dir
    url: str
    licence: str
    description: str
    size: str = ""  # approximate, for the README and the user's patience
    sha256: str | None = None  # when the publisher gives one


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file (the form the publishers give)."""
    return file_sha256(path).removeprefix("sha256:")


def _whole_size(content_range: str | None) -> int | None:
    """N of a `Content-Range: bytes */N` header (a 416's statement of the whole file's size); None without one."""
    if content_range and "/" in content_range:
        size = content_range.rsplit("/", 1)[1].strip()
        return int(size) if size.isdigit() else None
    return None


def download(url: str, dest: Path, *, timeout: float = 60.0) -> Path:
    """Download `url` to `dest`, resuming a previous `.part` file with an HTTP Range request where the server
    still serves the file the `.part` began (If-Range on its ETag or Last-Modified, kept beside it)."""
    part = dest.with_name(dest.name + ".part")
    validator = dest.with_name(dest.name + ".part.validator")
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    if have and validator.is_file():
        headers["If-Range"] = validator.read_text().strip()
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - the recipe's own URLs
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing past the .part's end: whole only where it is the file's size
            if _whole_size(err.headers.get("Content-Range")) == have:
                part.rename(dest)
                validator.unlink(missing_ok=True)
                return dest
            part.unlink()  # longer than the file, or of unknown size: not a prefix of it, begin anew
            validator.unlink(missing_ok=True)
            return download(url, dest, timeout=timeout)
        raise InputError(f"downloading {url} failed: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        raise InputError(
            f"cannot download {url} ({err}); download it by other means and pass its folder with --source-dir"
        ) from err
    with response:
        resumed = response.status == 206
        total = response.headers.get("Content-Length")
        total = int(total) + (have if resumed else 0) if total else None
        mode = "ab" if resumed else "wb"
        etag = response.headers.get("ETag") or ""
        tag = etag if etag and not etag.startswith("W/") else response.headers.get("Last-Modified")
        try:
            with (
                open(part, mode) as out,
                tqdm(total=total, initial=have if resumed else 0, unit="B", unit_scale=True, desc=dest.name) as bar,
            ):
                if not resumed:  # a fresh file (the .part emptied above): what identifies it, for If-Range later
                    if tag:
                        validator.write_text(tag + "\n")
                    else:
                        validator.unlink(missing_ok=True)
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
        except OSError as err:
            kept = f"what arrived is kept in {part}"
            raise disk_error(err, f"download {url} into {part.parent}", kept, InputError) or err from None
    got = part.stat().st_size
    if total is not None and got < total:  # the server closed early: read() then ends the body without an error
        raise InputError(
            f"downloading {url} stopped at {got:,} of {total:,} bytes (the connection closed early); what arrived "
            f"is kept in {part}: re-run the same command to resume it"
        )
    if total is not None and got > total:
        part.unlink()
        raise InputError(
            f"downloading {url} gave {got:,} bytes where the server announced {total:,}; the partial file was "
            "removed: re-run the same command to download it anew"
        )
    part.rename(dest)
    validator.unlink(missing_ok=True)
    return dest


def fetch(
    source: Source, source_dir: str | Path | None = None, cache_dir: str | Path | None = None
) -> tuple[Path, str]:
    """Path to the source file and its sha256: from `source_dir` if it is there, else the download cache."""
    if source_dir is not None:
        local = Path(source_dir) / source.filename
        if local.is_file():
            return local, _checked(local, source)
    cache = Path(cache_dir) if cache_dir else DEFAULT_CACHE_DIR
    dest = cache / source.filename
    if not dest.is_file():
        if source_dir is not None:
            print(f"{source.filename} is not in {source_dir}; downloading it from {source.url}")
        download(source.url, dest)
        digest = sha256_of(dest)
        (dest.parent / (dest.name + ".sha256")).write_text(digest + "\n")
    return dest, _checked(dest, source)


def fetch_all(
    listed: dict[str, Source], source_dir: str | Path | None = None, cache_dir: str | Path | None = None
) -> tuple[dict[str, Path], dict[str, dict[str, str]]]:
    """Every source of a recipe, by key: its path, and what `recipe.json` records of it (file, url, sha256,
    licence), so a table can be traced to the exact bytes it came from."""
    if source_dir is not None and not Path(source_dir).is_dir():
        raise InputError(
            f"--source-dir {str(source_dir)!r} is not a folder; give the folder holding the source files "
            f"({', '.join(s.filename for s in listed.values())}), or leave it out to download them"
        )
    paths, recorded = {}, {}
    for key, source in listed.items():
        paths[key], digest = fetch(source, source_dir, cache_dir)
        recorded[key] = {"file": source.filename, "url": source.url, "sha256": digest, "licence": source.licence}
    return paths, recorded


def _checked(path: Path, source: Source) -> str:
    recorded = path.parent / (path.name + ".sha256")
    digest = sha256_of(path)
    if source.sha256 and digest != source.sha256:
        raise InputError(
            f"{path} has sha256 {digest}, the publisher's is {source.sha256}: the file is corrupt or another release; "
            "delete it and download again"
        )
    if recorded.is_file() and recorded.read_text().strip() != digest:
        raise InputError(f"{path} changed since it was downloaded (sha256 differs from {recorded}); download it again")
    return digest
