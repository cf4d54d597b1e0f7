"""The build stage's contract: what the coordinator asks a worker to build and what comes back.

This module holds only the request and outcome types (JSON-serialisable for the task message) and the error a
build raises; it loads none of the executor. The machinery is imported explicitly: :mod:`farm.build.execute`
(``execute_build``) and :mod:`farm.build.context` (``WorkerContext``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from farm.errors import FarmError

__all__ = ["BuildFailure", "BuildOutcome", "BuildRequest", "DependencyInput"]


@dataclass(frozen=True)
class DependencyInput:
    recipe: str
    build_key: str
    artifacts: Mapping[str, str]  # artifact name -> sha256


@dataclass(frozen=True)
class BuildRequest:
    """Everything a worker needs, decided by the coordinator; JSON-serialisable for the task message."""

    build_key: str
    recipe: Mapping[str, Any]
    recipe_path: str
    fetch_url: str
    tree: str
    environment: str
    dependencies: Sequence[DependencyInput] = ()
    lease: str = ""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["dependencies"] = [asdict(d) for d in self.dependencies]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BuildRequest:
        data = dict(data)
        data["dependencies"] = tuple(DependencyInput(**d) for d in data.get("dependencies", ()))
        return cls(**data)

    def dependency_outputs(self) -> dict[str, dict[str, str]]:
        return {d.recipe: dict(d.artifacts) for d in self.dependencies}


@dataclass(frozen=True)
class BuildOutcome:
    build_key: str
    recipe: str
    ok: bool
    record: dict[str, Any] | None = None
    published: bool = False
    error: dict[str, Any] | None = None
    log_digest: str | None = None
    log_tail: str = ""
    worker: str = ""
    duration: float = 0.0
    lease: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BuildOutcome:
        return cls(**data)


class BuildFailure(FarmError):
    """A build problem (a failed step, a missing output, a refused dependency): reported as a failed outcome."""
