"""A real pinned build environment, made twice with mmdebstrap into two separate stores: same digest.

Each making takes ~20-30 s and downloads from the archive, so the session makes exactly two.
"""

from __future__ import annotations

import json
import tarfile

import pytest

from farm.envs.debian import HOSTNAME, RESOLV_CONF, load_records
from farm.identity import canonical_json
from tests.integration.conftest import Made

pytestmark = pytest.mark.integration


def test_made_twice_gives_the_same_digest(made_twice: tuple[Made, Made]) -> None:
    a, b = made_twice
    assert a.record.digest == b.record.digest
    assert a.record.size == b.record.size > 100_000_000
    assert a.record.record == b.record.record  # the record blob (spec + digest + packages) is identical too
    assert a.record.packages == b.record.packages


def test_manifest_lists_the_build_toolchain(made_twice: tuple[Made, Made]) -> None:
    record = made_twice[0].record
    names = {p["name"]: p for p in record.packages}
    for pkg in ("build-essential", "dpkg-dev", "gcc", "make", "libc6"):
        assert pkg in names, pkg
    assert names["libc6"]["arch"] == "amd64" and names["dpkg-dev"]["arch"] == "all"
    assert all(p["version"] for p in record.packages)
    assert record.spec["suite"] == "bookworm" and record.spec["source_date_epoch"] > 0


def test_tarball_and_record_are_in_the_store(made_twice: tuple[Made, Made]) -> None:
    made = made_twice[0]
    record, store = made.record, made.store
    assert store.has_blob(record.digest)
    stored = json.loads(store.get_bytes(record.record))
    assert canonical_json(stored) == record.content_bytes()
    assert stored["digest"] == record.digest and len(stored["packages"]) == len(record.packages)
    assert load_records(made.records_dir) == [record]
    with store.open_blob(record.digest) as fh, tarfile.open(fileobj=fh, mode="r|") as tar:
        pinned = {}
        for member in tar:
            if member.name in ("./etc/hostname", "./etc/resolv.conf"):
                f = tar.extractfile(member)
                assert f is not None
                pinned[member.name] = f.read().decode()
    assert pinned == {"./etc/hostname": HOSTNAME + "\n", "./etc/resolv.conf": RESOLV_CONF + "\n"}
