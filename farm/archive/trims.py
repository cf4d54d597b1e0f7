"""A recipe's build trims (``build.options``, ``build.profiles`` and ``build.arch-all``) carried across a re-import.

``recipes import`` and ``recipes update`` rewrite a recipe from the archive when its source moves. The trims are the
farm's own choice (what a big package leaves out so that its build fits the machine), each with its reason in
comments beside it, so they are carried over as written: the text of those keys of the recipe's ``[build]`` table,
each with the comment lines just above it and every comment inside its array. Should that text not be found as such
(the keys written some other way, e.g. as dotted keys), the values are carried over without their comments: a trim
is never dropped silently.
"""

from __future__ import annotations

import json
import logging
import re
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

KEYS = ("options", "profiles", "arch-all")
_HEADER = re.compile(r"^\[\[?\s*([A-Za-z0-9_.\-\" ]+?)\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(r"^\s*(?:options|profiles|arch-all)\s*=")


def _parses(text: str) -> bool:
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return False
    return True


def _verbatim(lines: Sequence[str]) -> str:
    """The lines of the ``[build]`` table's options/profiles keys, with their comments, in file order."""
    section = ""
    pending: list[str] = []
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        header = _HEADER.match(line)
        if header:
            section, pending = header.group(1), []
            i += 1
            continue
        if line.strip().startswith("#"):
            pending.append(line)
            i += 1
            continue
        if section == "build" and _KEY.match(line):
            chunk, j = [line], i
            while not _parses("\n".join(chunk)) and j + 1 < len(lines):  # a multi-line array: up to its ']'
                j += 1
                chunk.append(lines[j])
            out += [*pending, *chunk]
            i = j
        pending = []
        i += 1
    return "\n".join(out) + "\n" if out else ""


def existing_trims(path: Path) -> str:
    """The ``build.options`` and ``build.profiles`` of the recipe at ``path`` as TOML text for its ``[build]`` table,
    comments included ('' when it has neither, or there is no readable recipe there)."""
    try:
        text = path.read_text()
        data = tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return ""
    build = data.get("build")
    wanted: dict[str, Any] = {k: build[k] for k in KEYS if k in build} if isinstance(build, dict) else {}
    if not wanted:
        return ""
    block = _verbatim(text.splitlines())
    if block and _parses(block) and tomllib.loads(block) == wanted:
        return block
    plain = "".join(f"{k} = {json.dumps(v, ensure_ascii=False)}\n" for k, v in wanted.items())
    if _parses(plain) and tomllib.loads(plain) == wanted:
        log.warning("%s: build.options/profiles carried over without their comments (not found as [build] keys)", path)
        return plain
    log.warning("%s: build.options/profiles are not lists of strings; not carried over", path)
    return ""
