"""Helpers for the cross-validation tests: organizations (homes with their own key and store) that really build,
and a malicious builder that signs provenance for a digest it never built."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

from farm.build.execute import BuildOutcome, BuildRequest, WorkerContext, execute_build
from farm.crossval.log import InputsKey, Log
from farm.crossval.publish import log_dir
from farm.envs.host import host_environment
from farm.identity import build_key
from farm.recipes import Recipe, Source
from farm.settings import Settings
from farm.sources.git import SourceCache
from farm.store import BuildRecord, open_store
from farm.trust.keys import BuilderKey, generate
from farm.trust.provenance import sign
from tests.conftest import git


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
    recipe = Recipe(
        name=name,
        version="1.0",
        source=Source(git=str(repo), commit=commit),
        steps=tuple(steps),
        outputs=tuple(outputs),
    )
    tree = git(repo, "rev-parse", f"{commit}^{{tree}}")
    env = host_environment().digest
    return BuildRequest(
        build_key=build_key(recipe.content(), commit, tree, env, {}),
        recipe=recipe.content(),
        recipe_path=str(repo / f"{name}.toml"),
        fetch_url=str(repo),
        tree=tree,
        environment=env,
    )


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
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    for name, text in files.items():
        (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "src")
    return git(repo, "rev-parse", "HEAD")
