"""Patched builds through farm.build.execute.execute_build (real git, real bubblewrap, a real local store), and
``recipes check`` applying patches to the pinned source."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from farm.build import BuildRequest
from farm.build.context import WorkerContext
from farm.build.execute import execute_build
from farm.coordinator.plan import make_plan
from farm.envs.host import host_environment
from farm.errors import E, ErrorGroup
from farm.identity import build_key
from farm.recipes import Recipe, check_patches, load_dir
from farm.sources.git import SourceCache
from farm.store import BuildRecord
from farm.trust.keys import BuilderKey
from farm.trust.provenance import verify_envelope
from tests.conftest import MakeRepo, require
from tests.lib.git import git
from tests.lib.recipes import worker_context, write_recipe

pytestmark = pytest.mark.integration

SOURCE = {
    "msg.txt": "hi\n",
    "Makefile": "all:\n\tcat msg.txt > $(OUT)/msg\n\tstat -c %Y msg.txt $(wildcard NEW) > $(OUT)/mtimes\n",
}
FIX = """Description: Say hello
Author: A Packager <packager@example.com>
Forwarded: no
---
--- a/msg.txt
+++ b/msg.txt
@@ -1 +1 @@
-hi
+hello
"""
NEW = "--- /dev/null\n+++ b/NEW\n@@ -0,0 +1 @@\n+new\n"


@pytest.fixture
def ctx(tmp_path: Path, builder_key: BuilderKey) -> WorkerContext:
    require("bwrap")
    return worker_context(tmp_path, builder_key)


def patched_recipe(root: Path, repo: Path, commit: str, patches: dict[str, str]) -> Recipe:
    """``root/recipes/pkg.toml`` building ``repo`` at ``commit`` with ``patches`` (name -> text) kept in
    ``root/patches/pkg/`` and named from the recipe as ``patches/pkg/NAME`` (found in the parent directory)."""
    path = write_recipe(
        root / "recipes",
        "pkg",
        git_url=str(repo),
        commit=commit,
        steps=['make OUT="$OUT"'],
        outputs=["msg", "mtimes"],
    )
    for name, text in patches.items():
        (root / "patches" / "pkg").mkdir(parents=True, exist_ok=True)
        (root / "patches" / "pkg" / name).write_text(text)
    listed = ", ".join(json.dumps(f"patches/pkg/{n}") for n in patches)
    path.write_text(path.read_text().replace("\n[source]", f"patches = [{listed}]\n\n[source]", 1))
    return load_dir(root / "recipes").recipes["pkg"]


def request(recipe: Recipe, repo: Path, commit: str, recipe_path: Path | None = None) -> BuildRequest:
    tree = git(repo, "rev-parse", f"{commit}^{{tree}}")
    env = host_environment().digest
    return BuildRequest(
        build_key=build_key(recipe.content(), commit, tree, env, {}),
        recipe=recipe.content(),
        recipe_path=str(recipe_path or recipe.path),
        fetch_url=recipe.git_location,
        tree=tree,
        environment=env,
    )


def test_a_patched_build_records_its_patches_in_key_provenance_and_store(
    ctx: WorkerContext, make_repo: MakeRepo, tmp_path: Path, builder_key: BuilderKey
) -> None:
    repo, commit = make_repo("pkg", SOURCE)
    recipe = patched_recipe(tmp_path, repo, commit, {"0001-hello.patch": FIX, "0002-new.patch": NEW})
    outcome = execute_build(request(recipe, repo, commit), ctx)
    assert outcome.ok, outcome.log_tail
    assert outcome.record is not None
    record = BuildRecord.from_json(outcome.record)
    assert ctx.store.get_bytes(record.outputs()["msg"]) == b"hello\n"
    commit_time = git(repo, "show", "-s", "--format=%ct", commit)
    assert ctx.store.get_bytes(record.outputs()["mtimes"]).decode().split() == [commit_time, commit_time]
    digests = [hashlib.sha256(t.encode()).hexdigest() for t in (FIX, NEW)]
    assert [p["sha256"] for p in record.key_inputs["recipe"]["patches"]] == digests
    statement = verify_envelope(json.loads(ctx.store.get_bytes(record.provenance)), [builder_key.public]).statement
    resolved = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert resolved[2:] == [
        {"name": "patch/patches/pkg/0001-hello.patch", "digest": {"sha256": digests[0]}},
        {"name": "patch/patches/pkg/0002-new.patch", "digest": {"sha256": digests[1]}},
    ]
    assert all(ctx.store.get_bytes(d) for d in digests), "every patch a provenance names is in the store"
    log = ctx.store.get_bytes(record.log).decode()
    assert f"==> patch patches/pkg/0001-hello.patch sha256 {digests[0]}" in log


def test_a_worker_without_the_patch_files_takes_them_from_the_store_where_planning_put_them(
    ctx: WorkerContext, make_repo: MakeRepo, tmp_path: Path
) -> None:
    repo, commit = make_repo("pkg", SOURCE)
    recipe = patched_recipe(tmp_path, repo, commit, {"0001-hello.patch": FIX})
    elsewhere = Path("/nonexistent/recipes/pkg.toml")  # a worker that holds no recipe files
    outcome = execute_build(request(recipe, repo, commit, elsewhere), ctx)
    assert not outcome.ok and outcome.error is not None
    assert outcome.error["code"] == E.RECIPE_PATCH and "neither beside the recipe nor in the store" in outcome.log_tail
    sources = SourceCache(tmp_path / "plan-cache")
    plan = make_plan(
        load_dir(tmp_path / "recipes"),
        ctx.store,
        lambda r: sources.resolve(r.git_location, r.source.commit, r.source.ref, origin=str(r.path)),
        host_environment(),
    )  # planning puts the recipe's patches in the store, as it does a debian recipe's pinned packages
    assert plan.builds["pkg"].key == request(recipe, repo, commit).build_key
    assert ctx.store.has_blob(hashlib.sha256(FIX.encode()).hexdigest())
    outcome = execute_build(request(recipe, repo, commit, elsewhere), ctx)
    assert outcome.ok, outcome.log_tail


def test_a_patch_that_no_longer_applies_fails_the_build_and_recipes_check(
    ctx: WorkerContext, make_repo: MakeRepo, tmp_path: Path
) -> None:
    repo, commit = make_repo("pkg", SOURCE)
    recipe = patched_recipe(tmp_path, repo, commit, {"0001-hello.patch": FIX})
    assert check_patches([recipe], SourceCache(tmp_path / "check-cache")) == 1
    _, moved = make_repo("pkg", SOURCE | {"msg.txt": "bye\n"})
    text = (tmp_path / "recipes" / "pkg.toml").read_text().replace(commit, moved)
    (tmp_path / "recipes" / "pkg.toml").write_text(text)
    recipe = load_dir(tmp_path / "recipes").recipes["pkg"]
    with pytest.raises(ErrorGroup) as info:
        check_patches([recipe], SourceCache(tmp_path / "check-cache"))
    [err] = info.value.errors
    assert err.code == E.RECIPE_PATCH and err.field == "patches[0]" and err.file == str(recipe.path)
    assert "patches/pkg/0001-hello.patch does not apply" in err.message
    assert "hunk #1 (@@ -1 +1 @@) of msg.txt" in err.message
    outcome = execute_build(request(recipe, repo, moved), ctx)
    assert not outcome.ok and outcome.error is not None and outcome.error["code"] == E.RECIPE_PATCH
