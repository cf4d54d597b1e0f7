"""A recipe's patches: where the files are, their digests, and applying them to a source tree.

``patches = ["patches/hello/0001-fix.patch", ...]`` lists unified diffs (``-p1``, as ``git format-patch`` and
Debian's quilt write them) applied in order on top of the pinned commit, before the build. A path is relative to
the recipe's directory; when no such file is there, to the nearest parent directory that has one, so a recipe in
``recipes/debian/`` names the repository's top-level ``patches/`` as ``patches/...``. It must be relative and
must name a file.

Each patch is recorded in the recipe's content (and so in its build key and provenance) as the path as written
plus the sha256 of its bytes; a recipe without patches records nothing, so its build key is what it always was.
Patches are applied with ``git apply`` (all of a patch or none of it, no fuzz) outside any repository, and every
mtime in the tree is then set back to the source's time, so a patched tree looks the same however and whenever it
was patched (a build with a shifted clock included).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, TypeVar

from farm.errors import E, FarmError, RecipeError
from farm.run import require_tool, run

SHA256_RE = re.compile(r"[0-9a-f]{64}")
EXAMPLE = 'e.g. patches = ["patches/hello/0001-fix-build.patch"]'
LOCATION_HINT = (
    "write the path relative to the recipe's directory or to a parent of it (such as the repository's top level), "
    + EXAMPLE
)
# git apply outside any repository, with no user or system configuration changing how it reads a patch.
GIT_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "LC_ALL": "C"}


@dataclass(frozen=True)
class Patch:
    file: str  # as written in the recipe
    sha256: str

    # What the file is to the recipe: its field, the word for it in messages, the error id of its problems.
    FIELD: ClassVar[str] = "patches"
    WHAT: ClassVar[str] = "patch"
    CODE: ClassVar[str] = E.RECIPE_PATCH

    @property
    def name(self) -> str:
        return PurePosixPath(self.file).name

    def to_json(self) -> dict[str, str]:
        return {"file": self.file, "sha256": self.sha256}


def locate(recipe_path: Path, file: str) -> Path | None:
    """The patch ``file`` of the recipe at ``recipe_path``: in its directory, else the nearest parent holding it."""
    start = recipe_path.parent.absolute()
    for directory in (start, *start.parents):
        candidate = directory / file
        if candidate.is_file():
            return candidate
    return None


def _problem(path: Path, field: str, message: str, hint: str, code: str = E.RECIPE_PATCH) -> FarmError:
    return RecipeError(code, message, hint=hint, file=path, field=field)


def check_path(file: str) -> str | None:
    if file.startswith("/"):
        return "is absolute"
    if "\\" in file or "\0" in file:
        return "contains a backslash or NUL"
    if file.endswith("/") or PurePosixPath(file).name in ("", ".", ".."):
        return "names a directory"
    return None


def parse_patches(value: Any, path: Path, errors: list[FarmError], *, pinned: bool = False) -> tuple[Patch, ...]:
    """The ``patches`` field. In a recipe file each entry is a path, read now for its digest; in a recipe's content
    (``pinned``, as a worker receives it) each is ``{file, sha256}``, whose bytes are checked when they are used."""
    return parse_pinned(value, path, errors, Patch, pinned=pinned)


P = TypeVar("P", bound=Patch)


def parse_pinned(
    value: Any,
    path: Path,
    errors: list[FarmError],
    kind: type[P],
    *,
    pinned: bool = False,
    bad_path: Callable[[str], str | None] = check_path,
    example: str = EXAMPLE,
) -> tuple[P, ...]:
    """A list of files pinned by sha256 (``kind``: :class:`Patch`, or another class of the same shape naming its
    field, word and error id), parsed as :func:`parse_patches` describes."""
    if not isinstance(value, list):
        return ()
    what, code = kind.WHAT, kind.CODE
    hint = LOCATION_HINT.replace(EXAMPLE, example)
    found: list[P] = []
    for i, entry in enumerate(value):
        field = f"{kind.FIELD}[{i}]"
        if pinned and isinstance(entry, dict):
            file, digest = entry.get("file"), entry.get("sha256")
            if set(entry) != {"file", "sha256"} or not isinstance(file, str) or not isinstance(digest, str):
                errors.append(
                    _problem(path, field, f"a pinned {what} is {{file, sha256}}", "rebuild the request", code)
                )
                continue
            if not SHA256_RE.fullmatch(digest) or bad_path(file):
                errors.append(_problem(path, field, f"'{file}' is not a pinned {what}", "rebuild the request", code))
                continue
            found.append(kind(file, digest))
            continue
        if not isinstance(entry, str) or not entry:
            errors.append(
                RecipeError(E.RECIPE_TYPE, "every entry must be a non-empty path", hint=example, file=path, field=field)
            )
            continue
        why = bad_path(entry)
        if why:
            errors.append(_problem(path, field, f"{what} path '{entry}' {why}", hint, code))
            continue
        where = locate(path, entry)
        if where is None:
            errors.append(
                _problem(
                    path,
                    field,
                    f"{what} file '{entry}' does not exist (looked in {path.parent} and its parents)",
                    hint,
                    code,
                )
            )
            continue
        try:
            data = where.read_bytes()
        except OSError as exc:
            errors.append(
                _problem(path, field, f"{what} file {where} is unreadable: {exc.strerror}", "fix its mode", code)
            )
            continue
        found.append(kind(entry, hashlib.sha256(data).hexdigest()))
    if len({p.file for p in found}) != len(found):
        again = f"list each {what} once" + (", in the order to apply" if kind.FIELD == "patches" else "")
        errors.append(_problem(path, kind.FIELD, f"lists a {what} twice", again, code))
    return tuple(found)


def read_local(patch: Patch, recipe_path: Path) -> bytes | None:
    """The file's bytes from next to the recipe, or None when it is not there; a file whose bytes are not the
    recorded digest is refused (it changed after the build was planned). Any :class:`Patch`-shaped pinned file."""
    where = locate(recipe_path, patch.file)
    if where is None:
        return None
    data = where.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != patch.sha256:
        raise _problem(
            recipe_path,
            patch.FIELD,
            f"{patch.WHAT} file {where} has sha256 {digest}, but {patch.sha256} was planned",
            f"the {patch.WHAT} changed after planning: plan (rebuild) again",
            patch.CODE,
        )
    return data


def _hunks(data: bytes) -> dict[tuple[str, int], tuple[int, str]]:
    """(file, old start line) -> (hunk number within the file, hunk header), for the files a patch touches."""
    hunks: dict[tuple[str, int], tuple[int, str]] = {}
    old = new = ""
    count = 0
    for raw in data.decode("utf-8", "replace").splitlines():
        if raw.startswith("--- "):
            old, count = raw[4:].split("\t")[0].strip(), 0
        elif raw.startswith("+++ "):
            new = raw[4:].split("\t")[0].strip()
        elif raw.startswith("@@ ") and (m := re.match(r"@@ -(\d+)(?:,\d+)? \+\d+(?:,\d+)? @@", raw)):
            count += 1
            for name in {_strip(old), _strip(new)} - {""}:
                hunks[(name, int(m.group(1)))] = (count, m.group(0))
    return hunks


def _strip(name: str) -> str:
    """A diff header's file name as ``git apply -p1`` reads it (without its first path component)."""
    if name == "/dev/null":
        return ""
    return name.split("/", 1)[1] if "/" in name else name


def why_not(patch: Patch, data: bytes, stderr: str) -> str:
    """What ``git apply`` refused, in words naming the failing hunk when it says which one."""
    hunks = _hunks(data)
    for line in stderr.splitlines():
        m = re.match(r"error: patch failed: (.+):(\d+)$", line.strip())
        if m:
            number, header = hunks.get((m.group(1), int(m.group(2))), (0, ""))
            hunk = f"hunk #{number} ({header})" if number else f"the hunk at line {m.group(2)}"
            return f"{hunk} of {m.group(1)} does not apply"
    errors = [line.strip()[len("error: ") :] for line in stderr.splitlines() if line.startswith("error: ")]
    return "; ".join(errors) or stderr.strip() or "git apply refused it"


def apply(patches: Sequence[tuple[Patch, bytes]], tree: Path, *, mtime: int, recipe_path: Path) -> None:
    """Apply ``patches`` (with their bytes) in order to ``tree``, then set every mtime in it to ``mtime``.

    Raises E-RECIPE-PATCH naming the patch, its place in the recipe and the hunk that failed."""
    if not patches:
        return
    require_tool("git")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_CEILING_DIRECTORIES": str(tree.parent)} | GIT_ENV
    with tempfile.TemporaryDirectory(prefix="mangos-patch-") as tmp:
        for i, (patch, data) in enumerate(patches):
            diff = Path(tmp) / f"{i:04d}.patch"
            diff.write_bytes(data)
            argv = ["git", "apply", "-p1", "--whitespace=nowarn", str(diff)]
            result = run(argv, cwd=tree, env=env, check=False)
            if result.returncode != 0:
                raise _problem(
                    recipe_path,
                    f"patches[{i}]",
                    f"patch {patch.file} does not apply to the source: "
                    f"{why_not(patch, data, result.stderr.decode(errors='replace'))}",
                    "refresh the patch against the pinned commit (git format-patch, or quilt refresh), "
                    "or drop it if upstream took it",
                )
    for p in [tree, *tree.rglob("*")]:
        os.utime(p, (mtime, mtime), follow_symlinks=False)
