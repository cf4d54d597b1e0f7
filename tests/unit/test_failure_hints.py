"""A failed build's hint follows its classified cause: what to do about *that* failure, not a generic hint."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.build import execute, failure
from farm.build.failure import CAUSES, HINTS, classify, hint
from farm.errors import E, FarmError
from tests.unit.test_failure import COMPILE, DEJAGNU, UNSATISFIABLE

pytestmark = pytest.mark.unit

DEBIAN_FAILED = "dpkg-buildpackage failed (exit 2)"
RAISED = "read the log tail and the cause classified at its end ('!!! cause:')"


def test_every_cause_has_its_own_hint() -> None:
    assert set(HINTS) == set(CAUSES)
    assert len(set(HINTS.values())) == len(CAUSES)


def test_a_test_suite_failure_points_at_the_tests_and_nocheck() -> None:
    cause = classify(E.BUILD_FAILED, DEBIAN_FAILED, DEJAGNU)
    assert cause.kind == "test-suite"
    text = hint(cause, RAISED)
    assert (
        "tests failed in the sandbox" in text and "'nocheck'" in text and "only if the failure is the sandbox's" in text
    )
    assert "recipes import" not in text


def test_a_build_deps_failure_points_at_the_pins() -> None:
    cause = classify(E.BUILD_FAILED, DEBIAN_FAILED, UNSATISFIABLE)
    assert cause.kind == "build-deps"
    assert "archive pins" in hint(cause, RAISED) and "recipes import" in hint(cause, RAISED)


def test_a_build_failure_points_at_a_patch() -> None:
    cause = classify(E.BUILD_FAILED, DEBIAN_FAILED, COMPILE)
    assert cause.kind == "build"
    assert "failed to build" in hint(cause, RAISED) and "patch" in hint(cause, RAISED)
    assert "nocheck" not in hint(cause, RAISED) and "recipes import" not in hint(cause, RAISED)


def test_a_timeout_points_at_the_timeout() -> None:
    cause = classify(E.SANDBOX_LIMIT, "the debian build timed out and was killed", COMPILE)
    assert cause.kind == "timeout"
    assert "MANGOS_FARM_BUILD_TIMEOUT" in hint(cause, RAISED) and "MEMORY" not in hint(cause, RAISED)


def test_a_limit_points_at_the_limits() -> None:
    cause = classify(E.SANDBOX_LIMIT, "the debian build exceeded its memory limit", DEJAGNU)
    assert cause.kind == "limit"
    assert "MANGOS_FARM_BUILD_MEMORY_MB" in hint(cause, RAISED) and "TIMEOUT" not in hint(cause, RAISED)


def test_a_farm_failure_keeps_the_hint_its_error_names() -> None:
    cause = classify(E.SOURCE_COMMIT, "commit x has tree y, but z was planned", DEJAGNU)
    assert cause.kind == "farm"
    assert hint(cause, "re-plan: the source moved") == "re-plan: the source moved"
    assert hint(cause, "") == HINTS["farm"]


def test_the_failed_builds_error_carries_the_causes_hint_and_the_log_says_it(tmp_path: Path) -> None:
    logpath = tmp_path / "build.log"
    logpath.write_text(DEJAGNU)
    exc = FarmError(E.BUILD_FAILED, DEBIAN_FAILED, hint=RAISED, file=Path("findutils.toml"))
    error = execute._error(exc, logpath)
    assert error["code"] == E.BUILD_FAILED and error["cause"]["kind"] == "test-suite"
    assert error["hint"] == failure.HINTS["test-suite"]
    log = logpath.read_text()
    cause = error["cause"]["evidence"]
    assert log.endswith(f"!!! cause: test-suite: {cause}\n!!! hint: {HINTS['test-suite']}\n")
