"""Fixtures for the store conformance suite.

Every test in ``test_conformance.py`` runs once per backend in :data:`BACKENDS`. A new backend (s3) needs one
more entry there, one more branch in :func:`store` that yields an instance of it, and one more branch in
:func:`corrupt_blob` that damages a stored blob behind the store's back. Nothing else in the suite knows how a
backend lays out its data.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.store import Store
from farm.store.local import LocalStore

BACKENDS = ["local"]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A fresh, empty store of each backend. Other processes reach the same store with ``open_store(store.url)``."""
    if request.param == "local":
        yield LocalStore(tmp_path / "store")
    else:  # pragma: no cover - a backend listed without a branch here is a mistake in this file
        raise AssertionError(f"no fixture branch for store backend {request.param!r}")


def corrupt_blob(store: Store, digest: str, data: bytes) -> None:
    """Replace the stored bytes of blob ``digest`` with ``data``, as bit rot or a rogue writer would."""
    if isinstance(store, LocalStore):
        path = store.root / "blobs" / "sha256" / digest[:2] / digest
        assert path.is_file(), f"blob {digest} is not where the local layout puts it"
        os.chmod(path, 0o644)
        path.write_bytes(data)
        os.chmod(path, 0o444)
        return
    raise AssertionError(f"corrupt_blob does not know how to damage a {type(store).__name__}")
