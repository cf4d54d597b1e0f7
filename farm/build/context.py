"""What a worker builds with: its store, signing key, source cache, environment, keyring and limits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from farm.build import sandbox
from farm.build.trees import TreeCache
from farm.envs.host import Environment, host_environment
from farm.sources.git import SourceCache
from farm.store import Store, open_store
from farm.trust import audit
from farm.trust.keys import BuilderKey, PublicKey, load_builder, trusted_keys

if TYPE_CHECKING:
    from farm.build.variation import Variation
    from farm.settings import Settings


@dataclass
class WorkerContext:
    store: Store
    builder_key: BuilderKey
    sources: SourceCache
    work_root: Path
    builder_id: str
    environment: Environment
    timeout: float = 3600.0
    jobs: int = 1
    arch: str = ""
    keep_workdir: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    # The builder keyring dependencies are checked against (None: this worker's own key only) and where security
    # events go (None: counted and logged only).
    trusted: Sequence[PublicKey] | None = None
    audit_log: Path | None = None
    limits: sandbox.Limits = field(default_factory=sandbox.Limits)
    # A recheck (farm.crossval.recheck): build in a deliberately varied environment and do not publish the record.
    variation: Variation | None = None
    # Exported source trees kept beside the git mirrors (None: beside ``sources``, in ``trees/``).
    trees: TreeCache | None = None

    def __post_init__(self) -> None:
        if self.trees is None:
            self.trees = TreeCache(self.sources.root.parent / "trees")

    def keyring(self) -> Sequence[PublicKey]:
        return self.trusted if self.trusted is not None else [self.builder_key.public]

    @classmethod
    def from_settings(
        cls, s: Settings, *, variation: Variation | None = None, extra_keys: Sequence[Path] = ()
    ) -> WorkerContext:
        """The context a worker builds with, from its settings: one definition for Celery workers and for builds
        the CLI runs itself (recheck), so both get the same keyring, audit log and limits."""
        return cls(
            store=open_store(s.store_url),
            builder_key=load_builder(s.keys_dir),
            sources=SourceCache(Path(s.cache_dir) / "git"),
            work_root=Path(s.work_dir),
            builder_id=s.builder,
            environment=host_environment(),
            timeout=float(s.build_timeout),
            arch=s.build_arch,
            trusted=trusted_keys(s.keys_dir, s.trusted_keys_dir, list(extra_keys)),
            audit_log=audit.audit_path(s.home),
            limits=sandbox.Limits(
                memory=s.build_memory_mb * sandbox.MIB,
                processes=s.build_processes,
                scratch=s.build_scratch_mb * sandbox.MIB,
                output=s.build_output_mb * sandbox.MIB,
            ),
            variation=variation,
        )
