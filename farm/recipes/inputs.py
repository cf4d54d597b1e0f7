"""A recipe's inputs: files of the repository the build reads, besides its source and its dependencies' outputs.

``inputs = ["mangos.config", "certs/organization.pem"]`` names files (a kernel configuration, the organization's
certificate, a helper script) found like patches (:mod:`farm.recipes.patches`): relative to the recipe's directory
or, when no such file is there, to the nearest parent directory holding it. A build sees each one read-only at
``$INPUTS/<path as written>`` (``/build/inputs``), so a path must stay below that directory: relative, no ``..``.

Each input is recorded in the recipe's content as the path as written plus the sha256 of its bytes, hence in the
build key and the signed provenance (``input/<path>``): changing an input's bytes rebuilds the recipe and its
dependents, and nothing else. A recipe without inputs records nothing, so its build key is what it always was.
Planning puts the bytes in the store by sha256 (as it does for patches), where a worker without the recipe's files
finds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from farm.errors import E, FarmError
from farm.recipes.patches import Patch, check_path, parse_pinned

EXAMPLE = 'e.g. inputs = ["mangos.config"] (read by the build as "$INPUTS/mangos.config")'
# Where a build finds its inputs, and the variable naming that directory in its environment.
SANDBOX_DIR = "/build/inputs"
ENV_VAR = "INPUTS"


@dataclass(frozen=True)
class Input(Patch):
    """One input file: its path as written in the recipe and the sha256 of its bytes."""

    FIELD: ClassVar[str] = "inputs"
    WHAT: ClassVar[str] = "input"
    CODE: ClassVar[str] = E.RECIPE_VALUE


def bad_input_path(file: str) -> str | None:
    """Why ``file`` cannot be an input path, or None: on top of a patch path's rules, it must stay below $INPUTS."""
    why = check_path(file)
    if why:
        return why
    if ".." in PurePosixPath(file).parts:
        return "contains '..' (inputs appear at $INPUTS/<path>, which must stay inside $INPUTS)"
    return None


def parse_inputs(value: Any, path: Path, errors: list[FarmError], *, pinned: bool = False) -> tuple[Input, ...]:
    """The ``inputs`` field: paths in a recipe file (read now for their digests), ``{file, sha256}`` in a recipe's
    content (``pinned``: as a worker receives it; the bytes are checked when they are staged)."""
    return parse_pinned(value, path, errors, Input, pinned=pinned, bad_path=bad_input_path, example=EXAMPLE)
