"""The writer lock: one process owns a cache while it is written; others are refused with the owner's pid.

An advisory `flock` on `<cache>.lock` beside the cache (outside it, so plain zarr and uploads never see it):
the kernel drops it when the owner exits or is killed, so a crashed write resumes without manual cleanup.
The file holds the owner's pid and a token. A fan-out (e.g. dask workers writing shards that the owner
hands them) shares the lock explicitly: the owner passes `lock_token` and each helper process opens the
cache with it; a helper with no token or another token is refused like any second writer, and so is one whose
token names an owner on this host that no longer holds the flock (it exited or was killed). The lock file is
named after the cache's resolved path, so a symlink to a cache shares its lock. Writers within
one process share the process's lock (counted), so a writer left unclosed in a traceback does not refuse
the retry that follows it.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import socket
from pathlib import Path

from dogmacache.errors import CacheError


def lock_file(cache: Path) -> Path:
    """`<cache>.lock` beside the cache's real path (symlinks resolved, so every path to one cache shares its lock)."""
    cache = Path(cache).resolve()
    return cache.parent / f"{cache.name}.lock"


def _holder(file: Path) -> tuple[str, str]:
    """(pid, token) written by the lock's owner; ("?", "") when unreadable (the owner is still writing it)."""
    try:
        pid, token = file.read_text().split()
        return pid, token
    except (OSError, ValueError):
        return "?", ""


def lock_holder(path: Path) -> str:
    """The pid written in the lock beside `path` ("?" when none can be read)."""
    return _holder(lock_file(Path(path)))[0]


def _refusal(cache: Path, file: Path, pid: str) -> CacheError:
    return CacheError(
        f"{cache} is being written by process {pid} (lock {file}); wait for it to finish or stop it, "
        "then re-run (a second writer would lose rows); to add workers to that write, open it with its lock_token"
    )


def _is_held(file: Path) -> bool:
    """Whether some open file description holds the flock on `file` now: a non-blocking shared flock is refused
    while an owner holds its exclusive one; taken, it is let go at once."""
    if any(h.file == file and h.users > 0 for h in _HELD.values()):
        return True
    try:
        fd = os.open(file, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a flock taken here
    return False


class _Held:
    """This process's flock on one lock file, shared by its writers."""

    def __init__(self, file: Path, fd: int, token: str):
        self.file, self.fd, self.token, self.users = file, fd, token, 0


_HELD: dict[Path, _Held] = {}


class WriterLock:
    """An owned lock (`acquire`) or a share of another process's lock (`join`); `release` is idempotent."""

    def __init__(self, file: Path, token: str, held: _Held | None):
        self.file, self.token, self._held = file, token, held
        if held is not None:
            held.users += 1

    @classmethod
    def acquire(cls, cache: Path) -> WriterLock:
        file = lock_file(cache)
        held = _HELD.get(file)
        if held is not None and held.users > 0:
            return cls(file, held.token, held)
        file.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise _refusal(cache, file, _holder(file)[0]) from None
            try:  # the previous owner may have removed the file between our open and our flock: take the new one
                if os.stat(file).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        token = f"{socket.gethostname()}:{os.getpid()}-{secrets.token_hex(8)}"  # the host: see `join`
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {token}\n".encode(), 0)
        _HELD[file] = _Held(file, fd, token)
        return cls(file, token, _HELD[file])

    @classmethod
    def join(cls, cache: Path, token: str) -> WriterLock:
        file = lock_file(cache)
        pid, held = _holder(file)
        if held != token:
            raise CacheError(
                f"lock_token {token!r} does not match the lock of process {pid} on {cache} ({file}); "
                "pass the token of the process that owns this write (its writer's lock_token)"
            )
        # the owner's liveness is asked only on its own host: where flock is node-local (Lustre's localflock, some
        # FUSE mounts), a helper on another machine would not see the owner's lock even while it runs
        if token.partition(":")[0] == socket.gethostname() and not _is_held(file):
            raise CacheError(
                f"lock_token {token!r} names the lock of process {pid} on {cache} ({file}), but that process no "
                "longer holds it (it exited or was killed); a helper joins only a running write: re-run the "
                "command that owns the write, which resumes it and hands out a new token"
            )
        return cls(file, token, None)

    def release(self) -> None:
        held, self._held = self._held, None
        if held is None:
            return
        held.users -= 1
        if held.users > 0:
            return
        _HELD.pop(held.file, None)
        if _holder(held.file)[1] == held.token:  # never remove a lock a later owner took
            held.file.unlink(missing_ok=True)
        os.close(held.fd)  # closing drops the flock

    def __del__(self) -> None:  # a writer dropped without close (e.g. a finished cache returned as is)
        try:
            self.release()
        except Exception:
            pass
