"""The operator's guide: linked from the README, and every link and file it names exists."""

from __future__ import annotations

import re

import pytest

from farm.build.userns import SUGGESTED_RANGE
from tests.deploy.common import OPERATIONS, ROOT, load_yaml_all, markdown_anchors

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


def section(title: str) -> str:
    text = OPERATIONS.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_capability_classes_name_the_settings_the_manifests_carry() -> None:
    """The guide names every class the farm probes, and each exception worker-debian.yaml adds is named there."""
    text = section("Capability classes and workers without root")
    for cls in ("default", "`debian`", "`kvm`"):
        assert f"| {cls} |" in text, cls
    debian = load_yaml_all(ROOT / "deploy/kubernetes/worker-debian.yaml")[0]
    context = debian["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    assert f"capabilities.add: [{', '.join(context['capabilities']['add'])}]" in text
    assert f"allowPrivilegeEscalation: {str(context['allowPrivilegeEscalation']).lower()}" in text
    assert "hostUsers: false" in text and "idsPerPod: 131072" in text
    assert f"usermod --add-subuids {SUGGESTED_RANGE} --add-subgids {SUGGESTED_RANGE}" in text


def test_moving_a_fleet_names_the_paths_the_farm_uses() -> None:
    text = section("Moving an existing fleet")
    assert "$MANGOS_FARM_HOME/cache/envs/*/root" in text  # farm/build/debian.py env_root, as a root worker made it
    assert f"usermod --add-subuids {SUGGESTED_RANGE}" in text
    assert "mangos_builds_ready_waiting" in text
