"""The Containerfile's instructions, read as a builder would (test_compose.py builds it with podman and runs it)."""

from __future__ import annotations

import json
import re
import shlex

import pytest

from farm.build.userns import INNER_IDS
from tests.deploy.common import CONTAINERFILE, ROOT, WORKER_UID

pytestmark = pytest.mark.integration


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n(?:\s*#.*\n)*", " ", CONTAINERFILE.read_text())
    found = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def values(instruction: str) -> list[str]:
    return [rest for word, rest in instructions() if word == instruction]


def test_debian_12_base() -> None:
    (base,) = values("FROM")
    assert re.fullmatch(r"debian:(bookworm|12)(-slim)?(@sha256:[0-9a-f]{64})?", base), base


def test_installs_what_the_farm_runs_with() -> None:
    installs = [shlex.split(run) for run in values("RUN") if "apt-get install" in run]
    assert installs
    packages = {word for argv in installs for word in argv if re.fullmatch(r"[a-z0-9][a-z0-9.+-]+", word)}
    assert {"git", "bubblewrap", "build-essential", "python3-venv", "ca-certificates"} <= packages
    assert any("--no-install-recommends" in argv for argv in installs)
    assert any("rm -rf /var/lib/apt/lists" in run for run in values("RUN"))


def test_installs_the_farm_into_a_venv() -> None:
    runs = " ".join(values("RUN"))
    assert "python3 -m venv /opt/mangos-farm/venv" in runs
    assert re.search(r"/opt/mangos-farm/venv/bin/pip install .*/opt/mangos-farm/src\b", runs)
    for source in (s.split()[:-1] for s in values("COPY")):
        for path in source:
            assert (ROOT / path).exists(), f"COPY {path}: not in the repository"
    copied = {p for s in values("COPY") for p in s.split()[:-1]}
    assert {"pyproject.toml", "README.md", "farm", "workers"} <= copied  # what `pip install .` needs


def test_runs_unprivileged_with_the_cli_as_entrypoint() -> None:
    (user,) = values("USER")
    assert user == f"{WORKER_UID}:{WORKER_UID}"  # numeric: runAsNonRoot can verify it
    (entrypoint,) = values("ENTRYPOINT")
    assert json.loads(entrypoint) == ["mangos-farm"]
    env = " ".join(values("ENV"))
    assert "MANGOS_FARM_HOME=/var/lib/mangos" in env
    assert "PATH=/opt/mangos-farm/venv/bin:$PATH" in env
    runs = " ".join(values("RUN"))
    assert f"--uid {WORKER_UID}" in runs
    assert "install -d -o mangos -g mangos -m 0700 /var/lib/mangos/keys" in runs  # the keys volume's owner
    # every directory compose.yaml mounts a named volume on exists, owned by the user (else the volume is root's)
    made = {p for run in values("RUN") for p in re.findall(r"/var/lib/mangos/\w+", run)}
    assert {"/var/lib/mangos/keys", "/var/lib/mangos/coordinator", "/var/lib/mangos/keyring"} <= made


def test_the_worker_user_has_a_subordinate_range_for_debian_builds() -> None:
    """newuidmap (uidmap) and a range of 65536 ids (farm/build/userns.py INNER_IDS) below 131072, the ids a
    Kubernetes pod user namespace gets with userNamespaces.idsPerPod: 131072 (worker-debian.yaml)."""
    runs = " ".join(values("RUN"))
    installs = [shlex.split(run) for run in values("RUN") if "apt-get install" in run]
    assert any("uidmap" in argv for argv in installs)
    (first, last), (gfirst, glast) = (
        tuple(map(int, m.split("-"))) for m in re.findall(r"--add-sub[ug]ids (\d+-\d+)", runs)
    )
    assert (first, last) == (gfirst, glast)
    assert last - first + 1 == INNER_IDS
    assert first > WORKER_UID and last < 131072


def test_build_context_leaves_local_state_out() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".mangos", "demo/git", "out"} <= ignored
