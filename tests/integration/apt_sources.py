"""What the tests against the real archive need: apt's tools and a Sources index (a deb-src entry)."""

from __future__ import annotations

import glob

import pytest

from farm.sources.apt import APT_HELPER, APT_LISTS
from tests.conftest import IN_CI, require


def require_deb_src(*tools: str) -> None:
    """Skip (fail in CI) unless apt-get, dpkg-source, git, apt-helper, ``tools`` and a Sources index are here."""
    for tool in ("apt-get", "dpkg-source", "git", APT_HELPER, *tools):
        require(tool)
    if not glob.glob(str(APT_LISTS / "*_source_Sources*")):
        message = "apt has no Sources index: run 'make apt' as root (it adds the deb-src entry)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
