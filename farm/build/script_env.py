"""What a script build sees besides its source and dependencies: a pinned environment's /usr in place of the host's,
and the recipe's input files.

- **Environment**: a script recipe that names one (``build.environment``, an ``envs/NAME.toml`` made by
  ``mangos-farm env build``) runs its steps under the same bubblewrap sandbox as any script build, but with the
  environment's ``/usr`` (and the few ``/etc`` entries a toolchain reads) bound read-only where the host's would be.
  The environment is unpacked once per machine (:func:`farm.build.debian.env_root`, checked against its sha256),
  and its digest, not the host's package list, is in the build key: the build does not change, nor rebuild, when
  the host's packages do.
- **Inputs** (:mod:`farm.recipes.inputs`): each file is read next to the recipe or, on a worker without the recipe's
  files, from the store by its sha256; a file whose bytes are not the recorded digest is refused. They are written
  under the build's work directory, made read-only and bound at ``$INPUTS`` (``/build/inputs``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import IO

from farm.build import BuildFailure, sandbox
from farm.build.debian import env_root
from farm.errors import E
from farm.recipes import Input, Recipe
from farm.recipes.inputs import ENV_VAR, SANDBOX_DIR
from farm.recipes.patches import read_local
from farm.store import Store

# What of an environment's root a build sees, at the same paths: the toolchain and what the dynamic loader and
# update-alternatives links read (the same set as the host's in farm.build.sandbox.HOST_RO).
ENV_PATHS = ("usr", "etc/alternatives", "etc/ld.so.cache", "etc/ld.so.conf", "etc/ld.so.conf.d")


def env_binds(root: Path, present: frozenset[str] | None = None) -> tuple[tuple[str, str], ...]:
    """(host path, sandbox path) pairs showing the environment unpacked at ``root`` as the sandbox's /usr and /etc
    entries. ``present``: which of :data:`ENV_PATHS` exist (None: look on disk)."""
    have = present if present is not None else frozenset(p for p in ENV_PATHS if (root / p).exists())
    return tuple((str(root / p), f"/{p}") for p in ENV_PATHS if p in have)


def input_bind(inputs_dir: Path) -> tuple[str, str]:
    return str(inputs_dir), SANDBOX_DIR


def stage_inputs(recipe: Recipe, store: Store, dest: Path, logfh: IO[bytes]) -> None:
    """Write the recipe's inputs under ``dest`` at their paths as written (mode 0444; the sandbox binds ``dest``
    read-only), each checked against its recorded sha256 (beside the recipe, else from the store, where it is put
    if it was not there yet)."""
    dest.mkdir(parents=True, exist_ok=True)
    for item in recipe.inputs:
        data = _input_bytes(item, recipe, store)
        target = dest / PurePosixPath(item.file)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        target.chmod(0o444)
        logfh.write(f"==> input {item.file} sha256 {item.sha256}\n".encode())


def _input_bytes(item: Input, recipe: Recipe, store: Store) -> bytes:
    data = read_local(item, recipe.path)  # refuses local bytes that are not the planned digest
    stored = store.has_blob(item.sha256)
    if data is None and stored:
        data = store.get_bytes(item.sha256)  # the store checks the digest on the way out
    if data is None:
        raise BuildFailure(
            E.RECIPE_VALUE,
            f"input {item.file} (sha256 {item.sha256}) is neither beside the recipe nor in the store",
            file=recipe.path,
            field="inputs",
            hint="run workers where the recipes and their inputs are, or plan once where they are",
        )
    if not stored:
        store.put_bytes(data)
    return data


def prepare(
    spec: sandbox.SandboxSpec,
    recipe: Recipe,
    *,
    environment: str,
    store: Store,
    cache: Path,
    workdir: Path,
    logfh: IO[bytes],
) -> sandbox.SandboxSpec:
    """``spec`` with the recipe's pinned environment (``environment``: its digest, as planned) in place of the
    host's /usr, and its inputs bound at $INPUTS. A recipe with neither gets ``spec`` back unchanged."""
    if recipe.environment:
        root = env_root(store, environment, cache)
        logfh.write(f"==> environment {recipe.environment} sha256 {environment}\n".encode())
        spec = replace(spec, host_ro=(), binds=(*env_binds(root), *spec.binds))
    if recipe.inputs:
        inputs_dir = workdir / "inputs"
        stage_inputs(recipe, store, inputs_dir, logfh)
        spec = replace(spec, binds=(*spec.binds, input_bind(inputs_dir)), env={**spec.env, ENV_VAR: SANDBOX_DIR})
    return spec
