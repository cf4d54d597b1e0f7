"""Reading a TOML file the user wrote, with failures the user can act on.

Every read-and-validate loader of the farm (recipes, environment definitions, the image lock, the peers file, ...)
starts here: an unreadable file, text that is not UTF-8 and a TOML syntax error each become a
:class:`~farm.errors.FarmError` of the caller's id (of the class its family asks for), naming the file. The
caller then validates the table it gets back.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from farm.errors import FarmError

if TYPE_CHECKING:
    import tomllib as toml
else:
    try:  # tomli is tomllib's upstream (the same parser), and its compiled wheel parses ~3x faster: a 1,000-recipe set
        import tomli as toml  # loads in 25 ms instead of 80
    except ModuleNotFoundError:  # pragma: no cover - an install without the wheel parses the same, more slowly
        import tomllib as toml

TOMLDecodeError = toml.TOMLDecodeError

SYNTAX_HINT = "fix the syntax at the position shown"


def parse_toml(text: str | bytes, path: Path | str, code: str, *, hint: str = SYNTAX_HINT) -> dict[str, Any]:
    """The table in ``text`` (the content of ``path``); bytes must be UTF-8. Failures carry ``code`` and ``hint``."""
    try:
        source = text.decode("utf-8") if isinstance(text, bytes) else text
    except UnicodeDecodeError:
        raise FarmError.of(code, "not UTF-8 text", file=path, hint="save the file as UTF-8") from None
    try:
        return toml.loads(source)
    except toml.TOMLDecodeError as exc:
        raise FarmError.of(code, f"invalid TOML: {exc}", file=path, hint=hint) from None


def load_toml(
    path: Path,
    code: str,
    *,
    what: str = "",
    hint: str = SYNTAX_HINT,
    read_code: str | None = None,
    read_hint: str = "check the path and permissions",
) -> dict[str, Any]:
    """The table in the file ``path``.

    An unreadable file is ``read_code`` (default ``code``): "cannot read the WHAT: <reason>" with ``read_hint``;
    bad text is ``code`` with ``hint`` (see :func:`parse_toml`).
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        message = f"cannot read the {what}: {exc.strerror}" if what else f"cannot read: {exc.strerror}"
        raise FarmError.of(read_code or code, message, file=path, hint=read_hint) from None
    return parse_toml(raw, path, code, hint=hint)
