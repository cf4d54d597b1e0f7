"""The builder keyring: trust, revocation, and that every verifier honours a revocation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from farm.errors import E, FarmError
from farm.trust import keyring
from farm.trust.keys import BuilderKey, generate, trusted_keys
from farm.trust.provenance import sign, verify_envelope
from farm.trust.verify import verify_file

pytestmark = pytest.mark.unit


@pytest.fixture
def home(tmp_path: Path) -> Path:
    generate(tmp_path / "keys")
    return tmp_path


@pytest.fixture
def peer(tmp_path: Path) -> tuple[BuilderKey, Path]:
    key = generate(tmp_path / "peer")
    pem = tmp_path / "peer.pem"
    pem.write_bytes(key.public.pem())
    return key, pem


def keys(home: Path) -> list[str]:
    return [k.keyid for k in trusted_keys(home / "keys", home / "keys" / "trusted")]


def statement() -> dict[str, object]:
    return {"_type": "https://in-toto.io/Statement/v1", "subject": [{"name": "a", "digest": {"sha256": "0" * 64}}]}


def test_trust_adds_a_key_once(home: Path, peer: tuple[BuilderKey, Path]) -> None:
    key, pem = peer
    added = keyring.trust(home / "keys", home / "keys" / "trusted", pem)
    keyring.trust(home / "keys", home / "keys" / "trusted", pem)
    assert added.keyid == key.public.keyid
    assert keys(home).count(key.public.keyid) == 1 and len(keys(home)) == 2


def test_revocation_removes_a_key_from_every_trusted_set(home: Path, peer: tuple[BuilderKey, Path]) -> None:
    key, pem = peer
    keyring.trust(home / "keys", home / "keys" / "trusted", pem)
    rev = keyring.revoke(home / "keys", key.public.keyid, "stolen laptop", by="ops")
    assert key.public.keyid not in keys(home)
    assert (rev.reason, rev.by) == ("stolen laptop", "ops") and rev.time.endswith("Z")
    data = json.loads((home / "keys" / "revoked.json").read_text())
    assert data[key.public.keyid]["reason"] == "stolen laptop"
    # Also when passed explicitly (verify --key PEM).
    assert key.public.keyid not in [k.keyid for k in trusted_keys(home / "keys", home / "keys" / "t", [pem])]
    # Revoking again keeps the first revocation.
    assert keyring.revoke(home / "keys", key.public.keyid, "again").reason == "stolen laptop"
    rows = {r["keyid"]: r for r in keyring.listing(home / "keys", home / "keys" / "trusted")}
    assert rows[key.public.keyid]["revoked"]["reason"] == "stolen laptop"
    assert [r["own"] for r in rows.values()].count(True) == 1


def test_a_revoked_key_cannot_be_trusted_again(home: Path, peer: tuple[BuilderKey, Path]) -> None:
    key, pem = peer
    keyring.revoke(home / "keys", key.public.keyid, "compromised")
    with pytest.raises(FarmError) as info:
        keyring.trust(home / "keys", home / "keys" / "trusted", pem)
    assert info.value.code == E.KEY_REVOKED and "compromised" in info.value.message


def test_signatures_by_a_revoked_key_say_so(home: Path, peer: tuple[BuilderKey, Path]) -> None:
    key, pem = peer
    keyring.trust(home / "keys", home / "keys" / "trusted", pem)
    envelope = sign(statement(), key)
    trusted = trusted_keys(home / "keys", home / "keys" / "trusted")
    assert verify_envelope(envelope, trusted).keyid == key.public.keyid
    keyring.revoke(home / "keys", key.public.keyid, "rotated after an incident")
    with pytest.raises(FarmError) as info:
        verify_envelope(envelope, trusted_keys(home / "keys", home / "keys" / "trusted"))
    assert info.value.code == E.KEY_REVOKED and "rotated after an incident" in info.value.message
    # The organization's own key too, and a file-level verification with no key left at all.
    (home / "art").write_bytes(b"x")
    own = generate(home / "own")
    (home / "art.intoto.json").write_text(json.dumps(sign(statement() | {"subject": []}, own)))
    keyring.revoke(home / "own", own.public.keyid, "retired")
    with pytest.raises(FarmError) as info:
        verify_file(home / "art", trusted_keys(home / "own", home / "own" / "trusted"))
    assert info.value.code == E.KEY_REVOKED


@pytest.mark.parametrize(
    ("content", "why"),
    [(b"{not json", "cannot read"), (b'["a"]', "not {keyid"), (b'{"zz": {}}', "not {keyid")],
)
def test_a_damaged_revocation_list_trusts_nothing(home: Path, content: bytes, why: str) -> None:
    (home / "keys" / "revoked.json").write_bytes(content)
    with pytest.raises(FarmError) as info:
        keys(home)
    assert info.value.code == E.KEY_INVALID and why in info.value.message


@pytest.mark.parametrize(("keyid", "reason"), [("abc", "x"), ("A" * 64, "x"), ("a" * 64, "  ")])
def test_revoke_checks_its_arguments(home: Path, keyid: str, reason: str) -> None:
    with pytest.raises(FarmError) as info:
        keyring.revoke(home / "keys", keyid, reason)
    assert info.value.code == E.KEY_INVALID
    assert not (home / "keys" / "revoked.json").exists()
