"""A build's store writes made together (farm.build.attest.Uploads): the outputs, the provenance envelope and the log
at once, artifacts in their order, and a failed write reported only after the others have finished."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from farm.build.attest import Uploads
from farm.build.outputs import Output
from farm.errors import E, StoreError
from farm.store import Artifact

pytestmark = pytest.mark.unit


class MeetingStore:
    """A fake store whose writes each wait for ``parties`` writes to be under way at once (a barrier): written
    one after the other, the first would wait in vain and fail."""

    def __init__(self, parties: int) -> None:
        self.barrier = threading.Barrier(parties, timeout=10)
        self.finished: list[str] = []
        self.digests: dict[str, str | None] = {}

    def _meet(self, what: str) -> None:
        self.barrier.wait()
        self.finished.append(what)

    def put_bytes(self, data: bytes) -> str:
        self._meet("bytes")
        return f"digest-of-{data.decode()}"

    def put_file(self, path: Path, *, sha256: str | None = None) -> Artifact:
        self.digests[path.name] = sha256
        self._meet(path.name)
        return Artifact(name=path.name, digest=sha256 or f"digest-of-{path.name}", size=1, executable=False)


def test_the_envelope_and_the_log_are_stored_at_once(tmp_path: Path) -> None:
    store: Any = MeetingStore(2)
    with Uploads(store) as uploads:
        assert uploads.bytes_and_file(b"envelope", tmp_path / "build.log") == (
            "digest-of-envelope",
            "digest-of-build.log",
        )
    assert sorted(store.finished) == ["build.log", "bytes"]


def test_artifacts_are_stored_at_once_and_come_back_in_their_order(tmp_path: Path) -> None:
    store: Any = MeetingStore(3)
    names = ["c.deb", "a.deb", "b.tar"]
    with Uploads(store) as uploads:
        outputs = [Output(tmp_path / n, f"sha-of-{n}", 1) for n in names]
        assert [a.name for a in uploads.files(outputs)] == names
    assert store.digests == {n: f"sha-of-{n}" for n in names}  # each read once: the writer's digest goes along


def test_a_failed_write_is_reported_once_every_write_has_finished(tmp_path: Path) -> None:
    class FailingLog(MeetingStore):
        def put_file(self, path: Path, *, sha256: str | None = None) -> Artifact:
            self.barrier.wait()
            raise OSError("disk full")

        def put_bytes(self, data: bytes) -> str:
            self.barrier.wait()
            leaving.wait(timeout=10)  # still writing when the block is being left
            self.finished.append("bytes")
            return "d"

    store: Any = FailingLog(2)
    leaving = threading.Event()
    with pytest.raises(OSError, match="disk full"), Uploads(store) as uploads:
        shutdown = uploads.pool.shutdown

        def leave(*a: Any, **kw: Any) -> None:
            leaving.set()
            shutdown(*a, **kw)

        uploads.pool.shutdown = leave  # type: ignore[method-assign]
        uploads.bytes_and_file(b"envelope", tmp_path / "build.log")
    assert store.finished == ["bytes"], "the block was left before the envelope's write finished"


def test_outputs_envelope_and_log_are_stored_in_one_go(tmp_path: Path) -> None:
    """The outputs' artifacts come back before they are stored, so the envelope naming them is stored with the log
    while the outputs are written: four writes under way at once, or the barrier fails."""
    store: Any = MeetingStore(4)
    with Uploads(store) as uploads:
        artifacts = uploads.files([Output(tmp_path / n, f"sha-of-{n}", 1) for n in ("a.deb", "b.deb")])
        assert [(a.name, a.digest) for a in artifacts] == [("a.deb", "sha-of-a.deb"), ("b.deb", "sha-of-b.deb")]
        assert store.finished == [], "nothing is stored yet: the writes wait for each other"
        uploads.bytes_and_file(b"envelope", tmp_path / "build.log")
    assert sorted(store.finished) == ["a.deb", "b.deb", "build.log", "bytes"]


def test_an_output_stored_otherwise_than_hashed_fails_the_block(tmp_path: Path) -> None:
    class Shrinking(MeetingStore):
        def put_file(self, path: Path, *, sha256: str | None = None) -> Artifact:
            return Artifact(name=path.name, digest=sha256 or "", size=0, executable=False)

    with pytest.raises(StoreError) as info, Uploads(Shrinking(1)) as uploads:  # type: ignore[arg-type]
        uploads.files([Output(tmp_path / "a.deb", "sha-of-a", 5)])
    assert info.value.code == E.STORE_CORRUPT and "a.deb" in info.value.message
