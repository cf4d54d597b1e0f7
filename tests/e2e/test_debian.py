"""Debian packages from source, end to end through the CLI: a pinned environment made with mmdebstrap, the
repository's own debian recipes (imported .dsc sources, pinned archive build-dependencies), dpkg-buildpackage
offline in the environment, real .debs out. Then the same builds on a differently configured machine (another
home and store, work path, hostname, umask and timezone) give byte-identical .debs."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require
from tests.e2e.conftest import CLI, REPO

pytestmark = pytest.mark.e2e

PACKAGES = ("hello", "libcap2")  # two real packages of the set, small enough for CI


def farm(root: Path, *args: str, variant: bool = False) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MANGOS_FARM_")}
    env |= {"MANGOS_FARM_HOME": str(root / "home"), "MANGOS_FARM_WORKERS": "2"}
    argv = [CLI, *args]
    if variant:  # another machine: other hostname (own UTS namespace), umask, timezone
        env |= {"TZ": "Asia/Tokyo"}
        script = 'hostname other-builder && umask 077 && exec "$@"'
        argv = ["unshare", "--uts", "--", "/bin/sh", "-c", script, "sh", *argv]
    proc = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, f"{args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc


def build_set(root: Path, *, variant: bool = False) -> dict[str, Any]:
    recipes = root / "recipes"
    recipes.mkdir(parents=True)
    for name in PACKAGES:
        shutil.copy(REPO / "recipes" / "debian" / f"{name}.toml", recipes / f"{name}.toml")
    shutil.copytree(REPO / "patches", root / "patches")  # the recipes name patches/NAME/... (found in a parent)
    shutil.copytree(REPO / "envs", root / "envs")
    farm(root, "keys", "generate", variant=variant)
    farm(root, "env", "build", "bookworm-amd64", variant=variant)
    result: dict[str, Any] = json.loads(farm(root, "rebuild", "recipes", "--json", variant=variant).stdout)
    return result


def debs(result: dict[str, Any]) -> dict[str, str]:
    return {n: d for b in result["builds"] for n, d in (b["artifacts"] or {}).items() if n.endswith(".deb")}


def test_debian_packages_build_and_rebuild_byte_identically(tmp_path: Path) -> None:
    require("mmdebstrap")
    require("dpkg-deb")
    first = build_set(tmp_path / "a")
    assert first["ok"], first
    built = debs(first)
    assert {"hello_2.10-3_amd64.deb"} <= set(built)
    assert any(n.startswith("libcap2_") for n in built) and any(n.startswith("libcap-dev_") for n in built)

    # every output is a real .deb that dpkg-deb reads, with provenance naming the imported commit and environment
    out = tmp_path / "out"
    plan = {b["recipe"]: b for b in json.loads(farm(tmp_path / "a", "plan", "recipes", "--json").stdout)["builds"]}
    for name in PACKAGES:
        farm(tmp_path / "a", "fetch", "--commit", plan[name]["commit"], "-o", str(out))
    for deb in sorted(out.glob("*.deb")):
        info = subprocess.run(["dpkg-deb", "--info", str(deb)], capture_output=True, text=True, check=True).stdout
        assert "Package:" in info
        subprocess.run(["dpkg-deb", "--contents", str(deb)], capture_output=True, check=True)
        envelope = json.loads((out / f"{deb.name}.intoto.json").read_text())
        statement = json.loads(base64.b64decode(envelope["payload"]))
        deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
        assert deps[0]["digest"]["gitCommit"] in {plan[n]["commit"] for n in PACKAGES}
        assert deps[1]["name"] == "build-environment" and len(deps[1]["digest"]["sha256"]) == 64
        assert any(d.get("name", "").startswith("archive/debhelper_") for d in deps)
    assert json.loads(farm(tmp_path / "a", "verify", str(out), "--json").stdout)["failed"] == []

    # another machine, differently configured, from scratch: the same .debs, byte for byte
    second = build_set(tmp_path / "elsewhere" / "b", variant=True)
    assert second["ok"], second
    assert debs(second) == built
