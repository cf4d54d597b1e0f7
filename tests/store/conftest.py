"""Fixtures for the store conformance suite.

Every test in ``test_conformance.py`` runs once per backend in :data:`BACKENDS`. A new backend needs one more
entry there, one more branch in :func:`store` that yields an instance of it, and one more branch in
:func:`corrupt_blob` that damages a stored blob behind the store's back. Nothing else in the suite knows how a
backend lays out its data.

The s3 backend runs against a real moto S3 server (one subprocess per test session, started only when an S3 test
runs) over HTTP, with a fresh bucket per test. Its endpoint and fake credentials reach the store the way they do
in production, through the AWS environment variables (set with monkeypatch for that test only), so child
processes that call ``open_store(store.url)`` reach the same bucket.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from farm.store import Store, open_store
from farm.store.local import LocalStore
from farm.store.s3 import S3Store
from tests.conftest import IN_CI
from tests.lib.moto import FAKE_CREDENTIALS, REGION, MotoServer
from tests.lib.tools import free_port

__all__ = ["FAKE_CREDENTIALS", "REGION", "MotoServer", "free_port"]  # the moto server lives in tests.lib.moto

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

BACKENDS = ["local", "s3"]


def require_module(module: str, package: str) -> None:
    """Skip a test when a Python package is missing, but fail it in CI (like ``tests.conftest.require``)."""
    if importlib.util.find_spec(module) is None:
        if IN_CI:
            pytest.fail(f"required package '{package}' is missing in CI: install it via 'make setup'")
        pytest.skip(f"'{package}' is not installed")


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """A moto S3 server on a free port of 127.0.0.1, for the whole session."""
    require_module("moto.server", "moto[server]")
    require_module("flask", "moto[server]")
    server = MotoServer.start(tmp_path_factory.mktemp("moto") / "server.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the AWS environment of this test (and of processes it starts) at the moto server; its URL."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server.url)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)  # no developer's ~/.aws settings leak in
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return moto_server.url


def empty_and_delete(client: S3Client, bucket: str) -> None:
    for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        objects = [{"Key": o["Key"]} for o in page.get("Contents", []) if "Key" in o]
        if objects:
            client.delete_objects(Bucket=bucket, Delete={"Objects": objects})  # type: ignore[typeddict-item]
    client.delete_bucket(Bucket=bucket)


@pytest.fixture
def s3_bucket(moto_server: MotoServer) -> Iterator[str]:
    """A new, empty bucket, deleted with its contents afterwards."""
    bucket = f"farm-test-{uuid.uuid4().hex[:16]}"
    moto_server.client.create_bucket(Bucket=bucket)
    yield bucket
    empty_and_delete(moto_server.client, bucket)


@pytest.fixture
def s3_store(s3_env: str, s3_bucket: str) -> S3Store:
    """A fresh S3 store under a prefix of a fresh bucket, opened the way every other process opens it."""
    store = open_store(f"s3://{s3_bucket}/farm/store")
    assert isinstance(store, S3Store)
    return store


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A fresh, empty store of each backend. Other processes reach the same store with ``open_store(store.url)``."""
    if request.param == "local":
        yield LocalStore(tmp_path / "store")
    elif request.param == "s3":
        yield request.getfixturevalue("s3_store")
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
    if isinstance(store, S3Store):
        key = f"{store.prefix}blobs/sha256/{digest[:2]}/{digest}"
        store.client.head_object(Bucket=store.bucket, Key=key)  # raises if the blob is not where the layout says
        store.client.put_object(Bucket=store.bucket, Key=key, Body=data)  # unconditional: overwrites
        return
    raise AssertionError(f"corrupt_blob does not know how to damage a {type(store).__name__}")
