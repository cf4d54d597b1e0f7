"""Rebuild bundles: everything another organization needs to rebuild one build offline and check the digest.

A bundle is a tar with ``manifest.json`` (the recipe, source commit and tree, environment digest, arch, the
build key, the dependency outputs and the expected output digests), ``source.bundle`` (a git bundle holding the
commit), ``provenance.intoto.json`` (the builder's signed statement) and ``blobs/SHA256`` for every input the
build reads from the store: the dependencies' outputs (with their records, provenance and logs in ``records/``,
checked against the keyring before use: trust the bundling organization's key with ``--key``), the pinned archive
packages and (``--with-env``) the build-environment tarball. ``rebuild-bundle`` loads it into the current (fresh)
store, recomputes the build key from the manifest, builds through the ordinary build code with the source taken
from the bundle, and compares.
"""

from __future__ import annotations

import json
import logging
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm.build import BuildRequest, DependencyInput
from farm.build.context import WorkerContext
from farm.build.execute import execute_build
from farm.errors import E, FarmError, StoreError
from farm.fsutil import atomic_write
from farm.identity import build_key
from farm.log import step
from farm.pack import safe_extract
from farm.recipes import Recipe
from farm.run import require_tool, run
from farm.sources.git import SourceCache, _cache_name
from farm.store import BuildRecord, Store

log = logging.getLogger(__name__)

SCHEMA = "https://mangos.dev/farm/rebuild-bundle/v1"
BUNDLE_REF = "refs/heads/mangos-bundle"


def manifest_for(req: BuildRequest, record: BuildRecord, arch: str) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "recipe": record.recipe,
        "version": record.version,
        "build_key": record.build_key,
        "content": dict(req.recipe),
        "source_url": record.source_url,
        "commit": record.commit,
        "tree": record.tree,
        "environment": record.environment,
        "arch": arch,
        "dependencies": [
            {"recipe": d.recipe, "build_key": d.build_key, "artifacts": dict(d.artifacts)} for d in req.dependencies
        ],
        "outputs": record.outputs(),
    }


def _git_bundle(mirror: Path, commit: str, ref: str, dest: Path, work: Path) -> None:
    """A git bundle with the history of ``commit`` and the recipe's ``ref`` (checked against it), nothing else."""
    require_tool("git")
    tmp = work / "bundle.git"
    run(["git", "init", "-q", "--bare", tmp])
    refs = [BUNDLE_REF]
    run(["git", "-C", tmp, "fetch", "-q", "--no-tags", str(mirror), f"{commit}:{BUNDLE_REF}"])
    if ref:
        full = run(["git", "-C", mirror, "rev-parse", "--symbolic-full-name", ref]).text.strip()
        if full.startswith("refs/"):
            run(["git", "-C", tmp, "fetch", "-q", "--no-tags", str(mirror), f"+{full}:{full}"])
            refs.append(full)
    run(["git", "-C", tmp, "bundle", "create", dest, *refs])


def _add(tar: tarfile.TarFile, path: Path, name: str) -> None:
    info = tar.gettarinfo(str(path), arcname=name)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    info.mode = 0o644
    with path.open("rb") as fh:
        tar.addfile(info, fh)


def make_bundle(
    req: BuildRequest,
    record: BuildRecord,
    *,
    store: Store,
    sources: SourceCache,
    arch: str,
    output: Path,
    with_env: bool = False,
) -> dict[str, Any]:
    manifest = manifest_for(req, record, arch)
    recipe = Recipe.from_content(req.recipe, Path(req.recipe_path))
    recipe_pins = [p["sha256"] for p in recipe.pins()]
    dep_records = []
    for dep in req.dependencies:
        found = store.get_record(dep.build_key)
        if found is None:
            raise StoreError(
                E.STORE_MISSING,
                f"the dependency build {dep.recipe} ({dep.build_key[:16]}) has no record in {store.url}",
                hint="rebuild the recipe set first ('mangos-farm rebuild')",
            )
        dep_records.append(found)
    # The dependencies' records, signed provenance and logs travel too: the rebuilding side checks every
    # dependency against its provenance and its keyring before use, exactly as for its own builds.
    blobs = sorted(
        {d for dep in req.dependencies for d in dep.artifacts.values()}
        | set(recipe_pins)
        | {p.sha256 for p in recipe.patches}
        | {d for r in dep_records for d in (r.provenance, r.log)}
    )
    if with_env and record.source_url.startswith("dsc:"):
        blobs.append(record.environment)
    with step("bundle", log, recipe=record.recipe), tempfile.TemporaryDirectory(prefix="bundle-") as tmp:
        work = Path(tmp)
        sources.resolve(req.fetch_url, record.commit)
        local_url = sources._local_url(req.fetch_url)
        mirror = sources.root / f"{_cache_name(local_url)}.git"
        _git_bundle(mirror, record.commit, recipe.source.ref or "", work / "source.bundle", work)
        (work / "manifest.json").write_text(json.dumps(manifest, sort_keys=True, indent=1))
        (work / "provenance.intoto.json").write_bytes(store.get_bytes(record.provenance))
        for digest in blobs:
            store.fetch_blob(digest, work / "blobs" / digest)
        for r in dep_records:
            (work / "records").mkdir(exist_ok=True)
            (work / "records" / f"{r.build_key}.json").write_bytes(r.to_bytes())
        output.parent.mkdir(parents=True, exist_ok=True)
        partial = output.with_name(output.name + ".partial")
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            for name in ("manifest.json", "provenance.intoto.json", "source.bundle"):
                _add(tar, work / name, name)
            for digest in blobs:
                _add(tar, work / "blobs" / digest, f"blobs/{digest}")
            for r in dep_records:
                _add(tar, work / "records" / f"{r.build_key}.json", f"records/{r.build_key}.json")
        partial.replace(output)
    manifest["blobs"] = len(blobs)
    return manifest


def _bad(message: str, bundle: Path, hint: str = "make the bundle again with 'mangos-farm bundle'") -> FarmError:
    return FarmError(E.BUNDLE_INVALID, message, file=bundle, hint=hint)


@dataclass(frozen=True)
class RebuildResult:
    recipe: str
    build_key: str
    expected: dict[str, str]
    rebuilt: dict[str, str]

    @property
    def same(self) -> bool:
        return self.expected == self.rebuilt

    def to_json(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "build_key": self.build_key,
            "same": self.same,
            "expected": self.expected,
            "rebuilt": self.rebuilt,
        }


def rebuild_bundle(bundle: Path, ctx: WorkerContext, unpack_dir: Path) -> RebuildResult:
    """Load the bundle's inputs into ``ctx.store``, rebuild, and compare with the bundle's expected outputs."""
    try:
        with tarfile.open(bundle) as tar:
            safe_extract(tar, unpack_dir, "bundle member")
        manifest = json.loads((unpack_dir / "manifest.json").read_text())
    except (OSError, tarfile.TarError, ValueError) as exc:
        raise _bad(f"not a readable rebuild bundle: {exc}", bundle) from None
    if manifest.get("schema") != SCHEMA:
        raise _bad(f"unknown bundle schema {manifest.get('schema')!r}", bundle)
    blobs = unpack_dir / "blobs"
    for path in sorted(blobs.iterdir()) if blobs.is_dir() else []:
        digest = ctx.store.put_file(path).digest
        if digest != path.name:
            raise _bad(f"blob {path.name} has sha256 {digest}: the bundle is damaged", bundle)
    records = unpack_dir / "records"
    for path in sorted(records.glob("*.json")) if records.is_dir() else []:
        try:
            dep_record = BuildRecord.from_json(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as exc:
            raise _bad(f"dependency record {path.name} is unreadable: {exc}", bundle) from None
        ctx.store.put_record(dep_record)  # checked against its provenance and the keyring before use
    deps = tuple(DependencyInput(d["recipe"], d["build_key"], d["artifacts"]) for d in manifest["dependencies"])
    key = build_key(
        manifest["content"],
        manifest["commit"],
        manifest["tree"],
        manifest["environment"],
        {d.recipe: dict(d.artifacts) for d in deps},
    )
    if key != manifest["build_key"]:
        raise _bad(f"the manifest's inputs give build key {key}, not the {manifest['build_key']} it claims", bundle)
    if manifest["content"].get("kind", "script") != "debian" and ctx.environment.digest != manifest["environment"]:
        raise _bad(
            f"this machine's build environment is {ctx.environment.digest[:16]}, the bundle was built in "
            f"{manifest['environment'][:16]}",
            bundle,
            hint="rebuild on a machine with the same build tools (see 'mangos-farm plan --json' for the digest)",
        )
    source = unpack_dir / "source.bundle"
    atomic_write(unpack_dir / "recipe.json", json.dumps(manifest["content"], indent=1).encode())
    req = BuildRequest(
        build_key=key,
        recipe=manifest["content"],
        recipe_path=str(unpack_dir / "recipe.json"),
        fetch_url=str(source),
        tree=manifest["tree"],
        environment=manifest["environment"],
        dependencies=deps,
    )
    outcome = execute_build(req, ctx)
    if not outcome.ok or outcome.record is None:
        err = outcome.error or {}
        raise FarmError(
            E.BUILD_FAILED,
            f"the rebuild of {manifest['recipe']} failed: {err.get('message', '')}\n{outcome.log_tail}",
            hint=err.get("hint", "") or "read the log above",
        )
    rebuilt = BuildRecord.from_json(outcome.record).outputs()
    return RebuildResult(manifest["recipe"], key, dict(manifest["outputs"]), rebuilt)
