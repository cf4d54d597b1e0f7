"""K-of-N admission over real builds by three organizations (own keys, stores, published logs)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from farm.crossval.admission import Subject, check_agreement
from farm.crossval.publish import publish
from farm.errors import E, FarmError
from farm.store import BuildRecord, open_store
from farm.trust.provenance import verify_envelope
from tests.conftest import require
from tests.crossval.helpers import Org, log_tampered, make_org, request, source_repo

pytestmark = pytest.mark.integration


@dataclass
class World:
    root: Path
    orgs: dict[str, Org]
    records: dict[str, dict[str, BuildRecord]]  # org -> recipe -> record

    def trust(self, me: str, *peers: str) -> Path:
        path = self.root / f"peers-{me}-{'-'.join(peers)}.toml"
        path.write_text(
            "".join(f'[peers.{p}]\nkey = "{self.orgs[p].pem}"\nlog = "{self.root / "published" / p}"\n' for p in peers)
        )
        return path

    def subjects(self, org: str) -> list[Subject]:
        store = open_store(self.orgs[org].settings.store_url)
        found = []
        for rec in self.records[org].values():
            stmt = verify_envelope(json.loads(store.get_bytes(rec.provenance)), [self.orgs[org].key.public]).statement
            found += [Subject(rec.recipe, a.name, a.digest, stmt) for a in rec.artifacts]
        return found


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """alpha, beta and gamma build the same two recipes; gamma's builder lies about 'tool'."""
    require("bwrap")
    root = tmp_path_factory.mktemp("world")
    repo = root / "src"
    tool = '#include <stdio.h>\nint main(void){puts("tool");return 0;}\n'
    commit = source_repo(repo, {"tool.c": tool, "data.txt": "data\n"})
    reqs = [
        request(repo, commit, "tool", ['cc -O2 -o "$OUT/tool" tool.c'], ["tool"]),
        request(repo, commit, "data", ['cp data.txt "$OUT/data.txt"'], ["data.txt"]),
    ]
    orgs = {n: make_org(root, n) for n in ("alpha", "beta", "gamma")}
    records: dict[str, dict[str, BuildRecord]] = {}
    for name, org in orgs.items():
        records[name] = {}
        for req in reqs:
            rec = org.build(req)
            records[name][rec.recipe] = rec
    log_tampered(orgs["gamma"], records["gamma"]["tool"], "tool", "6" * 64)
    for name, org in orgs.items():
        publish(org.settings, str(root / "published" / name))
    return World(root, orgs, records)


def test_honest_peer_gives_agreement_of_two(world: World) -> None:
    report = check_agreement(
        world.subjects("alpha"), require=2, trust=world.trust("alpha", "beta"), settings=world.orgs["alpha"].settings
    )
    assert report.admitted
    assert {v.subject.recipe: v.agree for v in report.verdicts} == {"tool": ("self", "beta"), "data": ("self", "beta")}


def test_malicious_peer_is_refused_naming_package_and_org(world: World) -> None:
    subjects = world.subjects("alpha")
    with pytest.raises(FarmError) as err:
        check_agreement(subjects, require=2, trust=world.trust("alpha", "gamma"), settings=world.orgs["alpha"].settings)
    assert err.value.code == E.ADMISSION_REFUSED
    assert "tool/tool" in err.value.message and "gamma attested 6666" in err.value.message
    assert "data/data.txt" not in err.value.message
    # With three organizations, two honest ones still reach K=2, but not K=3.
    trust = world.trust("alpha", "beta", "gamma")
    report = check_agreement(subjects, require=2, trust=trust, settings=world.orgs["alpha"].settings)
    tool = next(v for v in report.verdicts if v.subject.recipe == "tool")
    assert tool.agree == ("self", "beta") and tool.disagree == (("gamma", "6" * 64),)
    with pytest.raises(FarmError, match="tool/tool"):
        check_agreement(subjects, require=3, trust=trust, settings=world.orgs["alpha"].settings)


def test_impossible_k_and_unknown_trust_file(world: World) -> None:
    settings = world.orgs["alpha"].settings
    with pytest.raises(FarmError, match="cannot be met"):
        check_agreement(world.subjects("alpha"), require=3, trust=world.trust("alpha", "beta"), settings=settings)
    with pytest.raises(FarmError) as err:
        check_agreement(world.subjects("alpha"), require=2, trust=world.root / "nope.toml", settings=settings)
    assert err.value.code == E.PEERS_CONFIG
