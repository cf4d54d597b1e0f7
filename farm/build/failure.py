"""Why a build failed, told from its error and its log: one classified cause with the log line that shows it.

Causes (:data:`CAUSES`), decided in this order:

- ``timeout``: the build ran out of time and was killed (E-SANDBOX-LIMIT, "timed out");
- ``limit``: it ran into another limit of the build (memory, processes, disk, output size: E-SANDBOX-LIMIT);
- ``build-deps``: its build-dependencies cannot be installed (apt's resolver, or dpkg-checkbuilddeps): the
  recipe's pins or its build profiles do not satisfy Build-Depends;
- ``test-suite``: the package's own tests failed (dh_auto_test, ``make check``/``test``, dejagnu, automake's
  test driver, pytest/unittest, perl's prove), the build itself having got that far;
- ``build``: any other failure of the build (a compile error, a missing output);
- ``farm``: not the package's fault (the source, the store, the worker): E-BUILD-FAILED and E-SANDBOX-LIMIT are
  the package's, every other id is the farm's.

Pure: the caller passes the error id, its message and the end of the log (the last :data:`WINDOW` bytes are
enough: a build tool prints its verdict last). A debian build marks its phases (``==> phase build-deps``,
``==> phase dpkg-buildpackage``); the last marker seen says which phase failed when the log window holds one.

Each cause has its own hint (:data:`HINTS`, :func:`hint`): what the user does about *that* failure, in place of
the generic hint the failing step raised.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from farm.errors import E

CAUSES = ("timeout", "limit", "build-deps", "test-suite", "build", "farm")
WINDOW = 64 * 1024

_PHASE = re.compile(r"^==> phase (\S+)", re.MULTILINE)
_DEPS = re.compile(
    r"^(?:E: Unable to correct problems, you have held broken packages\.|"
    r"E: Unable to satisfy dependencies.*|"
    r"E: Unable to locate package .*|"
    r"E: Package '[^']+' has no installation candidate|"
    r"E: Build-Depends dependency for .*|"
    r"E: Unmet dependencies.*|"
    r".*\bbut it is not (?:installable|going to be installed).*|"
    r"dpkg-checkbuilddeps: error: Unmet build dependencies.*)$",
    re.MULTILINE,
)
_TESTS = re.compile(
    r"^(?:dh_auto_test: error: .*|"
    r"make(?:\[\d+\])?: \*\*\* \[[^\]]*:\d+: (?:check|test|tests|check-am|check-recursive|check-TESTS|"
    r"test-suite\.log|override_dh_auto_test|runtest)\] Error \d+.*|"
    r"# of unexpected failures\s+\d+|"
    r"# FAIL: +[1-9]\d*|"
    r"FAIL: .*|"
    r"FAILED \((?:failures|errors)=\d+.*\)|"
    r"=+ .*\b\d+ failed\b.* =+|"
    r"Result: FAIL|"
    r"Failed \d+/\d+ test (?:programs|scripts).*|"
    r"ERROR: .*test.*failed.*)$",
    re.MULTILINE,
)
_TIMED_OUT = re.compile(r"timed out", re.IGNORECASE)

HINTS = {
    "timeout": "the build ran out of time and was killed; raise MANGOS_FARM_BUILD_TIMEOUT on the workers if the "
    "package legitimately needs longer, or trim the build (build.options, build.profiles) so that it fits",
    "limit": "the build hit a sandbox limit (see the log line); raise MANGOS_FARM_BUILD_MEMORY_MB / "
    "MANGOS_FARM_BUILD_PROCESSES on the workers if it is legitimate",
    "build-deps": "the build-dependencies cannot be installed (see the log line): the recipe's archive pins or "
    "build profiles do not satisfy Build-Depends; re-run 'mangos-farm recipes import' to re-pin them",
    "test-suite": "the package's tests failed in the sandbox (see the log line); add 'nocheck' to [build] options "
    "(with its reason) only if the failure is the sandbox's, not the package's",
    "build": "the package failed to build (see the log line: a compile error or a missing output); fix it with a "
    "patch in the recipe's patches, or reproduce with 'mangos-farm rebuild --force'",
    "farm": "not the package's fault: the farm could not build it (see the error); fix the worker, store or source "
    "it names and build again",
}


@dataclass(frozen=True)
class Cause:
    """A classified failure: one of :data:`CAUSES`, the log (or error) line that shows it, and the phase."""

    kind: str
    evidence: str = ""
    phase: str = ""

    def to_json(self) -> dict[str, str]:
        out = {"kind": self.kind, "evidence": self.evidence}
        if self.phase:
            out["phase"] = self.phase
        return out


def hint(cause: Cause, raised: str | None = None) -> str:
    """What to do about a failure of this cause (:data:`HINTS`); the log line it names is the cause's evidence,
    written at the end of the log (``!!! cause: KIND: LINE``). A ``farm`` failure keeps the hint its error was
    ``raised`` with, which names the farm's part to fix."""
    if cause.kind == "farm" and raised:
        return raised
    return HINTS[cause.kind]


def _last(pattern: re.Pattern[str], text: str) -> str:
    found = [m.group(0) for m in pattern.finditer(text)]
    return found[-1].strip()[:300] if found else ""


def _first(pattern: re.Pattern[str], text: str) -> str:
    found = pattern.search(text)
    return found.group(0).strip()[:300] if found else ""


def phase_of(log: str) -> str:
    """The last phase a debian build's log marks (``''`` when the window holds no marker)."""
    phases = _PHASE.findall(log)
    return str(phases[-1]) if phases else ""


def classify(code: str, message: str, log: bytes | str) -> Cause:
    """The cause of a failure with error id ``code`` and ``message``, whose log ends with ``log``."""
    text = log.decode("utf-8", "replace") if isinstance(log, bytes) else log
    text = text[-WINDOW:]
    phase = phase_of(text)
    if code == E.SANDBOX_LIMIT:
        return Cause("timeout" if _TIMED_OUT.search(message) else "limit", message[:300], phase)
    if code != E.BUILD_FAILED:
        return Cause("farm", f"{code}: {message}"[:300], phase)
    if phase == "build-deps" or (not phase and _DEPS.search(text)):
        return Cause("build-deps", _first(_DEPS, text) or message[:300], phase)
    tests = _last(_TESTS, text)
    if tests:
        return Cause("test-suite", tests, phase)
    return Cause("build", _build_evidence(text) or message[:300], phase)


def _build_evidence(text: str) -> str:
    """The most telling line of a failed build: a compiler's or a tool's error, else dpkg-buildpackage's verdict."""
    for pattern in (r"^.*\berror: .*$", r"^dpkg-buildpackage: error: .*$", r"^make(?:\[\d+\])?: \*\*\* .*$"):
        found = re.findall(pattern, text, re.MULTILINE)
        if found:
            return str(found[0] if pattern.startswith(r"^.*\berror") else found[-1]).strip()[:300]
    return ""
