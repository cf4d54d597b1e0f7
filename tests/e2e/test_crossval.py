"""Cross-validation end to end, through the CLI: independent farms (own homes, keys, stores, embedded worker processes)
build the demo recipes, publish signed attestation logs and compare them; a malicious builder is caught and
refused admission; a rewritten published log is detected; recheck --vary; an offline rebuild from a bundle."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from farm.crossval.admission import Subject, check_agreement
from farm.crossval.log import ENTRIES, HEAD, Entry, InputsKey, Log
from farm.crossval.publish import all_records
from farm.crossval.rebuilds import read_published
from farm.errors import E, FarmError
from farm.settings import Settings
from farm.store import BuildRecord, open_store
from farm.trust.keys import generate, load_builder, load_public
from farm.trust.provenance import sign, verify_envelope
from tests.conftest import require
from tests.crossval.helpers import Org, log_tampered
from tests.e2e.conftest import CLI, REPO, Farm
from tests.e2e.image_fixtures import BuiltImage

pytestmark = pytest.mark.e2e


@dataclass
class Orgs:
    root: Path
    farms: dict[str, Farm]

    def settings(self, name: str) -> Settings:
        return Settings(home=self.farms[name].home)

    def records(self, name: str) -> dict[str, BuildRecord]:
        store = open_store(str(self.farms[name].home / "store"))
        return {r.recipe: r for r in all_records(store)}

    def trust(self, *peers: str, logs: dict[str, Path] | None = None) -> Path:
        path = self.root / f"peers-{'-'.join(peers)}-{len(list(self.root.glob('peers-*')))}.toml"
        text = ""
        for p in peers:
            log = (logs or {}).get(p, self.root / "published" / p)
            text += f'[peers.{p}]\nkey = "keys/{p}.pem"\nlog = "{log}"\n'
        path.write_text(text)
        return path


@pytest.fixture(scope="module")
def orgs(tmp_path_factory: pytest.TempPathFactory) -> Orgs:
    """alpha, beta and evil each build the demo recipes; evil's builder signs a digest it never built for greet."""
    require("bwrap")
    require("git")
    root = tmp_path_factory.mktemp("crossval")
    shutil.copytree(REPO / "recipes", root / "recipes", ignore=shutil.ignore_patterns("debian"))
    shutil.copytree(REPO / "demo" / "src", root / "demo" / "src")
    shutil.copy(REPO / "demo" / "make_sources.py", root / "demo" / "make_sources.py")
    subprocess.run([sys.executable, "demo/make_sources.py", "demo/git"], cwd=root, check=True, capture_output=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith("MANGOS_FARM_")}
    farms = {}
    (root / "keys").mkdir()
    for name in ("alpha", "beta", "evil"):
        home = root / name
        farm = Farm(root, home, base | {"MANGOS_FARM_HOME": str(home), "MANGOS_FARM_WORKERS": "2"})
        farm.run("keys", "generate")
        farm.run("keys", "export-public", "-o", str(root / "keys" / f"{name}.pem"))
        farm.run("rebuild", "recipes/")
        farms[name] = farm
    orgs = Orgs(root, farms)
    evil = Org("evil", orgs.settings("evil"), load_builder(farms["evil"].home / "keys"))
    log_tampered(evil, orgs.records("evil")["greet"], "greet", "e" * 64)
    for name, farm in farms.items():
        farm.run("publish", "-o", str(root / "published" / name))
    return orgs


def test_two_independent_farms_fully_agree(orgs: Orgs) -> None:
    alpha, beta = orgs.records("alpha"), orgs.records("beta")
    assert {n: r.outputs() for n, r in alpha.items()} == {n: r.outputs() for n, r in beta.items()}
    assert alpha["greet"].provenance != beta["greet"].provenance, "signed by different keys"
    proc = orgs.farms["alpha"].run("compare", "--trust", str(orgs.trust("beta")), "--json")
    report = json.loads(proc.stdout)
    assert report["totals"] == {"agree": 3, "disagree": 0, "missing": 0}
    assert report["peers"]["beta"]["status"] == "ok"
    assert sorted(r["recipe"] for r in report["keys"]) == ["greet", "libgreet", "welcome"]
    text = orgs.farms["alpha"].run("compare", "--trust", str(orgs.trust("beta"))).stdout
    assert "3 agree, 0 disagree, 0 missing" in text


def test_malicious_builder_is_flagged_and_refused(orgs: Orgs) -> None:
    alpha = orgs.farms["alpha"]
    proc = alpha.run("compare", "--trust", str(orgs.trust("beta", "evil")), "--json", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert [(d["recipe"], d["organization"]) for d in report["disagreements"]] == [("greet", "evil")]
    [bad] = report["disagreements"]
    assert (
        bad["theirs"]["greet"] == "e" * 64 and bad["self"]["greet"] == orgs.records("alpha")["greet"].outputs()["greet"]
    )
    assert report["totals"] == {"agree": 5, "disagree": 1, "missing": 0}
    text = alpha.run("compare", "--trust", str(orgs.trust("beta", "evil")), check=False).stdout
    assert "disagree  greet 1.0.0 [evil] greet: ours" in text

    # Admission with K=2: what only alpha and evil attest is refused, naming the package and evil.
    settings = orgs.settings("alpha")
    store = open_store(str(orgs.farms["alpha"].home / "store"))
    rec = orgs.records("alpha")["greet"]
    stmt = verify_envelope(json.loads(store.get_bytes(rec.provenance)), [load_builder(settings.keys_dir).public])
    subjects = [Subject("greet", "greet", rec.outputs()["greet"], stmt.statement)]
    with pytest.raises(FarmError) as err:
        check_agreement(subjects, require=2, trust=orgs.trust("evil"), settings=settings)
    assert err.value.code == E.ADMISSION_REFUSED
    assert "greet/greet" in err.value.message and "evil attested eeeeeeee" in err.value.message
    assert check_agreement(subjects, require=2, trust=orgs.trust("beta", "evil"), settings=settings).admitted


def _rewrite(src: Path, dest: Path, drop: int | None = None, change: int | None = None) -> list[Entry]:
    shutil.copytree(src, dest)
    lines = (dest / ENTRIES).read_bytes().splitlines(keepends=True)
    if drop is not None:
        del lines[drop]
    if change is not None:
        data = json.loads(lines[change])
        data["version"] = "9.9"
        lines[change] = json.dumps(data, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    (dest / ENTRIES).write_bytes(b"".join(lines))
    return Log.open(dest).entries if drop is None and change is None else []


def test_removed_or_rewritten_published_entries_are_detected(orgs: Orgs) -> None:
    alpha, root = orgs.farms["alpha"], orgs.root
    published = root / "published" / "beta"
    # A copy of beta's log that alpha has seen once (its head is remembered under alpha's home).
    served = root / "served-beta"
    shutil.copytree(published, served)
    trust = orgs.trust("beta", logs={"beta": served})
    assert alpha.run("compare", "--trust", str(trust)).returncode == 0

    # 1. An entry removed (or edited) without the key: the chain / signed head no longer match.
    for kwargs in ({"drop": 1}, {"change": 0}):
        shutil.rmtree(served)
        _rewrite(published, served, **kwargs)
        proc = alpha.run("compare", "--trust", str(trust), "--json", check=False)
        assert proc.returncode == 1
        peer = json.loads(proc.stdout)["peers"]["beta"]
        assert peer["status"] == "invalid" and peer["error"]["code"] == E.LOG_INVALID, peer

    # 2. beta rewrites its history with its own key (entry removed, log re-chained and re-signed): valid on its
    #    own, but inconsistent with the head alpha saw before.
    shutil.rmtree(served)
    served.mkdir()
    beta_key = load_builder(orgs.farms["beta"].home / "keys")
    old = Log.open(published).entries
    forged = Log.open(served)
    for e in old[1:]:
        forged.append(
            key=e.key, recipe=e.recipe, version=e.version, build_key=e.build_key, outputs=e.outputs, envelope=e.envelope
        )
    forged.sign(beta_key)
    assert (served / HEAD).exists()
    proc = alpha.run("compare", "--trust", str(trust), "--json", check=False)
    assert proc.returncode == 1
    peer = json.loads(proc.stdout)["peers"]["beta"]
    assert peer["status"] == "inconsistent" and peer["error"]["code"] == E.LOG_INCONSISTENT, peer
    text = alpha.run("compare", "--trust", str(trust), check=False).stdout
    assert "peer beta: inconsistent" in text and "entries were removed" in text

    # An unreachable peer is an error (exit 2), not a disagreement.
    proc = alpha.run("compare", "--trust", str(orgs.trust("beta", logs={"beta": root / "nowhere"})), check=False)
    assert proc.returncode == 2 and "unreachable" in proc.stdout


def test_demo_set_rechecks_clean_under_variation(orgs: Orgs) -> None:
    require("faketime")
    beta = orgs.farms["beta"]
    first = beta.run("recheck", "--all", "--vary", "--json")
    out = json.loads(first.stdout)
    assert [(r["recipe"], r["reproducible"], r["outcome"]) for r in out["results"]] == [
        ("libgreet", True, "reproducible"),
        ("greet", True, "reproducible"),
        ("welcome", True, "reproducible"),
    ]
    assert out["reproducibility"]["all"] == {"checked": 3, "reproducible": 3, "failed": 0, "rate": 1.0}
    assert out["totals"] == {"checked": 3, "reproducible": 3, "not_reproducible": 0, "failed": 0, "skipped": 0}
    assert out["variation"]["clock_shift_days"] >= 366
    assert (
        "[1/3] rechecking libgreet (ETA unknown)" in first.stderr and "[3/3] rechecking welcome (ETA " in first.stderr
    )
    # Resumed: every build already has a rebuild attestation under this variation table; nothing is rebuilt.
    again = beta.run("recheck", "--all", "--vary", "--json")
    out = json.loads(again.stdout)
    assert all(r["skipped"] and r["outcome"] == "reproducible" for r in out["results"])
    assert out["totals"]["skipped"] == 3 and "rechecking" not in again.stderr
    # The rebuild attestations are published beside the log, and verify with beta's key.
    beta.run("publish", "-o", str(orgs.root / "published-rebuilds" / "beta"))
    found = read_published(
        str(orgs.root / "published-rebuilds" / "beta"), [load_public(orgs.root / "keys" / "beta.pem")], "beta"
    )
    assert sorted((e.verdict, e.varied) for e in found) == [("reproducible", True)] * 3
    status = beta.run("status").stdout
    assert "reproducibility (recheck): all 3/3 (100%)" in status
    assert beta.json("status")["reproducibility"]["greet"]["rate"] == 1.0
    missing = beta.run("recheck", "--vary", "nosuch", check=False)
    assert missing.returncode == 2 and "error[E-RECHECK]" in missing.stderr


def test_bundle_rebuilds_offline_in_a_fresh_store_with_the_same_digest(orgs: Orgs, tmp_path: Path) -> None:
    unshare = require("unshare")
    alpha = orgs.farms["alpha"]
    bundle = tmp_path / "greet.tar"
    alpha.run("bundle", "greet", "-o", str(bundle))
    expected = orgs.records("alpha")["greet"].outputs()
    fresh = Farm(tmp_path, tmp_path / "fresh", alpha.env | {"MANGOS_FARM_HOME": str(tmp_path / "fresh")})
    fresh.run("keys", "generate")
    # No network at all (a new network namespace), a fresh home, store and source cache.
    proc = subprocess.run(
        [
            unshare,
            "--net",
            CLI,
            "rebuild-bundle",
            str(bundle),
            "--key",
            str(orgs.root / "keys" / "alpha.pem"),
            "--json",
        ],
        cwd=tmp_path,
        env=fresh.env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["same"] and result["rebuilt"] == expected == result["expected"]
    assert open_store(str(tmp_path / "fresh" / "store")).get_record(result["build_key"]) is not None
    # Without trusting alpha's key, alpha's dependency (libgreet) is refused before use.
    untrusting = Farm(tmp_path, tmp_path / "untrusting", alpha.env | {"MANGOS_FARM_HOME": str(tmp_path / "untrusting")})
    untrusting.run("keys", "generate")
    refused = untrusting.run("rebuild-bundle", str(bundle), check=False)
    assert refused.returncode == 2 and "dependency 'libgreet' refused" in refused.stderr, refused.stderr
    # A damaged bundle is refused with a clear error.
    broken = tmp_path / "broken.tar"
    broken.write_bytes(bundle.read_bytes()[:2000])
    proc2 = fresh.run("rebuild-bundle", str(broken), check=False)
    assert proc2.returncode == 2 and "error[E-BUNDLE-INVALID]" in proc2.stderr


def test_image_build_require_agreement_refuses_what_a_malicious_peer_contradicts(
    built_image: BuiltImage,
    tmp_path: Path,
) -> None:
    """The image stream's farm (a real hello .deb from source) against a peer whose builder signed another digest."""
    farm = built_image.farm
    settings = Settings(home=farm.home)
    store = open_store(str(farm.home / "store"))
    [hello] = [r for r in all_records(store) if r.recipe == "hello"]
    deb = next(n for n in hello.outputs() if n.startswith("hello_") and n.endswith(".deb"))
    evil_key = generate(tmp_path / "evil-keys")
    stmt = json.loads(base64.b64decode(json.loads(store.get_bytes(hello.provenance))["payload"]))
    for subject in stmt["subject"]:
        if subject["name"] == deb:
            subject["digest"]["sha256"] = "d" * 64
    evil = Log.open(tmp_path / "evil-log")
    evil.append(
        key=InputsKey.from_statement(stmt, settings.build_arch),
        recipe="hello",
        version=hello.version,
        build_key=hello.build_key,
        outputs={s["name"]: s["digest"]["sha256"] for s in stmt["subject"]},
        envelope=sign(stmt, evil_key),
    )
    evil.sign(evil_key)
    trust = tmp_path / "peers.toml"
    trust.write_text(
        f'[peers.evil]\nkey = "{tmp_path / "evil-keys" / "builder.pub"}"\nlog = "{tmp_path / "evil-log"}"\n'
    )
    args = ("image", "build", "--check-inputs", "--recipes", "recipes", "--trust", str(trust))
    refused = farm.run(*args, "--require-agreement", "2", check=False)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "error[E-ADMISSION-REFUSED]" in refused.stderr
    assert f"hello/{deb}" in refused.stderr and "evil attested dddddddd" in refused.stderr
    admitted = farm.run(*args, "--require-agreement", "1")
    assert "packages verified" in admitted.stdout
    # Never rechecked: --require-reproducible refuses it, naming it and why; archive packages are not judged.
    gated = farm.run(*args, "--require-agreement", "1", "--require-reproducible", check=False)
    assert gated.returncode == 2 and "error[E-ADMISSION-REFUSED]" in gated.stderr, gated.stderr
    assert f"hello/{deb}" in gated.stderr and "no varied rebuild attests it" in gated.stderr
