"""A binNMU is built as Debian's buildds build one: only the architecture's own packages (``dpkg-buildpackage -B``),
so the farm makes no ``V+bN`` arch-all package the archive does not have (those stay the archive's ``V``); every
other debian build keeps ``-b``. The real build of both kinds of package is tests/integration/test_binnmu.py."""

from __future__ import annotations

import pytest

from farm.build import binnmu, buildd
from farm.build import debian as debian_build

pytestmark = pytest.mark.unit


def test_a_binnmu_builds_the_architectures_packages_only() -> None:
    assert binnmu.build_type(0) == "-b"
    assert binnmu.build_type(1) == binnmu.build_type(13) == "-B"
    assert buildd.dpkg_buildpackage_argv() == ["dpkg-buildpackage", "-b", "-us", "-uc"]
    assert buildd.dpkg_buildpackage_argv(("nocheck",), binnmu.build_type(2)) == [
        "dpkg-buildpackage", "-B", "-us", "-uc", "--build-profiles=nocheck",
    ]  # fmt: skip


def test_the_build_root_runs_the_binnmus_build_type() -> None:
    plain = debian_build.inner_script(5, 1)
    nmu = debian_build.inner_script(5, 1, build_type=binnmu.build_type(1))
    assert "dpkg-buildpackage -b -us -uc" in plain and "dpkg-buildpackage -B" not in plain
    assert "dpkg-buildpackage -B -us -uc" in nmu and "dpkg-buildpackage -b" not in nmu
    assert plain == debian_build.inner_script(5, 1, build_type="-b")  # a build that is no binNMU is unchanged
