"""Output paths are checked by splitting the text, not by building path objects: the verdicts and the artifact
names are those ``PurePosixPath`` gives, for every path over a small alphabet of tricky components."""

from __future__ import annotations

import itertools
from pathlib import PurePosixPath

import pytest

from farm.recipes.schema import _parts, check_output_path

pytestmark = pytest.mark.unit

PIECES = ["a", ".", "..", "/", "//", "\\", "\0", "x.y"]


def _by_path_object(value: str) -> str | None:
    if value.startswith("/"):
        return "is absolute"
    p = PurePosixPath(value)
    if ".." in p.parts:
        return "contains '..'"
    if "\\" in value or "\0" in value:
        return "contains a backslash or NUL"
    if str(p) in ("", "."):
        return "names the output directory itself"
    return None


def test_verdicts_and_names_match_pure_posix_path() -> None:
    for k in range(5):
        for combo in itertools.product(PIECES, repeat=k):
            value = "".join(combo)
            assert check_output_path(value) == _by_path_object(value), value
            assert (_parts(value) or [""])[-1] == PurePosixPath(value).name, value
            if not value.startswith("/"):
                assert _parts(value) == list(PurePosixPath(value).parts), value
