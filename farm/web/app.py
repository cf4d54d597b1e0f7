"""The web view's routes: each turns a GET of a path into a :class:`Response` (JSON, text, the page, or a blob
streamed with its digest checked on the way out). Errors are JSON ``{"error": {code, message, hint}}`` with the ids
of :mod:`farm.errors`; nothing reaches a client as a traceback.

Everything is read-only: the routes read the coordinator's state through :mod:`farm.coordinator.views`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from farm.coordinator.kv import KV
from farm.coordinator.runs import RunStore
from farm.coordinator.views import StatusQuery, run_rows, run_status, slots, worker_rows
from farm.errors import E, FarmError, StoreError
from farm.store import Artifact, BuildRecord, Store
from farm.trust.fetch import records_for

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # bytes read from the store per step of a download
HEX40 = re.compile(r"[0-9a-fA-F]{40}")
HEX64 = re.compile(r"[0-9a-f]{64}")
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # what run ids are made of (no KV key separators)
JSON = "application/json"
STATIC = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
PAGE_POLICY = "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
IMMUTABLE = "public, max-age=31536000, immutable"  # a build key names exactly one record, log and envelope
ENDPOINTS = [
    "/api/runs",
    "/api/runs/<run>",
    "/api/workers",
    "/api/builds/<build key>",
    "/api/builds/<build key>/log",
    "/api/builds/<build key>/provenance",
    "/commits/<sha>",
    "/commits/<sha>/<artifact>",
]
HTTP_STATUS = {
    E.RUN_UNKNOWN: 404,
    E.BUILD_UNKNOWN: 404,
    E.FETCH_NOTHING: 404,
    E.STORE_MISSING: 404,
    E.WEB_NOT_FOUND: 404,
    E.WEB_REQUEST: 400,
    E.STATUS_QUERY: 400,
    E.FETCH_AMBIGUOUS: 409,
    E.STATE_UNREACHABLE: 503,
    E.STORE_UNREACHABLE: 503,
}


@dataclass
class Response:
    """What to answer: a body, or a ``stream`` of chunks (``Content-Length`` is then among the headers)."""

    status: int
    content_type: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    stream: Generator[bytes, None, None] | None = None


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(data, indent=1, sort_keys=True).encode() + b"\n"
    return Response(status, JSON, body, {"Cache-Control": "no-store"} | (headers or {}))


def error_response(exc: FarmError) -> Response:
    status = HTTP_STATUS.get(exc.code, 500)
    return json_response({"error": {"code": exc.code, "message": exc.message, "hint": exc.hint}}, status)


def internal_error() -> Response:
    """A bug in the web view (logged with its traceback on the server): the client learns only that much."""
    return error_response(
        FarmError(E.INTERNAL, "internal error in the farm's web view", hint="the server's log has the details")
    )


def method_not_allowed(method: str) -> Response:
    resp = error_response(
        FarmError(E.WEB_REQUEST, f"method {method} is not allowed", hint="the web view is read-only: use GET")
    )
    resp.status, resp.headers["Allow"] = 405, "GET, HEAD"
    return resp


def verified_blob(store: Store, artifact: Artifact, chunk: int = CHUNK) -> Generator[bytes, None, None]:
    """The blob's bytes, checked against ``artifact``'s digest and size while they stream.

    Each chunk is handed out only once the next one has been read, and the last only once the whole blob has
    hashed to its digest: a corrupt blob raises ``E-STORE-CORRUPT`` before its final bytes go out, so a client
    never receives all ``Content-Length`` bytes of a corrupt artifact (a small one fails before any byte is sent).
    """
    reader = store.open_blob(artifact.digest)
    try:
        h = hashlib.sha256()
        seen = 0
        pending: bytes | None = None
        while data := reader.read(chunk):
            seen += len(data)
            if seen > artifact.size:
                break
            h.update(data)
            if pending is not None:
                yield pending
            pending = data
    finally:
        reader.close()
    if seen != artifact.size or h.hexdigest() != artifact.digest:
        raise StoreError(
            E.STORE_CORRUPT,
            f"blob {artifact.digest} in {store.url} is corrupt (its bytes do not match the record)",
            hint="the download was cut short on purpose; rebuild the artifact with --force and check the store",
        )
    if pending is not None:
        yield pending


def _safe_filename(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name) or "artifact"


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _static(name: str) -> bytes:
    return resources.files("farm.web").joinpath("static", name).read_bytes()


Route = Callable[..., Response]


class WebApp:
    """The routes over one coordinator state (KV) and one store."""

    def __init__(self, kv: KV, store: Store, *, lease_timeout: float = 30.0, aging: float = 600.0) -> None:
        self.kv = kv
        self.store = store
        self.lease_timeout = lease_timeout
        self.aging = aging
        self.runs = RunStore(kv)
        self.chunk = CHUNK
        self.page = _static("index.html")
        self.assets = {name: _static(name) for name in STATIC}
        self.routes: list[tuple[re.Pattern[str], Route]] = [
            (re.compile(r"/"), self.index_page),
            (re.compile(r"/runs/([^/]+)"), self.run_page),
            (re.compile(r"/static/([^/]+)"), self.asset),
            (re.compile(r"/api"), self.api_index),
            (re.compile(r"/api/runs"), self.api_runs),
            (re.compile(r"/api/runs/([^/]+)"), self.api_run),
            (re.compile(r"/api/workers"), self.api_workers),
            (re.compile(r"/api/builds/([^/]+)"), self.api_build),
            (re.compile(r"/api/builds/([^/]+)/log"), self.api_build_log),
            (re.compile(r"/api/builds/([^/]+)/provenance"), self.api_build_provenance),
            (re.compile(r"/commits/([^/]+)"), self.commit_artifacts),
            (re.compile(r"/commits/([^/]+)/([^/]+)"), self.commit_download),
        ]

    # -- dispatch ---------------------------------------------------------------------------------------------
    def handle(self, method: str, target: str) -> Response:
        """The response to ``method target``; never raises (errors become JSON error responses)."""
        if method not in ("GET", "HEAD"):
            return method_not_allowed(method)
        try:
            parts = urlsplit(target)
            path = parts.path.rstrip("/") or "/"
            query = parse_qs(parts.query)
            for pattern, route in self.routes:
                match = pattern.fullmatch(path)
                if match:
                    return route(*(unquote(g) for g in match.groups()), query=query)
            raise FarmError(
                E.WEB_NOT_FOUND,
                f"nothing at {parts.path}",
                hint="the page is at /; the API has " + ", ".join(ENDPOINTS),
            )
        except FarmError as exc:
            return error_response(exc)
        except Exception:
            log.exception("GET %s failed", target)
            return internal_error()

    # -- the page ---------------------------------------------------------------------------------------------
    def _html(self, status: int = 200) -> Response:
        headers = {"Cache-Control": "no-cache", "Content-Security-Policy": PAGE_POLICY}
        return Response(status, "text/html; charset=utf-8", self.page, headers)

    def index_page(self, *, query: dict[str, list[str]]) -> Response:
        return self._html()

    def _run_id(self, run_id: str) -> str:
        if not RUN_ID.fullmatch(run_id):
            raise FarmError(E.RUN_UNKNOWN, f"no run '{run_id[:80]}'", hint="see the runs at /api/runs")
        return run_id

    def run_page(self, run_id: str, *, query: dict[str, list[str]]) -> Response:
        try:
            self.runs.get(self._run_id(run_id))
        except FarmError as exc:
            if exc.code != E.RUN_UNKNOWN:
                raise
            return self._html(404)  # the page itself says what is missing
        return self._html()

    def asset(self, name: str, *, query: dict[str, list[str]]) -> Response:
        if name not in self.assets:
            raise FarmError(E.WEB_NOT_FOUND, f"no asset {name}", hint="the page's assets are " + ", ".join(STATIC))
        return Response(200, STATIC[name], self.assets[name], {"Cache-Control": "no-cache"})

    # -- runs and workers -------------------------------------------------------------------------------------
    def api_index(self, *, query: dict[str, list[str]]) -> Response:
        return json_response({"endpoints": ENDPOINTS})

    def api_runs(self, *, query: dict[str, list[str]]) -> Response:
        return json_response(run_rows(self.runs))

    def api_run(self, run_id: str, *, query: dict[str, list[str]]) -> Response:
        """The run as ``status --json`` shows it; ``state``, ``lane``, ``name``, ``limit`` and ``page`` select
        builds as the command's flags do (no ``limit``: every build selected)."""
        wanted = StatusQuery.parse(
            state=_one(query, "state"),
            lane=_one(query, "lane"),
            name=_one(query, "name"),
            limit=_one(query, "limit"),
            page=_one(query, "page"),
        )
        status = run_status(
            self.runs, self._run_id(run_id), wanted, slots=slots(self.kv, self.lease_timeout), aging=self.aging
        )
        return json_response(status)

    def api_workers(self, *, query: dict[str, list[str]]) -> Response:
        return json_response(worker_rows(self.kv, self.lease_timeout))

    # -- builds -----------------------------------------------------------------------------------------------
    def _record(self, key: str) -> BuildRecord:
        if not HEX64.fullmatch(key):
            raise FarmError(
                E.WEB_REQUEST,
                f"'{key[:80]}' is not a build key",
                hint="a build key is 64 lowercase hex characters (see build_key in /api/runs/<run>)",
            )
        record = self.store.get_record(key)
        if record is None:
            raise FarmError(
                E.BUILD_UNKNOWN,
                f"no build record {key} in the store",
                hint="only finished builds have records: a failed build's log tail is in /api/runs/<run>",
            )
        return record

    def api_build(self, key: str, *, query: dict[str, list[str]]) -> Response:
        return json_response(self._record(key).to_json(), headers={"Cache-Control": IMMUTABLE})

    def api_build_log(self, key: str, *, query: dict[str, list[str]]) -> Response:
        data = self.store.get_bytes(self._record(key).log)
        return Response(200, "text/plain; charset=utf-8", data, {"Cache-Control": IMMUTABLE})

    def api_build_provenance(self, key: str, *, query: dict[str, list[str]]) -> Response:
        data = self.store.get_bytes(self._record(key).provenance)
        return Response(200, JSON, data, {"Cache-Control": IMMUTABLE})

    # -- artifacts by commit ----------------------------------------------------------------------------------
    @staticmethod
    def _commit(sha: str) -> str:
        if not HEX40.fullmatch(sha):
            raise FarmError(
                E.WEB_REQUEST,
                f"'{sha[:80]}' is not a full commit id",
                hint="pass the full 40-hex source commit (git rev-parse <rev>)",
            )
        return sha.lower()

    @staticmethod
    def download_url(commit: str, name: str, build_key: str) -> str:
        return f"/commits/{commit}/{quote(name, safe='')}?key={build_key}"

    def commit_artifacts(self, sha: str, *, query: dict[str, list[str]]) -> Response:
        commit = self._commit(sha)
        records = records_for(self.store, commit, _one(query, "recipe"))
        return json_response(
            [
                {
                    "recipe": r.recipe,
                    "version": r.version,
                    "commit": r.commit,
                    "build_key": r.build_key,
                    "builder": r.builder,
                    "finished": r.finished,
                    "artifact": a.name,
                    "sha256": a.digest,
                    "size": a.size,
                    "executable": a.executable,
                    "url": self.download_url(commit, a.name, r.build_key),
                    "record": f"/api/builds/{r.build_key}",
                    "log": f"/api/builds/{r.build_key}/log",
                    "provenance": f"/api/builds/{r.build_key}/provenance",
                }
                for r in records
                for a in r.artifacts
            ]
        )

    def commit_download(self, sha: str, name: str, *, query: dict[str, list[str]]) -> Response:
        commit = self._commit(sha)
        key = _one(query, "key")
        matches = [
            (r, a)
            for r in records_for(self.store, commit, _one(query, "recipe"))
            for a in r.artifacts
            if a.name == name and key in (None, r.build_key)
        ]
        if not matches:
            raise FarmError(
                E.FETCH_NOTHING,
                f"no artifact '{name[:120]}' built from commit {commit}" + (f" by build {key[:80]}" if key else ""),
                hint=f"list what was built from it at /commits/{commit}",
            )
        if len({a.digest for _, a in matches}) > 1:
            raise FarmError(
                E.FETCH_AMBIGUOUS,
                f"{len(matches)} different artifacts named '{name}' were built from commit {commit} "
                f"(builds {', '.join(r.build_key[:12] for r, _ in matches)})",
                hint=f"pick one with ?key=BUILD_KEY; /commits/{commit} links each",
            )
        record, artifact = matches[0]
        filename = _safe_filename(artifact.name)
        headers = {
            "Content-Length": str(artifact.size),
            "Content-Disposition": f"attachment; filename=\"{filename}\"; filename*=UTF-8''{quote(artifact.name)}",
            "ETag": f'"{artifact.digest}"',
            "Repr-Digest": f"sha-256=:{base64.b64encode(bytes.fromhex(artifact.digest)).decode()}:",
            "X-Build-Key": record.build_key,
            "Cache-Control": "no-cache",
        }
        return Response(
            200, "application/octet-stream", headers=headers, stream=verified_blob(self.store, artifact, self.chunk)
        )
