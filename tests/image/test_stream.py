"""The streaming writer: a published release written back into a disk from files and over HTTP (a server thread
on 127.0.0.1), only allocated ranges, every range checked before it is written, the GPT last; a cut stream and a
corrupted range leave no partition table."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from farm.errors import E, FarmError
from farm.image import channel, publish, stream
from farm.image.bmap import GPT_BYTES, BlockMap
from farm.trust.release_keys import load_cert
from tests.lib.release import Built, build_out, release_keys
from tests.lib.tools import require

pytestmark = pytest.mark.integration
V = "1.0"


@dataclass(frozen=True)
class Release:
    built: Built
    base: Path  # the release directory in the channel
    bmap: BlockMap


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Release:
    require("sfdisk")
    tmp = tmp_path_factory.mktemp("stream")
    keys = release_keys(tmp / "keys")
    built = build_out(tmp / "out", V, keys)
    publish.publish(built.out, str(tmp / "chan"), keys, tmp / "work")
    got = channel.verify_release(lambda rel: (tmp / "chan" / rel).read_bytes(), [load_cert(keys.verity_cert)])
    name = channel.file_name(V, channel.BMAP)
    bmap = stream.fetch_block_map(str(tmp / "chan" / V), name, got.digests[name])
    return Release(built, tmp / "chan" / V, bmap)


def has_gpt(disk: Path) -> bool:
    with disk.open("rb") as fh:
        fh.seek(512)
        return fh.read(8) == b"EFI PART"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Served:
    """What the test server does to the files it serves: stop after N bytes of one, flip a byte of another."""

    cut: dict[str, int] = field(default_factory=dict)
    flip: dict[str, int] = field(default_factory=dict)


@pytest.fixture
def server(release: Release) -> Iterator[tuple[str, Served]]:
    served = Served()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = release.base.parent / self.path.lstrip("/")
            name = path.name
            if not path.is_file():
                self.send_error(404)
                return
            data = bytearray(path.read_bytes())
            if name in served.flip:
                data[served.flip[name]] ^= 0xFF
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))  # the whole length, even when cut
            self.end_headers()
            self.wfile.write(data[: served.cut.get(name, len(data))])

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/{V}", served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_file_source_writes_only_allocated_ranges_and_reproduces_the_image(release: Release, tmp_path: Path) -> None:
    target = tmp_path / "disk.raw"
    seen: list[stream.Progress] = []
    done = stream.write_image(str(release.base), release.bmap, target, progress=seen.append)
    assert sha256(target) == sha256(release.built.raw)
    assert done.bytes == release.bmap.allocated <= 1.05 * release.bmap.allocated
    assert release.bmap.allocated < release.bmap.size / 2
    assert seen[-1].written == done.bytes and seen[-1].total == release.bmap.allocated
    assert any(p.eta is not None and p.eta >= 0 for p in seen[:-1])
    assert [p.written for p in seen] == sorted(p.written for p in seen)


def test_http_source_and_an_old_disk_get_the_same_bytes(
    release: Release, tmp_path: Path, server: tuple[str, Served]
) -> None:
    url, _ = server
    got = channel.verify_release(stream.fetcher(url.rsplit("/", 1)[0]), [load_cert(release.built.keys.verity_cert)])
    name = channel.file_name(V, channel.BMAP)
    assert stream.fetch_block_map(url, name, got.digests[name]) == release.bmap
    target = tmp_path / "disk.raw"
    target.write_bytes(b"\xaa" * (release.bmap.size + 4096))  # an old disk's bytes in the holes are not kept here
    stream.write_image(url, release.bmap, target)
    assert sha256(target) == sha256(release.built.raw)


def test_a_cut_stream_leaves_no_partition_table(release: Release, tmp_path: Path, server: tuple[str, Served]) -> None:
    url, served = server
    target = tmp_path / "disk.raw"
    stream.write_image(url, release.bmap, target)
    assert has_gpt(target)  # a bootable disk first: the cut must take its table away
    root = channel.file_name(V, channel.ROOT)
    served.cut[root] = 1024 * 1024 + 5
    with pytest.raises(FarmError) as err:
        stream.write_image(url, release.bmap, target)
    assert err.value.code == E.STREAM_INCOMPLETE and err.value.hint
    assert not has_gpt(target)
    with target.open("rb") as fh:
        assert fh.read(GPT_BYTES) == bytes(GPT_BYTES)


def test_a_corrupted_range_is_never_written(release: Release, tmp_path: Path, server: tuple[str, Served]) -> None:
    url, served = server
    root = channel.file_name(V, channel.ROOT)
    bad = next(r for r in release.bmap.ranges if r.file == root)
    served.flip[root] = bad.at + 17
    target = tmp_path / "disk.raw"
    with pytest.raises(FarmError) as err:
        stream.write_image(url, release.bmap, target)
    assert err.value.code == E.STREAM_CORRUPT and err.value.hint
    assert not has_gpt(target)
    with target.open("rb") as fh:
        fh.seek(bad.offset)
        assert fh.read(bad.length) == bytes(bad.length)  # checked before writing: none of it is on the disk
    esp = next(r for r in release.bmap.ranges if not r.gpt and r.file == channel.file_name(V, channel.DISK))
    with target.open("rb") as fh:
        fh.seek(esp.offset)
        assert hashlib.sha256(fh.read(esp.length)).hexdigest() == esp.sha256  # what came before it is written


def test_write_payload_checks_the_signed_digest(release: Release, tmp_path: Path, server: tuple[str, Served]) -> None:
    url, served = server
    name = channel.file_name(V, channel.VERITY)
    data = (release.base / name).read_bytes()
    slot = tmp_path / "slot"
    slot.write_bytes(bytes(len(data) + 8192))
    done = stream.write_payload(
        f"{url}/{name}", slot, sha256=hashlib.sha256(data).hexdigest(), size=len(data), offset=4096
    )
    assert done.bytes == len(data) and slot.read_bytes()[4096 : 4096 + len(data)] == data
    served.flip[name] = 5
    with pytest.raises(FarmError) as err:
        stream.write_payload(f"{url}/{name}", slot, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    assert err.value.code == E.STREAM_CORRUPT
