"""Reading a cache over HTTP from a local server, without downloading it whole."""

import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from conftest import write_cache
from dogmacache.cache import open_cache, verify_cache


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
            start, stop = (size - int(last), size) if first == "" else (int(first), min(size, int(last or size - 1) + 1))
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
        from io import BytesIO

        return BytesIO(data)


def test_open_cache_over_http_reads_only_what_it_needs(tmp_path, rng):
    data = rng.standard_normal((40, 16, 32)).astype(np.float32)
    write_cache(tmp_path / "c.zarr", data, ids=[f"w{i}" for i in range(40)], shard_items=20)
    total = sum(p.stat().st_size for p in (tmp_path / "c.zarr").rglob("*") if p.is_file())
    RangeHandler.served = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/c.zarr"
        cache = open_cache(url)
        assert cache.manifest.n_items == 40 and RangeHandler.served < 20_000  # metadata only so far
        got = cache.get(["w3", "w31"], dtype=np.float32)
        np.testing.assert_array_equal(got, data[[3, 31]].astype(np.float16).astype(np.float32))
        assert RangeHandler.served < total / 3, (RangeHandler.served, total)
        assert verify_cache(url, progress=False).ok  # the full read happens only when asked for
    finally:
        server.shutdown()
        server.server_close()
