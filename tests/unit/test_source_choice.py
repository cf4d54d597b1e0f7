"""Which source version ``recipes import`` takes: the one behind the binaries the image would install."""

from __future__ import annotations

from farm.archive.versions import ArchiveVersions, choose_source, parse_packages

BOOKWORM = """\
Package: libz1
Source: z
Version: 1.0-1
Architecture: amd64

Package: z-doc
Source: z
Version: 1.0-1
Architecture: all

Package: libcap
Source: cap (2.0-3)
Version: 2.0-3+b1
Architecture: amd64
"""

SECURITY = """\
Package: libz1
Source: z
Version: 1.0-1+deb12u1
Architecture: amd64

Package: libz1
Source: z
Version: 1.0-1+deb12u2
Architecture: arm64
"""


def archive() -> ArchiveVersions:
    index = ArchiveVersions()
    for text, label in ((BOOKWORM, "Debian bookworm"), (SECURITY, "Debian bookworm-security")):
        for entry in parse_packages(text, label):
            index.by_package.setdefault(entry.package, []).append(entry)
    return index


def test_the_security_candidate_for_the_build_arch_is_taken() -> None:
    choice = choose_source("z", None, ["1.0-1", "1.0-1+deb12u1"], ["libz1", "z-doc"], archive=archive(), arch="amd64")
    assert (choice.version, choice.candidate, choice.archive) == (
        "1.0-1+deb12u1",
        "1.0-1+deb12u1",
        "Debian bookworm-security",
    )
    assert not choice.explicit and not choice.older_than_candidate


def test_a_binnmu_candidate_names_its_source_version() -> None:
    choice = choose_source("cap", None, ["2.0-3", "2.0-2"], ["libcap"], archive=archive(), arch="amd64")
    assert choice.version == "2.0-3"


def test_explicit_version_is_kept_and_said_older() -> None:
    choice = choose_source("z", "1.0-1", ["1.0-1", "1.0-1+deb12u1"], ["libz1"], archive=archive(), arch="amd64")
    assert (choice.version, choice.candidate, choice.explicit, choice.older_than_candidate) == (
        "1.0-1",
        "1.0-1+deb12u1",
        True,
        True,
    )


def test_without_a_binary_for_the_arch_the_newest_source_is_taken() -> None:
    choice = choose_source("z", None, ["1.0-1", "1.0-1+deb12u3"], ["libz1"], archive=archive(), arch="riscv64")
    assert (choice.version, choice.archive) == ("1.0-1+deb12u3", "")
    # an arch-specific candidate beyond the indexed sources: chosen anyway (the caller reports it unindexed)
    arm = choose_source("z", None, ["1.0-1"], ["libz1"], archive=archive(), arch="arm64")
    assert arm.version == "1.0-1+deb12u2"
