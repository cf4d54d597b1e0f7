"""A Debian build runs like on a buildd, and a failing one says why and publishes nothing.

Real dpkg-buildpackage runs in the pinned bookworm environment (made once per session, ~30 s), of tiny native
packages (seconds each): the build user has a name, a group, a home and a buildd's environment, and the recipe's
DEB_BUILD_OPTIONS and build profiles reach apt-get build-dep and dpkg-buildpackage and the provenance; an
unsatisfiable Build-Depends and a failing test suite each fail with their classified cause and no record. The
upstream record of a .dsc import (its URL, its sha256 and its orig tarball's) is checked against a local archive,
fresh and for an import made before the record existed.
"""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from farm.build.context import WorkerContext
from farm.build.execute import execute_build
from farm.sources import dsc, upstream
from farm.store import BuildRecord
from farm.trust.keys import BuilderKey
from tests.conftest import require
from tests.integration.conftest import Made
from tests.lib.debarchive import LocalArchive
from tests.lib.debsource import debian_recipe, debian_request, native_package
from tests.lib.recipes import worker_context

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ctx(made_env: Made, builder_key: BuilderKey, tmp_path_factory: pytest.TempPathFactory) -> WorkerContext:
    """One worker for the module: the environment is unpacked once into its cache."""
    require("unshare")
    root = tmp_path_factory.mktemp("buildd")
    return replace(worker_context(root, builder_key, timeout=600), store=made_env.store)


def _statement(ctx: WorkerContext, record: BuildRecord) -> dict[str, Any]:
    envelope = json.loads(ctx.store.get_bytes(record.provenance))
    stmt: dict[str, Any] = json.loads(base64.b64decode(envelope["payload"]))
    return stmt


def test_the_build_user_has_a_name_a_home_and_a_buildds_environment(
    ctx: WorkerContext, made_env: Made, tmp_path: Path
) -> None:
    build = [
        "whoami",
        'test "$$(id -un)" = sbuild && test "$$(id -gn)" = sbuild',
        'test -d "$$HOME" && touch "$$HOME/written" && test ~ = "$$HOME"',
        'test "$$(getent passwd "$$(id -u)" | cut -d: -f6)" = "$$HOME"',
        'echo "probe: user=$$(whoami) logname=$$LOGNAME home=$$HOME shell=$$SHELL"',
        'echo "probe: options=$$DEB_BUILD_OPTIONS profiles=$$DEB_BUILD_PROFILES"',
    ]
    repo = tmp_path / "probe"
    # Only the nodoc profile drops this build-dependency: the profile must reach apt-get build-dep.
    commit = native_package(repo, "probe", build, build_depends="mangos-no-such-package <!nodoc>")
    recipe = debian_recipe(repo, "probe", commit, options=("nodoc",), profiles=("nodoc",))
    outcome = execute_build(debian_request(recipe, repo, made_env.record.digest), ctx)
    assert outcome.ok, outcome.log_tail
    assert outcome.record is not None
    record = BuildRecord.from_json(outcome.record)
    log = ctx.store.get_bytes(record.log).decode()
    assert "probe: user=sbuild logname=sbuild home=/build/home shell=/bin/sh\n" in log
    assert "probe: options=nodoc parallel=1 profiles=nodoc\n" in log
    predicate = _statement(ctx, record)["predicate"]["buildDefinition"]
    assert predicate["externalParameters"]["recipe"]["build"]["profiles"] == ["nodoc"]
    debian = predicate["internalParameters"]["debian"]
    assert debian["debBuildOptions"] == "nodoc parallel=1" and debian["buildProfiles"] == ["nodoc"]
    assert debian["resources"] == {"parallel": 1, "memoryBytes": ctx.limits.memory, "timeoutSeconds": 600}
    assert predicate["externalParameters"]["source"]["upstream"] == {"vcs-git": "https://salsa.example/test/probe.git"}


def test_unsatisfiable_build_depends_is_classified_and_publishes_nothing(
    ctx: WorkerContext, made_env: Made, tmp_path: Path
) -> None:
    repo = tmp_path / "needy"
    commit = native_package(repo, "needy", build_depends="mangos-no-such-package (>= 1)")
    req = debian_request(debian_recipe(repo, "needy", commit), repo, made_env.record.digest)
    outcome = execute_build(req, ctx)
    assert not outcome.ok and outcome.error is not None
    assert outcome.error["cause"]["kind"] == "build-deps", outcome.log_tail
    assert "mangos-no-such-package" in outcome.error["cause"]["evidence"]
    assert "!!! cause: build-deps" in outcome.log_tail
    assert ctx.store.get_record(req.build_key) is None


def test_a_failing_test_suite_is_classified_and_publishes_nothing(
    ctx: WorkerContext, made_env: Made, tmp_path: Path
) -> None:
    repo = tmp_path / "flaky"
    check = "check:\n\t@echo 'PASS: t-one'\n\t@echo 'FAIL: t-two'\n\t@exit 1\n"
    commit = native_package(repo, "flaky", ["$(MAKE) -f debian/check.mk check"], extra={"debian/check.mk": check})
    req = debian_request(debian_recipe(repo, "flaky", commit), repo, made_env.record.digest)
    outcome = execute_build(req, ctx)
    assert not outcome.ok and outcome.error is not None
    assert outcome.error["cause"] == {
        "kind": "test-suite",
        "evidence": "make[1]: *** [debian/check.mk:4: check] Error 1",
        "phase": "dpkg-buildpackage",
    }, outcome.log_tail
    assert ctx.store.get_record(req.build_key) is None


def test_an_import_records_the_dsc_url_and_sha256_and_the_orig_tarballs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require("dpkg-source")
    archive = LocalArchive(tmp_path / "archive")
    added = archive.add(name="tool", version="2.1-3", binaries=("tool",))
    archive.publish()
    archive.use(monkeypatch)
    imported = dsc.import_dsc("tool", "2.1-3", tmp_path / "cache", lists_dir=archive.lists_dir)
    record = upstream.read_record(imported.repo)
    dsc_file = added.dsc
    assert record["dsc"] == {
        "name": "tool_2.1-3.dsc",
        "sha256": dsc.sha256_file(dsc_file),
        "url": f"file:{dsc_file}",
    }
    orig = dsc_file.parent / "tool_2.1.orig.tar.gz"
    assert record["orig"] == [{"name": orig.name, "sha256": dsc.sha256_file(orig)}]
    found = upstream.of_source("tool=2.1-3", "2.1-3", tmp_path / "no-tree", tmp_path / "cache")
    assert found == record | {"release": "2.1"}
    # An import made before the record existed gets the same record from the Sources index, without a download.
    (imported.repo / upstream.RECORD).unlink()
    assert dsc.import_dsc("tool", "2.1-3", tmp_path / "cache", lists_dir=archive.lists_dir).commit == imported.commit
    assert upstream.read_record(imported.repo) == record
