"""A failed build's cause, classified from its error and the end of its log (excerpts of real build logs)."""

from __future__ import annotations

import pytest

from farm.build.failure import CAUSES, WINDOW, Cause, classify, phase_of
from farm.errors import E

pytestmark = pytest.mark.unit

UNSATISFIABLE = """\
==> phase build-deps 1796342255.835170343
Reading package lists...
Note, using directory './' to get the build dependencies
Reading package lists...
Building dependency tree...
Reading state information...
Some packages could not be installed. This may mean that you have
requested an impossible situation or if you are using the unstable
distribution that some required packages have not yet been created
or been moved out of Incoming.
The following information may help to resolve the situation:

The following packages have unmet dependencies:
 builddeps:./ : Depends: mangos-no-such-package (>= 1) but it is not installable
E: Unable to correct problems, you have held broken packages.
"""

DEJAGNU = """\
==> phase dpkg-buildpackage 1796342255.892523260
make[5]: Entering directory '/build/src/find/testsuite'
Test run by sbuild on Thu Dec  3 23:59:01 2026
Native configuration is x86_64-pc-linux-gnu

\t\t=== find tests ===

\t\t=== find Summary ===

# of expected passes\t\t280
# of unexpected failures\t1
make[5]: *** [Makefile:2110: check-DEJAGNU] Error 1
make[5]: Leaving directory '/build/src/find/testsuite'
make[4]: *** [Makefile:2295: check-am] Error 2
make[1]: *** [Makefile:2049: check-recursive] Error 1
make[1]: Leaving directory '/build/src'
dh_auto_test: error: make -j2 check VERBOSE=1 returned exit code 2
make: *** [debian/rules:40: binary] Error 25
dpkg-buildpackage: error: debian/rules binary subprocess returned exit status 2
"""

PYBUILD = """\
==> phase dpkg-buildpackage 1796342255.892523260
=========================== short test summary info ============================
FAILED tests/test_frob.py::test_frob - AssertionError: assert 1 == 2
========================= 1 failed, 120 passed in 3.21s =========================
E: pybuild pybuild:389: test: plugin pyproject failed with: exit code=1: cd /build/src/.pybuild/cpython3_3.11/build
dh_auto_test: error: pybuild --test -i python{version} -p 3.11 returned exit code 13
make: *** [debian/rules:6: binary] Error 25
dpkg-buildpackage: error: debian/rules binary subprocess returned exit status 2
"""

PROVE = """\
t/op/frob.t .. Failed 1/12 subtests
Test Summary Report
-------------------
Files=12, Tests=345,  2 wallclock secs ( 0.10 usr  0.01 sys +  1.50 cusr  0.20 csys =  1.81 CPU)
Result: FAIL
Failed 1/12 test programs. 1/345 subtests failed.
make[1]: *** [Makefile:900: test_dynamic] Error 255
"""

COMPILE = """\
==> phase dpkg-buildpackage 1796342255.892523260
gcc -DHAVE_CONFIG_H -I. -g -O2 -c -o frob.o frob.c
frob.c:12:5: error: 'frobnicator' undeclared (first use in this function)
make[2]: *** [Makefile:500: frob.o] Error 1
dh_auto_build: error: make -j2 returned exit code 2
make: *** [debian/rules:8: binary] Error 25
dpkg-buildpackage: error: debian/rules binary subprocess returned exit status 2
"""

WHOAMI = """\
==> phase dpkg-buildpackage 1796342255.892523260
 debian/rules binary
whoami
whoami: cannot find name for user ID 1000
make: *** [debian/rules:4: build] Error 1
dpkg-buildpackage: error: debian/rules binary subprocess returned exit status 2
"""


def test_unsatisfiable_build_depends() -> None:
    cause = classify(E.BUILD_FAILED, "dpkg-buildpackage failed (exit 100)", UNSATISFIABLE.encode())
    assert cause == Cause(
        "build-deps",
        "builddeps:./ : Depends: mangos-no-such-package (>= 1) but it is not installable",
        "build-deps",
    )


def test_unsatisfiable_build_depends_without_the_phase_marker_in_the_window() -> None:
    text = UNSATISFIABLE.split("\n", 1)[1]
    assert phase_of(text) == ""
    assert classify(E.BUILD_FAILED, "failed", text).kind == "build-deps"


@pytest.mark.parametrize(
    ("log", "evidence"),
    [
        (DEJAGNU, "dh_auto_test: error: make -j2 check VERBOSE=1 returned exit code 2"),
        (PYBUILD, "dh_auto_test: error: pybuild --test -i python{version} -p 3.11 returned exit code 13"),
        (PROVE, "Failed 1/12 test programs. 1/345 subtests failed."),
    ],
    ids=["dejagnu", "pybuild", "prove"],
)
def test_test_suite_failures(log: str, evidence: str) -> None:
    cause = classify(E.BUILD_FAILED, "dpkg-buildpackage failed (exit 2)", log)
    assert (cause.kind, cause.evidence) == ("test-suite", evidence)


def test_a_compile_error_is_a_build_failure_with_the_first_error_line() -> None:
    cause = classify(E.BUILD_FAILED, "dpkg-buildpackage failed (exit 2)", COMPILE)
    assert cause == Cause(
        "build", "frob.c:12:5: error: 'frobnicator' undeclared (first use in this function)", "dpkg-buildpackage"
    )


def test_the_nameless_build_user_was_a_build_failure() -> None:
    cause = classify(E.BUILD_FAILED, "dpkg-buildpackage failed (exit 2)", WHOAMI)
    assert cause.kind == "build"
    assert cause.evidence == "dpkg-buildpackage: error: debian/rules binary subprocess returned exit status 2"


def test_test_lines_during_build_deps_are_not_a_test_suite_failure() -> None:
    log = UNSATISFIABLE + "FAIL: not a test, apt printed it\n"
    assert classify(E.BUILD_FAILED, "failed", log).kind == "build-deps"


def test_limits_timeouts_and_the_farms_own_failures() -> None:
    timeout = classify(E.SANDBOX_LIMIT, "the debian build timed out and was killed", COMPILE)
    assert (timeout.kind, timeout.evidence) == ("timeout", "the debian build timed out and was killed")
    step = classify(E.SANDBOX_LIMIT, "step 1 timed out after 5s and was killed with all its processes: make", "")
    assert step.kind == "timeout"
    assert classify(E.SANDBOX_LIMIT, "the debian build exceeded its memory limit", DEJAGNU).kind == "limit"
    farm = classify(E.SOURCE_COMMIT, "commit x has tree y, but z was planned", DEJAGNU)
    assert farm.kind == "farm" and farm.evidence.startswith(E.SOURCE_COMMIT)


def test_only_the_end_of_a_long_log_is_read() -> None:
    log = DEJAGNU + "x" * WINDOW + "\n" + COMPILE.split("\n", 1)[1]
    assert classify(E.BUILD_FAILED, "failed", log).kind == "build"


def test_every_cause_is_named_and_serialises() -> None:
    assert set(CAUSES) == {"timeout", "limit", "build-deps", "test-suite", "build", "farm"}
    assert Cause("build", "x").to_json() == {"kind": "build", "evidence": "x"}
    assert Cause("build", "x", "dpkg-buildpackage").to_json()["phase"] == "dpkg-buildpackage"
