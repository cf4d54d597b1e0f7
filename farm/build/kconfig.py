"""Kernel configuration files: read a Kconfig fragment and a resolved ``.config``, and say which wanted options did
not stick.

A fragment (``recipes/kernel/mangos.config``) is what ``scripts/kconfig/merge_config.sh`` merges: ``CONFIG_X=V``
lines and ``# CONFIG_X is not set`` lines, grouped in paragraphs (blank-line separated) that each open with a comment
giving the reason for their options. After ``make olddefconfig`` an option whose dependencies are not met is dropped
or changed without an error; :func:`mismatches` finds every such option, so the build can fail instead.

This module imports only the standard library, on purpose: the kernel recipe passes this very file into its build
sandbox as an input and runs it there (``python3 kconfig.py check FRAGMENT .config``), in the pinned build
environment where the farm itself is not installed. Everything but :func:`main` is pure.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

SET_RE = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
UNSET_RE = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")
# A value as Kconfig writes it: y/m/n, a (hex) number, or a double-quoted string.
VALUE_RE = re.compile(r'^(?:[ymn]|-?[0-9]+|0x[0-9a-fA-F]+|"(?:[^"\\]|\\.)*")$')
NO = "n"


@dataclass(frozen=True)
class Entry:
    """One option line of a fragment: its name, its value (``n`` for "is not set"), its line number and the
    comment that opens its paragraph (the reason)."""

    name: str
    value: str
    line: int
    reason: str


@dataclass(frozen=True)
class Mismatch:
    name: str
    wanted: str
    got: str  # "n" when the option is absent from the resolved configuration

    def describe(self) -> str:
        if self.got == NO and self.wanted != NO:
            return f"{self.name}={self.wanted} did not stick (not set: a dependency is missing or it was deselected)"
        return f"{self.name}={self.wanted} did not stick (the resolved configuration has {self.name}={self.got})"


def parse_line(line: str) -> tuple[str, str] | None:
    """``(name, value)`` of an option line, ``value`` being ``n`` for ``# CONFIG_X is not set``; None otherwise."""
    text = line.strip()
    unset = UNSET_RE.match(text)
    if unset:
        return unset.group(1), NO
    set_ = SET_RE.match(text)
    if set_:
        return set_.group(1), set_.group(2)
    return None


def parse_config(text: str) -> dict[str, str]:
    """A resolved ``.config`` as {name: value}; options written as "is not set" map to ``n``."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        option = parse_line(line)
        if option is not None:
            found[option[0]] = option[1]
    return found


def parse_fragment(text: str) -> tuple[list[Entry], list[str]]:
    """The entries of a fragment, and every problem with it (one string each, with its line number): a paragraph
    whose options have no opening comment, a malformed value, an option given twice, a line that is neither a
    comment nor an option."""
    entries: list[Entry] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    reason: str | None = None  # the current paragraph's comment; None before one is seen in it
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            reason = None
            continue
        option = parse_line(line)
        if option is None:
            if line.startswith("#"):
                comment = line.lstrip("#").strip()
                reason = comment if reason is None else f"{reason} {comment}".strip()
            else:
                problems.append(f"line {number}: neither a comment nor an option: {line}")
            continue
        name, value = option
        if not reason:
            problems.append(f"line {number}: {name} has no reason (open its paragraph with a comment saying why)")
        if not VALUE_RE.match(value):
            problems.append(f"line {number}: {name} has a malformed value {value!r}")
        if value == NO and not line.startswith("#"):
            problems.append(f"line {number}: write '# {name} is not set' rather than {name}=n")
        if name in seen:
            problems.append(f"line {number}: {name} is already set on line {seen[name]}")
        seen[name] = number
        entries.append(Entry(name, value, number, reason or ""))
    return entries, problems


def mismatches(wanted: Sequence[Entry] | Mapping[str, str], config: Mapping[str, str]) -> list[Mismatch]:
    """Every wanted option the resolved ``config`` does not have as asked, in the order given. An option wanted off
    (``n``) holds when it is absent, since Kconfig omits options whose dependencies are unmet."""
    pairs = wanted.items() if isinstance(wanted, Mapping) else ((e.name, e.value) for e in wanted)
    found = []
    for name, value in pairs:
        got = config.get(name, NO)
        if got != value:
            found.append(Mismatch(name, value, got))
    return found


def report(fragment_name: str, problems: Sequence[str], missed: Sequence[Mismatch]) -> str:
    """What ``check`` prints: every problem of the fragment, then every option that did not stick."""
    lines = [f"{fragment_name}: {p}" for p in problems]
    lines += [f"{fragment_name}: {m.describe()}" for m in missed]
    if missed:
        lines.append(
            f"{len(missed)} option(s) of {fragment_name} did not stick: enable what they depend on in the fragment "
            "(see the option's 'depends on' in its Kconfig file, or 'make menuconfig' and search for it)"
        )
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    """``check FRAGMENT CONFIG``: exit 0 when the fragment is well-formed and every option holds in CONFIG, else
    write the report to stderr and exit 1 (2 for a usage error)."""
    if len(argv) != 3 or argv[0] != "check":
        sys.stderr.write("usage: kconfig.py check FRAGMENT CONFIG\n")
        return 2
    with open(argv[1], encoding="utf-8") as fh:
        entries, problems = parse_fragment(fh.read())
    with open(argv[2], encoding="utf-8") as fh:
        config = parse_config(fh.read())
    missed = mismatches(entries, config)
    if problems or missed:
        sys.stderr.write(report(argv[1], problems, missed) + "\n")
        return 1
    sys.stderr.write(f"{argv[1]}: all {len(entries)} options hold in {argv[2]}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
