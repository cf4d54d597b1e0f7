"""Helpers for the cross-validation tests: organizations (homes with their own key and store) that really build,
and a malicious builder that signs provenance for a digest it never built."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

from farm.build import BuildOutcome, BuildRequest
from farm.build.context import WorkerContext
from farm.build.execute import execute_build
from farm.crossval.log import InputsKey, Log
from farm.crossval.publish import log_dir
from farm.envs.host import host_environment
from farm.settings import Settings
from farm.sources.git import SourceCache
from farm.store import BuildRecord, open_store
from farm.trust.keys import BuilderKey, generate
from farm.trust.provenance import sign
from tests.lib.git import make_repo
from tests.lib.recipes import build_request


@dataclass
class Org:
    name: str
    settings: Settings
    key: BuilderKey

    @property
    def pem(self) -> Path:
        return self.settings.keys_dir / "builder.pub"

    def context(self) -> WorkerContext:
        return WorkerContext(
            store=open_store(self.settings.store_url),
            builder_key=self.key,
            sources=SourceCache(self.settings.cache_dir / "git"),
            work_root=self.settings.work_dir,
            builder_id=f"{self.name}-builder",
            environment=host_environment(),
            timeout=120,
        )

    def build(self, req: BuildRequest) -> BuildRecord:
        outcome: BuildOutcome = execute_build(req, self.context())
        assert outcome.ok, outcome.log_tail
        assert outcome.record is not None
        return BuildRecord.from_json(outcome.record)


def make_org(root: Path, name: str) -> Org:
    settings = Settings(home=root / name)
    return Org(name, settings, generate(settings.keys_dir))


def request(repo: Path, commit: str, name: str, steps: list[str], outputs: list[str]) -> BuildRequest:
    return build_request(repo, commit, steps, outputs, name=name)


def log_tampered(org: Org, record: BuildRecord, artifact: str, digest: str) -> None:
    """The malicious builder: it logs provenance, signed with its real key, naming a digest it never built."""
    store = open_store(org.settings.store_url)
    stmt = json.loads(base64.b64decode(json.loads(store.get_bytes(record.provenance))["payload"]))
    for subject in stmt["subject"]:
        if subject["name"] == artifact:
            subject["digest"]["sha256"] = digest
    envelope = sign(stmt, org.key)
    own = Log.open(log_dir(org.settings))
    outputs = record.outputs() | {artifact: digest}
    own.append(
        key=InputsKey.from_statement(stmt, org.settings.build_arch),
        recipe=record.recipe,
        version=record.version,
        build_key=record.build_key,
        outputs=outputs,
        envelope=envelope,
    )
    own.sign(org.key)


def source_repo(repo: Path, files: dict[str, str]) -> str:
    """A real git repository at ``repo`` with ``files`` in one commit; returns the commit."""
    return make_repo(repo, files)
