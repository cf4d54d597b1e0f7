"""The operator's guide: linked from the README, and every link and file it names exists."""

from __future__ import annotations

import re

import pytest

from tests.deploy.common import OPERATIONS, ROOT, markdown_anchors

pytestmark = pytest.mark.integration


def test_readme_links_the_operations_guide() -> None:
    readme = (ROOT / "README.md").read_text()
    fleet = readme[readme.index("## Running a fleet") :]
    assert "(docs/operations.md)" in fleet[: fleet.index("\n## ", 3)]


def test_internal_links_resolve() -> None:
    text = OPERATIONS.read_text()
    anchors = markdown_anchors(text)
    links = re.findall(r"\]\(#([^)]+)\)", text)
    assert links
    for anchor in links:
        assert anchor in anchors, f"link to #{anchor}: no such section"


def test_named_repository_files_exist() -> None:
    text = OPERATIONS.read_text()
    named = set(re.findall(r"`((?:deploy|tests|farm|docs)/[\w./-]+|Containerfile|compose\.yaml)`", text))
    assert "deploy/seccomp/worker.json" in named
    for path in named:
        assert (ROOT / path).exists(), f"{OPERATIONS.name} names {path}, which does not exist"
