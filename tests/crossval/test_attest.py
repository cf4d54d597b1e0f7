"""Rebuild attestations: their statement formats, verification by securesystemslib, and files written before they
existed (tests/fixtures/crossval-v1, made by the code of the commit before) still reading and verifying."""

from __future__ import annotations

import base64
import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import SSlibKey  # type: ignore[attr-defined]  # public API, re-exported

from farm.crossval import attest
from farm.crossval.admission import Built, judge_reproducible
from farm.crossval.compare import compare
from farm.crossval.log import ENTRIES, HEAD, read_verified
from farm.crossval.peers import Peer
from farm.crossval.rebuilds import own_equivalences, parse, read_published
from farm.crossval.results import load_results
from farm.errors import E, FarmError
from farm.settings import Settings
from farm.trust.keys import BuilderKey, generate, load_public
from farm.trust.provenance import BUILD_TYPE, PAYLOAD_TYPE, PREDICATE_TYPE, STATEMENT_TYPE, sign, statement

pytestmark = pytest.mark.unit

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "crossval-v1"


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> BuilderKey:
    return generate(tmp_path_factory.mktemp("k"))


def original() -> dict[str, Any]:
    return statement(
        subjects=[("hello.tar", "1" * 64), ("hello.buildinfo", "2" * 64)],
        recipe={"name": "hello"},
        recipe_digest="3" * 64,
        source_url="https://example.invalid/hello.git",
        commit="a" * 40,
        tree="b" * 40,
        environment="4" * 64,
        dependencies=[],
        builder_id="alpha-builder",
        build_key="6" * 64,
        started="2026-01-01T00:00:00Z",
        finished="2026-01-01T00:00:01Z",
    )


def rebuild(verdict: str = attest.REPRODUCIBLE, tar: str = "1" * 64) -> attest.Rebuild:
    return attest.Rebuild(
        build_key="6" * 64,
        provenance="7" * 64,
        original_builder="alpha-builder",
        outputs={"hello.tar": "1" * 64, "hello.buildinfo": "2" * 64},
        rebuilt={"hello.tar": tar, "hello.buildinfo": "8" * 64},
        variation={"tz": "Pacific/Kiritimati", "clock_shift_days": 398},
        variation_version=3,
        varied=True,
        verdict=verdict,
        differing=[] if tar == "1" * 64 else ["hello.tar"],
        causes=[] if tar == "1" * 64 else ["timestamps"],
        log="9" * 64,
        builder_id="beta-rechecker",
    )


def payload(envelope: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(base64.b64decode(envelope["payload"]))
    return data


def sslib_verify(envelope: dict[str, Any], key: BuilderKey) -> list[str]:
    ours = SSlibKey.from_crypto(load_pem_public_key(key.public.pem()), keyid=key.public.keyid, scheme="ed25519")
    return list(Envelope.from_dict(copy.deepcopy(envelope)).verify([ours], 1))


def test_rebuild_statement_is_slsa_provenance_naming_the_original_and_the_variation(key: BuilderKey) -> None:
    envelopes = attest.sign_rebuild(rebuild(), original(), key)
    rb = payload(envelopes["rebuild"])
    assert envelopes["rebuild"]["payloadType"] == PAYLOAD_TYPE
    assert rb["_type"] == STATEMENT_TYPE and rb["predicateType"] == PREDICATE_TYPE
    definition = rb["predicate"]["buildDefinition"]
    assert definition["buildType"] == attest.REBUILD_BUILD_TYPE != BUILD_TYPE
    assert definition["buildType"].startswith("https://mangos.dev/farm/")
    assert definition["externalParameters"]["original"] == {"buildKey": "6" * 64, "provenance": {"sha256": "7" * 64}}
    assert definition["externalParameters"]["variation"]["tableVersion"] == 3
    assert definition["externalParameters"]["variation"]["varied"] is True
    assert (
        definition["externalParameters"]["source"]
        == original()["predicate"]["buildDefinition"]["externalParameters"]["source"]
    )
    assert rb["predicate"]["runDetails"]["builder"] == {"id": "beta-rechecker"}
    assert {s["name"] for s in rb["subject"]} == {"hello.tar", "hello.buildinfo"}


def test_equivalence_statement_has_its_own_predicate_type(key: BuilderKey) -> None:
    envelopes = attest.sign_rebuild(rebuild(attest.NOT_REPRODUCIBLE, tar="f" * 64), original(), key)
    eq = payload(envelopes["equivalence"])
    assert eq["_type"] == STATEMENT_TYPE and eq["predicateType"] == attest.EQUIVALENCE_TYPE
    assert eq["subject"] == [{"name": "hello.tar", "digest": {"sha256": "1" * 64}}], "the .buildinfo is not compared"
    pred = eq["predicate"]
    assert pred["verdict"] == "not-reproducible" and pred["differing"] == ["hello.tar"]
    assert pred["causes"] == ["timestamps"]
    assert pred["original"]["outputs"]["hello.tar"] == "1" * 64 and pred["rebuild"]["outputs"]["hello.tar"] == "f" * 64
    assert pred["rebuild"]["attestation"]["sha256"] == attest.envelope_digest(envelopes["rebuild"])
    assert attest.sign_rebuild(rebuild(attest.NOT_REPRODUCIBLE, tar="f" * 64), original(), key) == envelopes


def test_securesystemslib_verifies_both_statements(key: BuilderKey) -> None:
    envelopes = attest.sign_rebuild(rebuild(), original(), key)
    assert sslib_verify(envelopes["rebuild"], key) == [key.public.keyid]
    assert sslib_verify(envelopes["equivalence"], key) == [key.public.keyid]
    forged = copy.deepcopy(envelopes["equivalence"])
    stmt = payload(forged)
    stmt["predicate"]["verdict"] = "reproducible"
    stmt["subject"][0]["digest"]["sha256"] = "f" * 64
    forged["payload"] = base64.b64encode(json.dumps(stmt).encode()).decode()
    with pytest.raises(VerificationError):
        sslib_verify(forged, key)


def test_verify_pair_checks_signatures_and_that_the_two_belong_together(key: BuilderKey, tmp_path: Path) -> None:
    good = attest.sign_rebuild(rebuild(), original(), key)
    eq = attest.verify_pair(good, [key.public], "t")
    assert eq.verdict == "reproducible" and eq.varied and eq.table_version == 3 and eq.build_key == "6" * 64
    assert eq.subjects() == {"hello.tar": "1" * 64}
    other = attest.sign_rebuild(rebuild(attest.NOT_REPRODUCIBLE, tar="f" * 64), original(), key)
    with pytest.raises(FarmError, match="names another rebuild statement") as err:
        attest.verify_pair({"rebuild": other["rebuild"], "equivalence": good["equivalence"]}, [key.public], "t")
    assert err.value.code == E.LOG_INVALID
    with pytest.raises(FarmError, match="does not verify"):
        attest.verify_pair(good, [generate(tmp_path / "other").public], "t")
    # A build provenance is not a rebuild statement, even when signed by the same key.
    not_rebuild = {"rebuild": sign(original(), key), "equivalence": good["equivalence"]}
    with pytest.raises(FarmError, match="buildType"):
        attest.verify_pair(not_rebuild, [key.public], "t")


def test_the_gate_judges_verdicts_varied_or_not(key: BuilderKey) -> None:
    pkg = Built("hello", "hello.tar", "1" * 64, "6" * 64)
    agreed = attest.verify_pair(attest.sign_rebuild(rebuild(), original(), key), [key.public], "t")
    differs = attest.verify_pair(
        attest.sign_rebuild(rebuild(attest.NOT_REPRODUCIBLE, tar="f" * 64), original(), key), [key.public], "t"
    )
    plain = attest.sign_rebuild(
        attest.Rebuild(**{**rebuild().__dict__, "varied": False}), original(), key
    )  # the normal environment
    [v] = judge_reproducible([pkg], {"self": [differs], "beta": [agreed]})
    assert v.agreed == ("beta",) and "self's varied rebuild differs (hello.tar; likely cause: timestamps)" in v.reasons
    [v] = judge_reproducible([pkg], {"self": [attest.verify_pair(plain, [key.public], "t")]})
    assert v.agreed == () and v.reasons == ("self rebuilt it only in the normal environment, not the varied one",)
    [v] = judge_reproducible([pkg], {"self": []})
    assert v.agreed == () and "no varied rebuild attests it" in v.reasons[0]


def test_published_rebuilds_file_verifies_line_by_line(key: BuilderKey, tmp_path: Path) -> None:
    envelopes = attest.sign_rebuild(rebuild(), original(), key)
    line = json.dumps({"build_key": "6" * 64, "recipe": "hello", **envelopes}).encode()
    assert [e.verdict for e in parse(line + b"\n\n" + line, [key.public], "t")] == ["reproducible"] * 2
    with pytest.raises(FarmError) as err:
        parse(line + b"\n{not json\n", [key.public], "t")
    assert err.value.code == E.LOG_INVALID and "line 2" in err.value.message


# -- files written before rebuild attestations --------------------------------------------------------------------
def test_a_log_published_before_still_verifies_and_has_no_rebuilds() -> None:
    published = FIXTURE / "published"
    pub = load_public(FIXTURE / "home" / "keys" / "builder.pub")
    entries, head = read_verified((published / ENTRIES).read_bytes(), (published / HEAD).read_bytes(), pub, "v1")
    assert [e.recipe for e in entries] == ["libgreet", "greet"] and head.size == 2
    assert read_published(str(published), [pub], "v1") == []


def test_an_auditor_compares_with_a_log_published_before(tmp_path: Path) -> None:
    home = tmp_path / "home"
    shutil.copytree(FIXTURE / "home", home)
    peer = Peer("old", load_public(home / "keys" / "builder.pub"), str(FIXTURE / "published"))
    before = sorted(p.relative_to(home) for p in home.rglob("*"))
    report = compare(Settings(home=home), [peer], read_only=True)
    assert report["peers"]["old"] == {"status": "ok", "entries": 2, "error": None}
    assert report["exit"] == 0 and report["read_only"]
    assert sorted(p.relative_to(home) for p in home.rglob("*")) == before


def test_a_recheck_result_written_before_reads_and_counts_as_not_yet_attested(key: BuilderKey) -> None:
    settings = Settings(home=FIXTURE / "home")
    [old] = load_results(settings)
    assert old.recipe == "greet" and old.reproducible and old.outcome == "reproducible"
    assert old.attestations == {} and old.variation_version == 0 and not old.current(vary=True)
    assert own_equivalences(settings, [key.public]) == []
    [v] = judge_reproducible([Built("greet", "greet.tar", "2" * 64, "b" * 64)], {"self": []})
    assert v.agreed == ()
