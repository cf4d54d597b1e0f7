"""Pure parts of recheck: the diffoscope command line, cause classification, variation wrapping, rates."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.build import sandbox
from farm.build.variation import Variation
from farm.crossval.diffreport import classify, diffoscope_argv
from farm.crossval.results import RecheckResult, rates

pytestmark = pytest.mark.unit

V = Variation()


def _report(*body: str) -> str:
    return "--- /tmp/a/x\n+++ /tmp/b/x\n" + "\n".join(body) + "\n"


def test_diffoscope_argv_bounds_both_reports() -> None:
    argv = diffoscope_argv(Path("a"), Path("b"), Path("t.txt"), Path("h.html"), 1000)
    assert argv[0] == "diffoscope" and argv[-2:] == ["a", "b"]
    assert argv[argv.index("--text") + 1] == "t.txt" and argv[argv.index("--html") + 1] == "h.html"
    assert argv[argv.index("--max-report-size") + 1] == "1000"
    assert argv[argv.index("--max-text-report-size") + 1] == "1000"


@pytest.mark.parametrize(
    ("body", "cause"),
    [
        (("├── built-on", "│ @@ -1 +1 @@", "│ -2026-11-27", "│ +2028-01-01"), "timestamps"),
        (("│ -Built on Nov 27 2026 04:18:41", "│ +Built on Jan 01 2028 18:17:32"), "timestamps"),
        (
            ("│ -Build-Date: Fri, 27 Nov 2026 03:30:24 +0000", "│ +Build-Date: Sat, 01 Jan 2028 18:22:41 +1400"),
            "timestamps",
        ),
        (("│ │ -\tmov    $0x7ea,%edx", "│ │ +\tmov    $0x7ec,%edx"), "timestamps"),  # hello 2.10: the year, in hex
        (("├── readelf --wide --notes {}", "│ -    Build ID: 0123abcd", "│ +    Build ID: 89ef4567"), "build-id"),
        (("│ -compiled in /build/src", "│ +compiled in /w/recheck/a/much/deeper/build/path/x"), "paths"),
        (("│ -compiled in /build/src/x.c", f"│ +compiled in {V.build_dir}/x.c"), "paths"),
        (("├── file list", "│ -a", "│ -b", "│ +b", "│ +a"), "file order"),
        (("│ -zone: UTC", f"│ +zone: {V.tz}"), "time zone"),
        (("│ -built Wed Nov 27 04:18:41 2026", "│ +built Mi 27 Nov 2026 04:18:41 UTC"), "locale"),
        (("│ -Donnerstag, 3. Dezember", "│ +Perşembe, 3 Aralık"), "locale"),  # noqa: RUF001
        (("│ -LANG=C.UTF-8", f"│ +LANG={V.locale}"), "locale"),
        (
            (
                "│ --rw-r--r-- 0 0 0 12 2024-01-01 00:00:00.000000 x",
                "│ +-rw-rw-r-- 0 0 0 12 2024-01-01 00:00:00.000000 x",
            ),
            "umask",
        ),
        (("│ -built by ", f"│ +built by {V.user}"), "user"),
        (("│ -host mangos-build", f"│ +host {V.hostname}"), "hostname"),
        (("│ -domain (none)", f"│ +domain {V.domain}"), "hostname"),
        (("│ -kernel 6.1.0-13-amd64", "│ +kernel 2.6.78-13-amd64"), "kernel"),
        (("│ -hello", "│ +goodbye"), "other"),
    ],
)
def test_classify(body: tuple[str, ...], cause: str) -> None:
    assert cause in classify(_report(*body), V)


def test_only_digits_that_are_dates_count_as_timestamps() -> None:
    assert classify(_report("│ -count 1", "│ +count 2"), V) == ["other"]
    sizes = (
        "│ --rw-r--r-- 0 0 0 1868 2022-12-26 15:30:00.000000 x",
        "│ +-rw-r--r-- 0 0 0 1872 2022-12-26 15:30:00.000000 x",
    )
    assert classify(_report(*sizes), V) == ["other"]  # a date on the line, but only the size changed


def test_each_cause_is_named_alone_for_its_own_difference() -> None:
    assert classify(_report("│ -built Wed Nov 27 04:18:41 2026", "│ +built Mi 27 Nov 2026 04:18:41 UTC"), V) == [
        "locale"
    ]
    assert classify(_report(f"│ -{sandbox.SRC}/x", f"│ +{V.build_dir}/x"), V) == ["paths"]
    modes = (
        "│ -drwxr-xr-x 0 0 0 0 2024-01-01 00:00:00.000000 d/",
        "│ +drwxrwxr-x 0 0 0 0 2024-01-01 00:00:00.000000 d/",
    )
    assert classify(_report(*modes), V) == ["umask"]
    assert classify(_report("│ --rw-r--r-- x", "│ +-rwxr--r-- x"), V) == ["other"]  # not a umask's bit


def test_causes_of_several_members_are_each_found() -> None:
    report = "\n".join(
        [
            "--- a/probe_1.0_all.deb",
            "+++ b/probe_1.0_all.deb",
            "├── data.tar.xz",
            "│ ├── data.tar",
            "│ │ ├── ./usr/share/probe/order",
            "│ │ │ @@ -1,3 +1,3 @@",
            "│ │ │ -data/f01",
            "│ │ │  data/f00",
            "│ │ │ +data/f01",
            "│ │ │  data/f02",
            "│ │ ├── ./usr/share/probe/where",
            "│ │ │ @@ -1 +1 @@",
            "│ │ │ -/build/src",
            f"│ │ │ +{V.build_dir}",
        ]
    )
    assert classify(report, V) == ["paths", "file order"]


def test_variation_wraps_the_step_under_a_shifted_clock() -> None:
    assert V.wrap(["/bin/sh", "-c", "x"])[-6:] == ["faketime", "-f", "+398d", "/bin/sh", "-c", "x"]
    assert Variation.unvaried().wrap(["/bin/sh"]) == ["/bin/sh"]
    assert V.env()["TZ"] != Variation.unvaried().env()["TZ"]
    assert V.to_json()["umask"] == "0002"


def _result(recipe: str, ok: bool, error: str = "") -> RecheckResult:
    return RecheckResult(recipe, recipe + "k", ok, {}, {}, [], [], {}, {}, "", error)


def test_rates_per_recipe_and_overall() -> None:
    table = rates(
        [_result("a", True), _result("b", False), _result("a", True), _result("c", True), _result("d", False, "x")]
    )
    assert table["a"] == {"checked": 2, "reproducible": 2, "failed": 0, "rate": 1.0}
    assert table["b"]["rate"] == 0.0
    assert table["d"] == {"checked": 0, "reproducible": 0, "failed": 1, "rate": None}
    assert table["all"] == {"checked": 4, "reproducible": 3, "failed": 1, "rate": 0.75}


def test_buildinfo_records_the_environment_and_is_not_compared() -> None:
    from farm.crossval.log import comparable

    outputs = {"hello_2.10-3_amd64.deb": "a", "hello_2.10-3_amd64.buildinfo": "b", "share.tar": "c"}
    assert comparable(outputs) == {"hello_2.10-3_amd64.deb": "a", "share.tar": "c"}
