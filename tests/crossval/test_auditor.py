"""Auditor mode: with the builder's private key deleted, ``compare`` and ``admission check`` work from published
logs and public keys alone, exit 0 (agree) / 1 (a disagreement) / 2 (a peer missing an entry), and write nothing
under the home."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from farm.cli.main import main
from farm.crossval.publish import publish
from farm.store import BuildRecord
from farm.trust.keys import PRIVATE_NAME
from tests.conftest import require
from tests.crossval.helpers import Org, log_tampered, make_org, request, source_repo

pytestmark = pytest.mark.integration


@dataclass
class World:
    root: Path
    orgs: dict[str, Org]
    records: dict[str, BuildRecord]  # alpha's, by recipe

    def trust(self, *peers: str) -> Path:
        path = self.root / f"peers-{'-'.join(peers)}.toml"
        path.write_text(
            "".join(f'[peers.{p}]\nkey = "{self.orgs[p].pem}"\nlog = "{self.root / "published" / p}"\n' for p in peers)
        )
        return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """alpha and beta build 'data' and 'more'; gamma only 'data'; evil lies about 'data'. alpha's key is deleted."""
    require("bwrap")
    root = tmp_path_factory.mktemp("auditor")
    repo = root / "src"
    commit = source_repo(repo, {"data.txt": "data\n", "more.txt": "more\n"})
    data = request(repo, commit, "data", ['cp data.txt "$OUT/data.txt"'], ["data.txt"])
    more = request(repo, commit, "more", ['cp more.txt "$OUT/more.txt"'], ["more.txt"])
    orgs = {n: make_org(root, n) for n in ("alpha", "beta", "gamma", "evil")}
    records = {}
    for name, org in orgs.items():
        for req in [data] if name in ("gamma", "evil") else [data, more]:
            rec = org.build(req)
            if name == "alpha":
                records[rec.recipe] = rec
            if name == "evil":
                log_tampered(org, rec, "data.txt", "e" * 64)
        publish(org.settings, str(root / "published" / name))
    (orgs["alpha"].settings.keys_dir / PRIVATE_NAME).unlink()
    return World(root, orgs, records)


def tree(home: Path) -> dict[str, Any]:
    return {
        str(p.relative_to(home)): (
            p.stat().st_mtime_ns,
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "",
        )
        for p in sorted(home.rglob("*"))
    }


def run(world: World, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = main(["--home", str(world.orgs["alpha"].settings.home), *argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else {}


def lock(world: World) -> Path:
    path = world.root / "image.lock"
    text = "lock-version = 1\nsource-date-epoch = 1700000000\n"
    for name, rec in sorted(world.records.items()):
        [(_, digest)] = rec.outputs().items()
        text += f'\n[[package]]\nname = "{name}"\nversion = "1.0"\narch = "all"\norigin = "farm"\n'
        text += f'sha256 = "{digest}"\nrecipe = "{name}"\ncommit = "{rec.commit}"\n'
    path.write_text(text)
    return path


def test_compare_without_the_builder_key_reads_and_writes_nothing(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    home = world.orgs["alpha"].settings.home
    before = tree(home)
    code, report = run(world, capsys, "compare", "--trust", str(world.trust("beta")))
    assert code == 0 and report["read_only"] and report["totals"] == {"agree": 2, "disagree": 0, "missing": 0}
    code, report = run(world, capsys, "compare", "--trust", str(world.trust("evil")))
    assert code == 1 and [d["recipe"] for d in report["disagreements"]] == ["data"]
    code, report = run(world, capsys, "compare", "--trust", str(world.trust("gamma")))
    assert code == 2 and report["totals"] == {"agree": 1, "disagree": 0, "missing": 1}
    [more] = [row for row in report["keys"] if row["recipe"] == "more"]
    assert more["peers"]["gamma"]["status"] == "missing"
    assert tree(home) == before


def test_admission_check_without_the_builder_key_reads_and_writes_nothing(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    home = world.orgs["alpha"].settings.home
    image_lock = str(lock(world))
    before = tree(home)
    code, report = run(
        world, capsys, "admission", "check", image_lock, "--trust", str(world.trust("beta")), "--require-agreement", "2"
    )
    assert code == 0 and report["admitted"] and report["organizations"] == ["self", "beta"]
    assert {p["name"]: p["agree"] for p in report["packages"]} == {"data": ["self", "beta"], "more": ["self", "beta"]}

    code, report = run(
        world, capsys, "admission", "check", image_lock, "--trust", str(world.trust("evil")), "--require-agreement", "2"
    )
    assert code == 1
    data = next(p for p in report["packages"] if p["name"] == "data")
    assert data["status"] == "refused" and data["disagree"] == [{"organization": "evil", "sha256": "e" * 64}]

    code, report = run(
        world,
        capsys,
        "admission",
        "check",
        image_lock,
        "--trust",
        str(world.trust("gamma")),
        "--require-agreement",
        "2",
    )
    assert code == 2
    assert {p["name"]: p["status"] for p in report["packages"]} == {"data": "admitted", "more": "missing"}
    assert next(p for p in report["packages"] if p["name"] == "more")["missing"] == ["gamma"]
    # Nobody else needed: K=1 admits what this organization's own (read-only) log attests.
    code, _ = run(world, capsys, "admission", "check", image_lock, "--trust", str(world.trust("gamma")))
    assert code == 0
    # The text report names each package's status and who is missing.
    alpha = str(world.orgs["alpha"].settings.home)
    argv = ["--home", alpha, "admission", "check", image_lock, "--trust", str(world.trust("gamma"))]
    assert main([*argv, "--require-agreement", "2"]) == 2
    text = capsys.readouterr().out
    assert "missing   more 1.0 (more) agree: self; missing: gamma" in text and "read-only" in text
    assert main(["--home", alpha, "compare", "--trust", str(world.trust("evil"))]) == 1
    assert "disagree  data" in capsys.readouterr().out
    assert tree(home) == before
