"""``build.binnmu``: a debian recipe built as the archive's binNMU (binaries versioned ``V+bN``).

``binnmu = N`` (N >= 1) asks the build for binNMU N of the source (:mod:`farm.build.binnmu` writes its changelog
entry); ``binnmu-message`` is that entry's reason (default :data:`DEFAULT_MESSAGE`). Both are part of the recipe's
content, and so of its build key, only when ``binnmu`` is given: a recipe without it keeps the key it always had.
``recipes import`` writes them when the archive's binaries of the source are a binNMU.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from farm.errors import E, FarmError, RecipeError

DEFAULT_MESSAGE = "Rebuild as the archive's binNMU."
HELP = "a debian build's binNMU number: its binaries are versioned VERSION+bN, e.g. binnmu = 1"
MESSAGE_HELP = 'the binNMU changelog entry\'s reason, one line, e.g. binnmu-message = "Rebuild for libfoo2"'


def parse_binnmu(build: Mapping[str, Any], kind: str, path: Path, errors: list[FarmError]) -> tuple[int, str]:
    """(N, message) of a recipe's ``[build]`` table; (0, '') without ``binnmu``. Problems go to ``errors``."""
    number, message = build.get("binnmu"), build.get("binnmu-message")
    if number is None:
        if message is not None:
            errors.append(
                RecipeError(
                    E.RECIPE_VALUE,
                    "a binNMU message without build.binnmu",
                    hint=f"add {HELP.split('e.g. ', 1)[1]}, or remove build.binnmu-message",
                    file=path,
                    field="build.binnmu-message",
                )
            )
        return 0, ""
    if kind != "debian":
        errors.append(
            RecipeError(
                E.RECIPE_VALUE,
                "only a debian build has one",
                hint='add kind = "debian"',
                file=path,
                field="build.binnmu",
            )
        )
        return 0, ""
    ok = isinstance(number, int) and (message is None or isinstance(message, str))  # else a type error (schema)
    if isinstance(number, bool) or (isinstance(number, int) and not 1 <= number <= 99):
        errors.append(
            RecipeError(
                E.RECIPE_VALUE,
                f"{number!r} is not a binNMU number (an integer from 1 to 99)",
                hint=HELP,
                file=path,
                field="build.binnmu",
            )
        )
        ok = False
    if isinstance(message, str) and (not message.strip() or "\n" in message):
        errors.append(
            RecipeError(
                E.RECIPE_VALUE,
                "the binNMU message must be one non-empty line",
                hint=MESSAGE_HELP,
                file=path,
                field="build.binnmu-message",
            )
        )
        ok = False
    if not ok or not isinstance(number, int):
        return 0, ""
    return number, message.strip() if isinstance(message, str) else DEFAULT_MESSAGE
