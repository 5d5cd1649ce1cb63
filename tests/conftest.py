"""Shared fixtures: small caches written through the real writer."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from dogmacache.cache import CacheSpec, CacheWriter, ExtraArray, digest_strings

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))  # for the writer-process helper module


def write_cache(path, data: np.ndarray, ids=None, shard_items=3, extras=None, **kwargs):
    """Write `data` (N, ...) into a complete cache and return the final manifest."""
    ids = ids if ids is not None else [f"id{i}" for i in range(len(data))]
    extra_specs = [ExtraArray(name, str(v.dtype), v.shape[1:]) for name, v in (extras or {}).items()]
    spec = CacheSpec(
        modality=kwargs.pop("modality", "dna"),
        model=kwargs.pop("model", "test/model"),
        model_revision="r1",
        layer=kwargs.pop("layer", -1),
        pooling=kwargs.pop("pooling", "none" if data.ndim == 3 else "mean"),
        item_shape=data.shape[1:],
        input_digest=digest_strings(ids),
        shard_items=shard_items,
        extras=tuple(extra_specs),
        **kwargs,
    )
    writer = CacheWriter.create(path, spec, ids=ids)
    for shard in writer.pending_shards():
        a, b = writer.manifest.shard_rows(shard)
        writer.write_shard(shard, data[a:b], **{k: v[a:b] for k, v in (extras or {}).items()})
    return writer.finalize()


# The whole demo and its null twin, each a `dogmacache demo` process started when the session starts, below the
# tests' priority: they take the core the tests leave idle while the tests that need neither run first. The demo's
# own chain of steps is the longest path of the session, so it stays close to the tests' priority; its null twin,
# needed only by the last test, runs on what is left.
DEMO_RUNS = {"demo_run": ((), 2), "null_demo_run": (("--null",), 10)}  # fixture: (extra arguments, niceness)


def interrupt_on_call(monkeypatch, owner, name: str, n: int):
    """`owner.name` raising KeyboardInterrupt on its `n`-th call (a Ctrl-C at that point), passing the calls before
    it through; returns the real one, to put back before a resume."""
    real, calls = getattr(owner, name), []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, interrupted)
    return real


def _reuse_demo() -> Path | None:
    reuse = os.environ.get("DOGMACACHE_TEST_DEMO")  # a finished `dogmacache demo --out DIR`, to skip rerunning it
    return Path(reuse) if reuse else None


def pytest_collection_modifyitems(config, items):
    """The tests that use a demo run go last (those of the demo, then those of its null twin), in their order."""

    def rank(item) -> int:
        return max((k + 1 for k, name in enumerate(DEMO_RUNS) if name in getattr(item, "fixturenames", ())), default=0)

    items[:] = sorted(items, key=rank)


def _start_demo(name: str, tmp_path_factory) -> tuple[subprocess.Popen, Path, Path]:
    args, niceness = DEMO_RUNS[name]
    out = tmp_path_factory.mktemp(name) / "demo"
    log = out.parent / "demo.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dogmacache.cli", "demo", *args, "--out", str(out)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            process_group=0,  # its own group, to kill with the CDBridge process it spawns; the tests' session
            preexec_fn=lambda: os.nice(niceness),  # set before the demo starts: its children inherit it
        )
    return proc, out, log


@pytest.fixture(scope="session", autouse=True)
def demo_processes(request, tmp_path_factory):
    """The demo runs that the collected tests use, started now; killed at the end if still running."""
    wanted = {name for item in request.session.items for name in getattr(item, "fixturenames", ())}
    started = {
        name: _start_demo(name, tmp_path_factory)
        for name in DEMO_RUNS
        if name in wanted and not (name == "demo_run" and _reuse_demo())
    }
    yield started
    for proc, _, _ in started.values():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _finished(name: str, started: dict, tmp_path_factory) -> tuple[Path, str]:
    """The demo's folder and what it printed, once its process has exited 0."""
    if name not in started:  # a test the session's item list did not show: start it now
        started[name] = _start_demo(name, tmp_path_factory)
    proc, out, log = started[name]
    returncode = proc.wait()
    printed = log.read_text()
    assert returncode == 0, f"dogmacache demo {' '.join(DEMO_RUNS[name][0])} exited {returncode}:\n{printed[-3000:]}"
    return out, printed


@pytest.fixture(scope="session")
def demo_run(demo_processes, tmp_path_factory):
    """`dogmacache demo` once per test session: recipe, tiny models, three caches, CDT and both baselines."""
    return _reuse_demo() or _finished("demo_run", demo_processes, tmp_path_factory)[0]


@pytest.fixture(scope="session")
def null_demo_run(demo_processes, tmp_path_factory):
    """`dogmacache demo --null` once per test session: its folder and what it printed."""
    return _finished("null_demo_run", demo_processes, tmp_path_factory)


@pytest.fixture(autouse=True, scope="session")
def one_thread_per_run():
    """Runs inside tests (and processes they start) take one torch thread, as OMP_NUM_THREADS=1 gives them: the
    default would follow how busy the machine is at that moment (`devices.cpu_plan`), and tests that compare a run
    with a resumed or reused one compare bytes (a reused row stands for an embedded one only at the same count).
    Session-wide, so that module fixtures' caches are embedded at it too. The tests of the defaults themselves
    unset it. Its own MonkeyPatch, so that a test's `monkeypatch.undo()` (dropping its stand-ins before a resumed
    run) keeps the pin."""
    with pytest.MonkeyPatch.context() as pin:
        pin.setenv("OMP_NUM_THREADS", "1")
        yield


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test, restored afterwards: tiny models gain nothing from threads, and OpenMP threads
    spin against other busy processes on a 2-core machine. Modules use it with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    from dogmacache.devices import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture
def rng():
    return np.random.default_rng(0)


class RangeHandler(SimpleHTTPRequestHandler):
    """Static files with single-range `Range: bytes=a-b` / `bytes=-n` support (as CDNs and the Hub serve)."""

    served = 0

    def log_message(self, *args):  # quiet
        pass

    def send_head(self):
        header = self.headers.get("Range")
        path = self.translate_path(self.path)
        try:
            f = open(path, "rb")  # noqa: SIM115 - handed to copyfile by the base class
        except OSError:
            self.send_error(404)
            return None
        size = f.seek(0, 2)
        start, stop = 0, size
        if header and header.startswith("bytes="):
            first, last = header[6:].split("-")
            start, stop = (
                (size - int(last), size) if first == "" else (int(first), min(size, int(last or size - 1) + 1))
            )
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(stop - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        f.seek(start)
        data = f.read(stop - start)
        f.close()
        type(self).served += len(data)
        return BytesIO(data)


@contextlib.contextmanager
def serve(directory):
    """A local HTTP server with Range support over `directory`; yields its base URL."""
    RangeHandler.served = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(directory)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def demo(demo_run):
    """The demo folder and its CDT caches (the k-mer control's too)."""
    caches = {
        "dna": demo_run / "cache" / "dna-enformer-trunk.zarr",
        "protein": demo_run / "cache" / "protein-esm2.zarr",
        "gene": demo_run / "cache" / "gene-scgpt.zarr",
        "dna_kmer": demo_run / "cache" / "dna-kmer.zarr",
    }
    return demo_run, caches


@pytest.fixture
def idle_two_cores(monkeypatch):
    """Two usable cores other processes leave idle and no OMP_NUM_THREADS, so that a plan would take both;
    `spy(module)` records the thread counts runs of `module` set (its `torch_threads`), in one list."""
    from dogmacache import devices
    from dogmacache.devices import torch_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(devices, "usable_cores", lambda *a, **k: 2)
    monkeypatch.setattr(devices.CoreWatch, "busy", lambda self, seconds=0.1: 0.0)
    used: list[int] = []

    def spy(module):
        plain = module.torch_threads
        monkeypatch.setattr(module, "torch_threads", lambda n: used.append(n) or plain(n))
        return used

    with torch_threads(2):  # torch's own count allows both
        yield spy
