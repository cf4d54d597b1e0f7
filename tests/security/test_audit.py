"""The audit log: append-only JSON lines from many processes at once, and the security-events counter."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from farm import metrics
from farm.errors import E, FarmError
from farm.trust import audit

pytestmark = pytest.mark.unit


def _writer(path: str, n: int, who: str) -> None:
    for i in range(n):
        audit.record(Path(path), audit.SANDBOX_LIMIT, who=who, what=f"build {i}", detail="x" * 500)


def test_concurrent_writers_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    procs = [multiprocessing.Process(target=_writer, args=(str(path), 200, f"w{i}")) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    entries = list(audit.read(path))
    assert len(entries) == 800
    assert {e["who"] for e in entries} == {"w0", "w1", "w2", "w3"}
    assert all(e["event"] == "sandbox_limit" and e["time"].endswith("Z") and e["host"] for e in entries)
    assert path.stat().st_mode & 0o777 == 0o600


def test_record_counts_and_keeps_details(tmp_path: Path) -> None:
    before = metrics.security_events.labels("refused_result")._value.get()
    entry = audit.record(tmp_path / "a.jsonl", audit.REFUSED_RESULT, who="w1", what="hello", error="E-X", gone=None)
    assert metrics.security_events.labels("refused_result")._value.get() == before + 1
    assert entry["error"] == "E-X" and "gone" not in entry
    assert list(audit.read(tmp_path / "a.jsonl")) == [entry]
    audit.record(None, audit.FORGED_TASK, who="w", what="t")  # no home: counted only
    assert list(audit.read(tmp_path / "missing.jsonl")) == []


def test_a_damaged_log_is_an_error_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit.record(path, audit.KEY_REVOKED, who="ops", what="k")
    with path.open("ab") as fh:
        fh.write(b"{truncated\n")
    with pytest.raises(FarmError) as info:
        list(audit.read(path))
    assert info.value.code == E.AUDIT and "line 2" in info.value.message
