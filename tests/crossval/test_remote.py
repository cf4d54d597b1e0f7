"""Log locations other than a directory: published to S3 (moto's real S3 server), read over S3 and over HTTP."""

from __future__ import annotations

import functools
import http.server
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.crossval.compare import compare
from farm.crossval.peers import load_peers
from farm.crossval.publish import publish
from tests.conftest import require
from tests.crossval.helpers import Org, make_org, request, source_repo
from tests.store.conftest import MotoServer, moto_server, s3_env  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration


@pytest.fixture
def two_orgs(tmp_path: Path) -> tuple[Org, Org]:
    require("bwrap")
    repo = tmp_path / "src"
    req = request(repo, source_repo(repo, {"f.txt": "payload\n"}), "copy", ['cp f.txt "$OUT/f.txt"'], ["f.txt"])
    orgs = make_org(tmp_path, "alpha"), make_org(tmp_path, "beta")
    for org in orgs:
        org.build(req)
    return orgs


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_publish_to_s3_and_compare_over_s3_and_http(
    two_orgs: tuple[Org, Org],
    moto_server: MotoServer,  # noqa: F811
    s3_env: str,  # noqa: F811
    http_root: tuple[Path, str],
    tmp_path: Path,
) -> None:
    alpha, beta = two_orgs
    bucket = f"logs-{uuid.uuid4().hex[:8]}"
    moto_server.client.create_bucket(Bucket=bucket)
    publish(beta.settings, f"s3://{bucket}/beta")
    keys = {o["Key"] for o in moto_server.client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {"beta/log.jsonl", "beta/head.json", "beta/rebuilds.jsonl"}
    www, url = http_root
    publish(beta.settings, str(www / "beta"))
    trust = tmp_path / "peers.toml"
    trust.write_text(
        f'[peers.betas3]\nkey = "{beta.pem}"\nlog = "s3://{bucket}/beta"\n'
        f'[peers.betaweb]\nkey = "{beta.pem}"\nlog = "{url}/beta/"\n'
    )
    report = compare(alpha.settings, load_peers(trust))
    assert report["peers"]["betas3"]["status"] == "ok" and report["peers"]["betaweb"]["status"] == "ok"
    assert report["totals"] == {"agree": 2, "disagree": 0, "missing": 0} and report["exit"] == 0
    # A missing object / page is an unreachable peer (exit 2), not an agreement.
    trust.write_text(f'[peers.gone]\nkey = "{beta.pem}"\nlog = "{url}/nobody/"\n')
    report = compare(alpha.settings, load_peers(trust))
    assert report["peers"]["gone"]["status"] == "unreachable" and report["exit"] == 2
    assert "404" in report["peers"]["gone"]["error"]["message"]
