"""The web view's HTTP API against a farm with real state: a real ``mangos-farm rebuild`` (git, bubblewrap,
Celery workers on the embedded SQLite broker, a local store) in a temporary home, then the server in-process on a
free port, asked over HTTP."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

import pytest

from farm.coordinator.kv import open_kv
from farm.settings import Settings
from farm.store.local import LocalStore
from farm.trust.keys import load_builder
from farm.trust.provenance import verify_envelope
from farm.web import FarmHTTPServer, WebApp, make_server
from tests.conftest import git, require, write_recipe
from tests.e2e.conftest import Farm

pytestmark = pytest.mark.integration

HELLO = "hello from the farm\n"


@dataclass
class Reply:
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        assert self.headers.get_content_type() == "application/json", self.headers
        return json.loads(self.body)


@dataclass
class Served:
    url: str
    farm: Farm
    settings: Settings
    first: dict[str, Any]  # the run with a failed build
    second: dict[str, Any]  # a later run, all cached
    commit: str

    def get(self, path: str, method: str = "GET") -> Reply:
        try:
            with urlopen(Request(self.url + path, method=method), timeout=30) as resp:
                return Reply(resp.status, resp.headers, resp.read())
        except HTTPError as err:
            return Reply(err.code, err.headers, err.read())

    def build(self, run: dict[str, Any], recipe: str) -> dict[str, Any]:
        found: dict[str, Any] = next(b for b in run["builds"] if b["recipe"] == recipe)
        return found


@contextmanager
def serving(server: FarmHTTPServer) -> Iterator[str]:
    thread = threading.Thread(target=server.serve_forever, name="web", daemon=True)
    thread.start()
    try:
        yield server.url.rstrip("/")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    require("bwrap")
    require("git")
    root = tmp_path_factory.mktemp("web")
    repo = root / "repos" / "hello"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    (repo / "README").write_text("the hello package\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "hello")
    commit = git(repo, "rev-parse", "HEAD")
    recipes = root / "recipes"
    write_recipe(
        recipes,
        "hello",
        git_url=str(repo),
        commit=commit,
        steps=[
            f'printf "{HELLO.strip()}\\n" > "$OUT/hello.txt"',
            'mkdir -p "$OUT/share/doc" && cp README "$OUT/share/doc/"',
        ],
        outputs=["hello.txt", "share"],
    )
    write_recipe(
        recipes,
        "world",
        git_url=str(repo),
        commit=commit,
        steps=['cat "$DEPS/hello/hello.txt" README > "$OUT/world.txt"'],
        outputs=["world.txt"],
        depends=("hello",),
    )
    write_recipe(recipes, "broken", git_url=str(repo), commit=commit, steps=["echo about to fail", "exit 3"],
                 outputs=["x"])  # fmt: skip
    only_hello = root / "only-hello"
    only_hello.mkdir()
    shutil.copy(recipes / "hello.toml", only_hello / "hello.toml")

    env = {k: v for k, v in os.environ.items() if not k.startswith("MANGOS_FARM_")}
    env |= {"MANGOS_FARM_HOME": str(root / ".mangos"), "MANGOS_FARM_WORKERS": "2"}
    farm = Farm(root, root / ".mangos", env)
    farm.run("keys", "generate")
    first = farm.json("rebuild", "recipes", check=False)  # exits 1: 'broken' fails
    assert first["summary"]["built"] == 2 and first["summary"]["failed"] == 1, first
    second = farm.json("rebuild", "only-hello")
    assert second["summary"]["cached"] == 1, second

    settings = Settings.from_env(env)
    with serving(make_server(settings, "127.0.0.1", 0)) as url:
        yield Served(url, farm, settings, first, second, commit)


def _no_times(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in rows]


# -- runs and workers --------------------------------------------------------------------------------------------
def test_runs_lists_every_run_newest_first_with_counts(served: Served) -> None:
    runs = served.get("/api/runs").json()
    assert [r["run"] for r in runs] == [served.second["run"], served.first["run"]]
    latest, first = runs
    assert latest["status"] == "done" and latest["ok"] is True and latest["total"] == 1
    assert {k: v for k, v in latest["summary"].items() if v} == {"cached": 1}
    assert first["ok"] is False and first["total"] == 3
    assert {k: v for k, v in first["summary"].items() if v} == {"built": 2, "failed": 1}
    assert first["created"] < latest["created"] and first["finished"] is not None


def test_run_is_the_coordinators_status(served: Served) -> None:
    run = served.first["run"]
    reply = served.get(f"/api/runs/{run}")
    assert reply.status == 200 and reply.headers["Cache-Control"] == "no-store"
    cli = served.farm.json("status", run)
    assert cli.pop("reproducibility") == {}  # farm-wide recheck rates ride along in `status`, not in a run
    assert reply.json() == cli
    broken = served.build(reply.json(), "broken")
    assert broken["state"] == "failed" and "about to fail" in broken["log_tail"]
    assert broken["error"]["code"] == "E-BUILD-FAILED"


def test_unknown_run_is_a_json_404_and_its_page_says_so(served: Served) -> None:
    reply = served.get("/api/runs/20990101T000000Z-nosuch")
    assert reply.status == 404
    error = reply.json()["error"]
    assert error["code"] == "E-RUN-UNKNOWN" and "20990101T000000Z-nosuch" in error["message"] and error["hint"]
    page = served.get("/runs/20990101T000000Z-nosuch")
    assert page.status == 404 and page.headers.get_content_type() == "text/html"
    odd = served.get(f"/api/runs/{served.first['run']}:jobs")  # not a run id: never a KV key of another kind
    assert odd.status == 404 and odd.json()["error"]["code"] == "E-RUN-UNKNOWN"


def test_workers_are_what_the_cli_shows(served: Served) -> None:
    reply = served.get("/api/workers")
    assert reply.status == 200
    assert _no_times(reply.json()) == _no_times(served.farm.json("workers"))


# -- builds ------------------------------------------------------------------------------------------------------
def test_build_record_log_and_provenance(served: Served) -> None:
    hello = served.build(served.first, "hello")
    key = hello["build_key"]
    store = LocalStore(served.settings.home / "store")
    record = store.get_record(key)
    assert record is not None

    reply = served.get(f"/api/builds/{key}")
    assert reply.status == 200 and reply.json() == record.to_json()
    assert reply.json()["commit"] == served.commit
    assert "immutable" in reply.headers["Cache-Control"]

    log = served.get(f"/api/builds/{key}/log")
    assert log.status == 200 and log.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert hashlib.sha256(log.body).hexdigest() == record.log
    assert b"==> step 1/2" in log.body and b"==> outputs: hello.txt" in log.body

    provenance = served.get(f"/api/builds/{key}/provenance")
    assert hashlib.sha256(provenance.body).hexdigest() == record.provenance  # the stored envelope, byte for byte
    verified = verify_envelope(provenance.json(), [load_builder(served.settings.keys_dir).public])
    assert verified.subjects() == hello["artifacts"]


def test_unknown_malformed_and_failed_builds_are_clear_errors(served: Served) -> None:
    broken_key = served.build(served.first, "broken")["build_key"]
    for path in ("", "/log", "/provenance"):
        reply = served.get(f"/api/builds/{'0' * 64}{path}")
        assert reply.status == 404 and reply.json()["error"]["code"] == "E-BUILD-UNKNOWN"
        failed = served.get(f"/api/builds/{broken_key}{path}")  # failed: no record, its log tail is in the run
        assert failed.status == 404 and "log tail" in failed.json()["error"]["hint"]
        bad = served.get(f"/api/builds/not-a-key{path}")
        assert bad.status == 400 and bad.json()["error"]["code"] == "E-WEB-BAD-REQUEST"


# -- artifacts by commit -----------------------------------------------------------------------------------------
def test_commit_lists_its_artifacts_with_download_links(served: Served) -> None:
    rows = served.get(f"/commits/{served.commit}").json()
    assert sorted((r["recipe"], r["artifact"]) for r in rows) == [
        ("hello", "hello.txt"),
        ("hello", "share.tar"),
        ("world", "world.txt"),
    ]
    for r in rows:
        assert r["url"] == f"/commits/{served.commit}/{r['artifact']}?key={r['build_key']}"
        assert r["provenance"] == f"/api/builds/{r['build_key']}/provenance"
    only_world = served.get(f"/commits/{served.commit.upper()}?recipe=world").json()
    assert [r["artifact"] for r in only_world] == ["world.txt"]


def test_download_streams_the_verified_artifact(served: Served) -> None:
    for row in served.get(f"/commits/{served.commit}").json():
        for url in (row["url"], f"/commits/{served.commit}/{row['artifact']}"):  # by key, and by name alone
            reply = served.get(url)
            assert reply.status == 200
            assert reply.headers["Content-Type"] == "application/octet-stream"
            assert reply.headers["Content-Disposition"].startswith(f'attachment; filename="{row["artifact"]}"')
            assert int(reply.headers["Content-Length"]) == row["size"] == len(reply.body)
            assert hashlib.sha256(reply.body).hexdigest() == row["sha256"]
            assert reply.headers["ETag"] == f'"{row["sha256"]}"' and reply.headers["X-Build-Key"] == row["build_key"]
        if row["artifact"] == "hello.txt":
            assert reply.body == HELLO.encode()
        if row["artifact"] == "world.txt":
            assert reply.body == (HELLO + "the hello package\n").encode()
    head = served.get(f"/commits/{served.commit}/hello.txt", method="HEAD")
    assert head.status == 200 and head.body == b"" and head.headers["Content-Length"] == str(len(HELLO))


def test_commit_errors(served: Served) -> None:
    cases = {
        f"/commits/{'a' * 40}": (404, "E-FETCH-NOTHING"),
        f"/commits/{'a' * 40}/hello.txt": (404, "E-FETCH-NOTHING"),
        f"/commits/{served.commit}/nothing.bin": (404, "E-FETCH-NOTHING"),
        f"/commits/{served.commit}/hello.txt?key={'0' * 64}": (404, "E-FETCH-NOTHING"),
        f"/commits/{served.commit}?recipe=nosuch": (404, "E-FETCH-NOTHING"),
        "/commits/abc123": (400, "E-WEB-BAD-REQUEST"),
        "/commits/abc123/hello.txt": (400, "E-WEB-BAD-REQUEST"),
    }
    for path, (status, code) in cases.items():
        reply = served.get(path)
        assert (reply.status, reply.json()["error"]["code"]) == (status, code), path
        assert reply.json()["error"]["hint"], path


def test_a_corrupt_blob_is_never_served_whole(served: Served, tmp_path: Path) -> None:
    """A small corrupt blob fails before any byte is sent; a large one is cut short before its last chunk."""
    copy = tmp_path / "store"
    shutil.copytree(served.settings.home / "store", copy)
    rows = {r["artifact"]: r for r in served.get(f"/commits/{served.commit}").json()}
    for name in ("hello.txt", "share.tar"):
        blob = copy / "blobs" / "sha256" / rows[name]["sha256"][:2] / rows[name]["sha256"]
        blob.chmod(0o644)
        data = bytearray(blob.read_bytes())
        data[-1] ^= 0xFF  # same size, different bytes
        blob.write_bytes(bytes(data))
    app = WebApp(open_kv(served.settings.state_url), LocalStore(copy))
    app.chunk = 512  # share.tar (a tar of at least 10 KiB) spans many chunks
    with serving(FarmHTTPServer(("127.0.0.1", 0), app)) as url:
        small = Served(url, served.farm, served.settings, {}, {}, served.commit).get(rows["hello.txt"]["url"])
        assert small.status == 500 and small.json()["error"]["code"] == "E-STORE-CORRUPT"
        parts = urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
        conn.request("GET", rows["share.tar"]["url"])
        resp = conn.getresponse()
        assert resp.status == 200  # headers went out with the first chunk
        with pytest.raises(http.client.IncompleteRead) as cut:
            resp.read()
        assert len(cut.value.partial) < rows["share.tar"]["size"]
        conn.close()


# -- the page and the server -------------------------------------------------------------------------------------
def test_page_and_its_assets(served: Served) -> None:
    for path in ("/", f"/runs/{served.first['run']}", f"/?commit={served.commit}"):
        page = served.get(path)
        assert page.status == 200 and page.headers.get_content_type() == "text/html", path
        assert b'<script src="/static/app.js"' in page.body and b"commit-form" in page.body
        assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    js = served.get("/static/app.js")
    assert js.status == 200 and js.headers["Content-Type"].startswith("text/javascript") and b"fetch(" in js.body
    assert served.get("/static/app.css").status == 200
    assert served.get("/static/../../etc/passwd").status == 404
    missing = served.get("/static/nothing.js")
    assert missing.status == 404 and missing.json()["error"]["code"] == "E-WEB-NOT-FOUND"


def test_unknown_paths_and_methods(served: Served) -> None:
    reply = served.get("/api/nothing")
    assert reply.status == 404 and "/api/runs" in reply.json()["error"]["hint"]
    assert served.get("/api").json()["endpoints"][0] == "/api/runs"
    for method in ("POST", "PUT", "DELETE"):
        refused = served.get("/api/runs", method=method)
        assert refused.status == 405 and refused.headers["Allow"] == "GET, HEAD"
        assert refused.json()["error"]["code"] == "E-WEB-BAD-REQUEST"


def test_serve_command_reports_a_busy_port(served: Served) -> None:
    port = urlsplit(served.url).port
    assert port is not None
    proc = served.farm.run("serve", "--port", str(port), check=False)
    assert proc.returncode == 2
    assert "error[E-SETTINGS]" in proc.stderr and "--port" in proc.stderr and "hint:" in proc.stderr


def test_the_web_view_does_not_import_celery() -> None:
    code = "import sys, farm.web; sys.exit('celery' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
