"""Source files: --source-dir first, else a resumable, checksummed download into the cache folder."""

import hashlib

import pytest
from conftest import RangeHandler, serve
from dogmacache.data_recipes import sources
from dogmacache.errors import InputError


def _source(url, sha256=None):
    return sources.Source(key="x", filename="data.txt.gz", url=url, licence="test", description="test", sha256=sha256)


def test_download_resumes_a_partial_file(tmp_path):
    payload = bytes(range(256)) * 4000  # ~1 MB
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "data.txt.gz").write_bytes(payload)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "data.txt.gz.part").write_bytes(payload[:300_000])  # an earlier, interrupted download
    with serve(tmp_path / "www") as base:
        path, digest = sources.fetch(_source(f"{base}/data.txt.gz"), cache_dir=cache)
        assert RangeHandler.served == len(payload) - 300_000  # only the missing bytes were sent
    assert path.read_bytes() == payload and digest == hashlib.sha256(payload).hexdigest()
    assert (cache / "data.txt.gz.sha256").read_text().strip() == digest
    again, _ = sources.fetch(_source("http://127.0.0.1:9/unreachable"), cache_dir=cache)  # cached: no network
    assert again == path


def test_source_dir_wins_and_published_checksum_is_checked(tmp_path):
    (tmp_path / "data.txt.gz").write_bytes(b"abc")
    good = hashlib.sha256(b"abc").hexdigest()
    path, digest = sources.fetch(_source("http://127.0.0.1:9/x", sha256=good), source_dir=tmp_path)
    assert path == tmp_path / "data.txt.gz" and digest == good
    with pytest.raises(InputError, match="the publisher's is 00"):
        sources.fetch(_source("http://127.0.0.1:9/x", sha256="00" * 32), source_dir=tmp_path)


def test_unreachable_source_says_how_to_proceed(tmp_path):
    with pytest.raises(InputError, match="pass its folder with --source-dir"):
        sources.fetch(_source("http://127.0.0.1:9/missing.gz"), cache_dir=tmp_path)


def test_fetch_all_gives_paths_and_what_recipe_json_records(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"abc")
    (tmp_path / "b.txt").write_bytes(b"")
    listed = {
        key: sources.Source(
            key=key, filename=f"{key}.txt", url=f"http://127.0.0.1:9/{key}.txt", licence="L", description="d"
        )
        for key in ("a", "b")
    }
    paths, info = sources.fetch_all(listed, source_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert paths == {"a": tmp_path / "a.txt", "b": tmp_path / "b.txt"}
    assert info["a"] == {
        "file": "a.txt",
        "url": "http://127.0.0.1:9/a.txt",
        "sha256": hashlib.sha256(b"abc").hexdigest(),
        "licence": "L",
    }
    assert info["b"]["sha256"] == hashlib.sha256(b"").hexdigest() and len(info) == 2


def test_recipe_modules_list_their_sources_with_sizes_in_the_readme():
    from pathlib import Path

    from dogmacache.data_recipes import gasperini, gtex

    readme = (Path(sources.__file__).parent / "README.md").read_text()
    listed = [*gasperini.SOURCES.values(), *gtex.SOURCES.values()]
    assert len(listed) == 8
    for source in listed:
        row = next((line for line in readme.splitlines() if f"`{source.filename}`" in line), "")
        assert source.size and source.size in row, source.filename


def test_a_download_cut_short_is_kept_to_resume_not_taken_as_whole(tmp_path):
    """A server that closes the connection early ends the body without an error from read(): the bytes that
    arrived stay in the .part file (no .sha256 recorded), and the next fetch resumes from them."""
    import threading
    from functools import partial
    from http.server import ThreadingHTTPServer
    from io import BytesIO

    from conftest import RangeHandler

    class Cut(RangeHandler):
        def send_head(self):
            whole = super().send_head()
            return None if whole is None else BytesIO(whole.read()[:100_000])  # Content-Length says all

    payload = bytes(range(256)) * 1000
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "data.txt.gz").write_bytes(payload)
    cache = tmp_path / "cache"
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Cut, directory=str(tmp_path / "www")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/data.txt.gz"
        with pytest.raises(InputError, match=r"stopped at 100,000 of 256,000 bytes .* re-run the same command"):
            sources.fetch(_source(url), cache_dir=cache)
    finally:
        server.shutdown()
        server.server_close()
    assert sorted(p.name for p in cache.iterdir()) == ["data.txt.gz.part"]
    assert (cache / "data.txt.gz.part").read_bytes() == payload[:100_000]
    with serve(tmp_path / "www") as base:
        path, digest = sources.fetch(_source(f"{base}/data.txt.gz"), cache_dir=cache)
        assert RangeHandler.served == len(payload) - 100_000
    assert path.read_bytes() == payload and digest == hashlib.sha256(payload).hexdigest()


class _Versioned(RangeHandler):
    """RangeHandler with an ETag (the file's sha256), If-Range honoured (a validator that is not the file's gets
    the whole file, 200) and 416 with `Content-Range: bytes */N` for a range that starts at or past the end."""

    def send_head(self):
        from io import BytesIO

        data = open(self.translate_path(self.path), "rb").read()  # noqa: SIM115 - a test's small file
        etag = f'"{hashlib.sha256(data).hexdigest()[:16]}"'
        header = self.headers.get("Range")
        if header and self.headers.get("If-Range", etag) != etag:
            header = None  # another file than the one the client began: all of it
        if header:
            start = int(header[6:].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            data = data[start:]
        else:
            self.send_response(200)
        self.send_header("ETag", etag)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        type(self).served += len(data)
        return BytesIO(data)


@pytest.fixture
def versioned_server(tmp_path):
    import threading
    from functools import partial
    from http.server import ThreadingHTTPServer

    (tmp_path / "www").mkdir()
    _Versioned.served = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Versioned, directory=str(tmp_path / "www")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield tmp_path / "www", f"http://127.0.0.1:{server.server_address[1]}/data.txt.gz"
    finally:
        server.shutdown()
        server.server_close()


def test_a_part_file_longer_than_the_source_is_downloaded_anew_not_taken_as_whole(tmp_path, versioned_server):
    www, url = versioned_server
    payload = b"thirty bytes of a source file."
    (www / "data.txt.gz").write_bytes(payload)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "data.txt.gz.part").write_bytes(b"x" * 65)  # a stale, longer .part: the server answers 416
    path, digest = sources.fetch(_source(url), cache_dir=cache)
    assert path.read_bytes() == payload and digest == hashlib.sha256(payload).hexdigest()
    assert sorted(p.name for p in cache.iterdir()) == ["data.txt.gz", "data.txt.gz.sha256"]


def test_a_part_file_as_long_as_the_source_is_taken_as_whole(tmp_path, versioned_server):
    www, url = versioned_server
    payload = bytes(range(256)) * 10
    (www / "data.txt.gz").write_bytes(payload)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "data.txt.gz.part").write_bytes(payload)
    path, _ = sources.fetch(_source(url), cache_dir=cache)
    assert path.read_bytes() == payload and _Versioned.served == 0


def test_a_part_file_of_an_older_release_is_not_continued_with_the_new_ones_bytes(tmp_path, versioned_server):
    www, url = versioned_server
    old, new = bytes(range(256)) * 100, bytes(reversed(range(256))) * 100
    (www / "data.txt.gz").write_bytes(old)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "data.txt.gz.part").write_bytes(old[:10_000])  # an interrupted download of the old file
    etag = f'"{hashlib.sha256(old).hexdigest()[:16]}"'
    (cache / "data.txt.gz.part.validator").write_text(etag + "\n")
    (www / "data.txt.gz").write_bytes(new)  # the publisher replaced the file
    _Versioned.served = 0
    path = sources.download(url, cache / "data.txt.gz")
    assert path.read_bytes() == new and _Versioned.served == len(new)
    assert not (cache / "data.txt.gz.part.validator").exists()
