"""Recipe files written the way a user writes them, build steps a test can hold and release
(:func:`gate_step`), and build requests made from a recipe as the coordinator makes them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from farm.build import BuildRequest, DependencyInput
from farm.build.context import WorkerContext
from farm.envs.host import host_environment
from farm.identity import build_key
from farm.recipes import Recipe, Source
from farm.sources.git import SourceCache
from farm.store import open_store
from farm.trust.keys import BuilderKey
from tests.lib.git import git


def toml_strings(values: Iterable[str]) -> str:
    """A TOML array of basic strings (JSON string syntax is TOML's), safe for any mix of quotes."""
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


GATE_HELD = ".gate-held"
GATE_OPEN = ".gate-open"


def gate_step() -> str:
    """A build step that holds the build until the test opens its gate (:class:`tests.lib.fleet.Gates`).

    It runs in the build directory (``/build/src`` in the sandbox), which is a host directory under the worker's
    work root, ``<home>/work/<recipe>-XXXXXXXX/src``: the step leaves :data:`GATE_HELD` there, waits for
    :data:`GATE_OPEN` to appear beside it, and removes :data:`GATE_HELD` as it goes on. A held build is running
    on its worker for certain, and stays so for as long as the test likes, whatever the machine's load.
    """
    return f"touch {GATE_HELD} && while [ ! -e {GATE_OPEN} ]; do sleep 0.05; done && rm -f {GATE_HELD}"


def write_recipe(
    directory: Path,
    name: str,
    *,
    git_url: str,
    commit: str,
    steps: Sequence[str],
    outputs: Sequence[str] | None = None,
    depends: Iterable[str] = (),
    ref: str | None = None,
) -> Path:
    """``directory/<name>.toml``; its outputs default to the single file ``<name>``."""
    deps = list(depends)
    lines = [f"name = {json.dumps(name)}", 'version = "1.0"', f"outputs = {toml_strings(outputs or [name])}"]
    if deps:
        lines.append(f"build-depends = {toml_strings(deps)}")
    lines += ["", "[source]", f"git = {json.dumps(git_url)}", f"commit = {json.dumps(commit)}"]
    if ref:
        lines.append(f"ref = {json.dumps(ref)}")
    lines += ["", "[build]", "steps = ["] + [f"  {json.dumps(s)}," for s in steps] + ["]"]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def build_request(
    repo: Path,
    commit: str,
    steps: Sequence[str],
    outputs: Sequence[str],
    *,
    name: str = "pkg",
    deps: Sequence[DependencyInput] = (),
) -> BuildRequest:
    """The request the coordinator would send for a recipe ``name`` at ``commit`` of the local ``repo``, built in
    this host's environment."""
    recipe = Recipe(
        name=name,
        version="1.0",
        source=Source(git=str(repo), commit=commit),
        steps=tuple(steps),
        outputs=tuple(outputs),
        build_depends=tuple(d.recipe for d in deps),
    )
    tree = git(repo, "rev-parse", f"{commit}^{{tree}}")
    env = host_environment().digest
    return BuildRequest(
        build_key=build_key(recipe.content(), commit, tree, env, {d.recipe: dict(d.artifacts) for d in deps}),
        recipe=recipe.content(),
        recipe_path=str(repo / f"{name}.toml"),
        fetch_url=str(repo),
        tree=tree,
        environment=env,
        dependencies=tuple(deps),
    )


def worker_context(root: Path, builder_key: BuilderKey, *, timeout: float = 120) -> WorkerContext:
    """A worker's context for in-process builds under ``root`` (store, source cache, work tree) in this host's
    environment."""
    return WorkerContext(
        store=open_store(str(root / "store")),
        builder_key=builder_key,
        sources=SourceCache(root / "cache"),
        work_root=root / "work",
        builder_id="test-builder",
        environment=host_environment(),
        timeout=timeout,
    )
