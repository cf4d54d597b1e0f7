"""From a recipes directory and the farm's settings to a plan: recipes loaded, sources resolved through the farm's
source cache, the host environment read, each debian recipe's pinned environment and packages checked in the store.

What ``plan``, ``rebuild`` and ``recheck`` share. The resolved commits are saved even when planning fails, so what
was resolved before the failure is not resolved again. Planning runs no process per recipe: a commit resolved once is
remembered (:class:`~farm.sources.resolved.ResolvedCommits`), and what many recipes share (a repository's location,
an environment's record, a blob's presence in the store) is looked up once per plan.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from farm.coordinator.plan import Plan, make_plan
from farm.envs.host import host_environment
from farm.errors import E, FarmError
from farm.recipes import Recipe, load_dir
from farm.settings import Settings
from farm.sources.git import ResolvedSource, SourceCache
from farm.sources.resolved import ResolvedCommits
from farm.store import Store, open_store

if TYPE_CHECKING:
    from farm.envs.debian import EnvRecord


def plan_recipes(recipes_dir: Path, settings: Settings, *, force: bool = False) -> tuple[Plan, Store]:
    """The plan for the recipes in ``recipes_dir`` against this farm's store (``force``: as if nothing were cached),
    and that store."""
    recipes = load_dir(recipes_dir, settings.cache_dir)
    store = open_store(settings.store_url)
    environments = PinnedEnvironments(settings, store)
    with source_resolver(settings) as resolve:
        plan = make_plan(
            recipes, store, resolve, host_environment(settings.cache_dir), force=force, env_for=environments
        )
    return plan, store


@contextmanager
def source_resolver(settings: Settings) -> Iterator[Callable[[Recipe], ResolvedSource]]:
    """Resolve each recipe's pinned commit through the farm's source cache; what was resolved is saved on the way
    out, even when planning fails. A repository location is worked out once per (directory, git URL)
    (:attr:`~farm.recipes.Recipe.git_location` remembers it)."""
    resolved = ResolvedCommits(SourceCache(settings.cache_dir / "git"))

    def resolve(r: Recipe) -> ResolvedSource:
        return resolved.resolve(r.git_location, r.source.commit, r.source.ref, origin=str(r.path))

    try:
        yield resolve
    finally:
        resolved.save()


class PinnedEnvironments:
    """The digest of each recipe's pinned environment (see :func:`debian_environment`), with the farm's
    environment records read once and each blob's presence in the store asked once per plan."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings, self.store = settings, store
        self._records: dict[str, EnvRecord] | None = None
        self._present: set[str] = set()

    def has_blob(self, digest: str) -> bool:
        if digest in self._present:
            return True
        if self.store.has_blob(digest):
            self._present.add(digest)
            return True
        return False

    def records(self) -> dict[str, EnvRecord]:
        if self._records is None:
            from farm.envs.debian import load_records

            self._records = {r.name: r for r in load_records(self.settings.home / "envs")}
        return self._records

    def __call__(self, recipe: Recipe) -> str:
        record = self.records().get(recipe.environment)
        if record is None or not self.has_blob(record.digest):
            raise FarmError(
                E.ENV_UNKNOWN,
                f"the build environment '{recipe.environment}' has not been made (or is not in {self.store.url})",
                file=recipe.path,
                field="build.environment",
                hint=f"make it: mangos-farm env build {recipe.environment}",
            )
        missing = [p for p in recipe.pins() if not self.has_blob(p["sha256"])]
        if missing:
            from farm.archive import Pin, ensure_pins

            ensure_pins([Pin.from_dict(p) for p in missing], self.store)
            self._present.update(p["sha256"] for p in missing)
        return str(record.digest)


def debian_environment(recipe: Recipe, settings: Settings, store: Store) -> str:
    """The digest of a debian recipe's pinned environment. The environment must have been made on this machine and be
    in ``store`` (E-ENV-UNKNOWN otherwise); the recipe's pinned packages not yet in the store are fetched into it."""
    return PinnedEnvironments(settings, store)(recipe)
