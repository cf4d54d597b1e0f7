"""DSSE envelopes: the exact PAE bytes, signing, and verification by independent implementations."""

from __future__ import annotations

import base64
import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import SSlibKey  # type: ignore[attr-defined]  # public API, re-exported

from farm.errors import E, FarmError
from farm.trust.keys import BuilderKey, generate
from farm.trust.provenance import (
    BUILD_TYPE,
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    pae,
    sign,
    statement,
    verify_envelope,
)
from tests.conftest import require

pytestmark = pytest.mark.unit

COMMIT = "a" * 40
TREE = "b" * 40


@pytest.fixture
def key(tmp_path: Path) -> BuilderKey:
    return generate(tmp_path / "keys")


@pytest.fixture
def other_key(tmp_path: Path) -> BuilderKey:
    return generate(tmp_path / "other-keys")


@pytest.fixture
def stmt() -> dict[str, Any]:
    return statement(
        subjects=[("hello", "1" * 64), ("libhello.tar", "2" * 64)],
        recipe={"name": "hello", "version": "1.0"},
        recipe_digest="3" * 64,
        source_url="https://example.com/hello.git",
        commit=COMMIT,
        tree=TREE,
        environment="4" * 64,
        dependencies=[{"name": "zlib", "digest": {"sha256": "5" * 64}}],
        builder_id="mangos-farm@test",
        build_key="6" * 64,
        started="2026-02-03T04:05:06Z",
        finished="2026-02-03T04:05:07Z",
    )


@pytest.fixture
def envelope(stmt: dict[str, Any], key: BuilderKey) -> dict[str, Any]:
    return sign(stmt, key)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def signed_envelope(payload: bytes, key: BuilderKey, keyid: Any = None) -> dict[str, Any]:
    """An envelope over arbitrary payload bytes, signed correctly (to test what verification does next)."""
    sig = key.sign(pae(PAYLOAD_TYPE, payload))
    return {
        "payloadType": PAYLOAD_TYPE,
        "payload": b64(payload),
        "signatures": [{"keyid": key.public.keyid if keyid is None else keyid, "sig": b64(sig)}],
    }


def verify_error(envelope: Any, trusted: list[Any]) -> FarmError:
    with pytest.raises(FarmError) as info:
        verify_envelope(envelope, trusted)
    assert info.value.hint, "every verification failure says what to do"
    return info.value


# -- PAE -------------------------------------------------------------------------------------------------------
def test_pae_matches_the_dsse_spec_example() -> None:
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_pae_of_empty_values() -> None:
    assert pae("", b"") == b"DSSEv1 0  0 "


def test_pae_lengths_are_byte_lengths() -> None:
    # "é" is two bytes in UTF-8; the payload holds a space and a NUL, which PAE must not treat specially
    assert pae("é", b"a b\x00") == b"DSSEv1 2 \xc3\xa9 4 a b\x00"


def test_pae_of_the_in_toto_type() -> None:
    payload = b'{"_type":"x"}'
    assert pae(PAYLOAD_TYPE, payload) == b"DSSEv1 28 application/vnd.in-toto+json 13 " + payload


def sslib_envelope(envelope: dict[str, Any]) -> Envelope:
    """securesystemslib's Envelope.from_dict consumes the dict it is given, so hand it a copy."""
    return Envelope.from_dict(copy.deepcopy(envelope))


def test_pae_agrees_with_securesystemslib(envelope: dict[str, Any]) -> None:
    assert sslib_envelope(envelope).pae() == pae(PAYLOAD_TYPE, base64.b64decode(envelope["payload"]))


# -- statement and envelope shape ------------------------------------------------------------------------------
def test_statement_shape(stmt: dict[str, Any]) -> None:
    assert stmt["_type"] == STATEMENT_TYPE
    assert stmt["predicateType"] == PREDICATE_TYPE
    assert stmt["subject"] == [
        {"name": "hello", "digest": {"sha256": "1" * 64}},
        {"name": "libhello.tar", "digest": {"sha256": "2" * 64}},
    ]
    definition = stmt["predicate"]["buildDefinition"]
    assert definition["buildType"] == BUILD_TYPE
    assert definition["externalParameters"]["source"] == {"git": "https://example.com/hello.git", "commit": COMMIT}
    resolved = definition["resolvedDependencies"]
    assert resolved[0] == {
        "uri": f"git+https://example.com/hello.git@{COMMIT}",
        "digest": {"gitCommit": COMMIT, "gitTree": TREE},
    }
    assert resolved[1] == {"name": "build-environment", "digest": {"sha256": "4" * 64}}
    assert resolved[2] == {"name": "zlib", "digest": {"sha256": "5" * 64}}
    assert stmt["predicate"]["runDetails"]["builder"] == {"id": "mangos-farm@test"}


def test_envelope_shape(envelope: dict[str, Any], stmt: dict[str, Any], key: BuilderKey) -> None:
    assert set(envelope) == {"payloadType", "payload", "signatures"}
    assert envelope["payloadType"] == PAYLOAD_TYPE
    assert json.loads(base64.b64decode(envelope["payload"], validate=True)) == stmt
    [signature] = envelope["signatures"]
    assert signature["keyid"] == key.public.keyid
    assert len(base64.b64decode(signature["sig"], validate=True)) == 64  # an Ed25519 signature
    json.dumps(envelope)  # plain JSON data


def test_signing_is_deterministic(stmt: dict[str, Any], key: BuilderKey) -> None:
    assert sign(stmt, key) == sign(stmt, key)  # Ed25519 signatures are deterministic


# -- round trip ------------------------------------------------------------------------------------------------
def test_sign_verify_round_trip(envelope: dict[str, Any], stmt: dict[str, Any], key: BuilderKey) -> None:
    verified = verify_envelope(envelope, [key.public])
    assert verified.statement == stmt
    assert verified.keyid == key.public.keyid
    assert verified.key_source == "builder key"
    assert verified.subjects() == {"hello": "1" * 64, "libhello.tar": "2" * 64}


def test_round_trip_through_json_text(envelope: dict[str, Any], key: BuilderKey) -> None:
    again = json.loads(json.dumps(envelope, indent=2))
    assert verify_envelope(again, [key.public]).keyid == key.public.keyid


def test_verifies_with_the_right_key_among_several(
    envelope: dict[str, Any], key: BuilderKey, other_key: BuilderKey
) -> None:
    assert verify_envelope(envelope, [other_key.public, key.public]).keyid == key.public.keyid


@pytest.mark.parametrize("keyid", ["", "unknown-key-id"])
def test_a_missing_or_foreign_keyid_still_verifies_against_trusted_keys(
    stmt: dict[str, Any], key: BuilderKey, other_key: BuilderKey, keyid: str
) -> None:
    payload = json.dumps(stmt).encode()
    env = signed_envelope(payload, key, keyid=keyid)
    assert verify_envelope(env, [other_key.public, key.public]).keyid == key.public.keyid


def test_keyid_may_be_absent(stmt: dict[str, Any], key: BuilderKey) -> None:
    env = signed_envelope(json.dumps(stmt).encode(), key)
    del env["signatures"][0]["keyid"]
    assert verify_envelope(env, [key.public]).statement == stmt


# -- independent verifiers -------------------------------------------------------------------------------------
def test_securesystemslib_verifies_our_envelope(envelope: dict[str, Any], key: BuilderKey) -> None:
    crypto_key = load_pem_public_key(key.public.pem())
    # securesystemslib's default keyid is a hash of its own key JSON, not of the DER SPKI as ours is ...
    default = SSlibKey.from_crypto(crypto_key, scheme="ed25519")
    assert default.keyid != key.public.keyid
    with pytest.raises(VerificationError):
        sslib_envelope(envelope).verify([default], 1)  # ... and it only tries keys whose keyid matches
    ours = SSlibKey.from_crypto(crypto_key, keyid=key.public.keyid, scheme="ed25519")
    accepted = sslib_envelope(envelope).verify([ours], 1)
    assert list(accepted) == [key.public.keyid]


def test_securesystemslib_rejects_a_tampered_envelope(
    envelope: dict[str, Any], stmt: dict[str, Any], key: BuilderKey
) -> None:
    stmt["subject"][0]["digest"]["sha256"] = "f" * 64
    envelope["payload"] = b64(json.dumps(stmt, sort_keys=True, separators=(",", ":")).encode())
    ours = SSlibKey.from_crypto(load_pem_public_key(key.public.pem()), keyid=key.public.keyid, scheme="ed25519")
    with pytest.raises(VerificationError):
        sslib_envelope(envelope).verify([ours], 1)


def _openssl_verify(tmp_path: Path, message: bytes, sig: bytes, pem: bytes) -> subprocess.CompletedProcess[str]:
    openssl = require("openssl")
    (tmp_path / "pae.bin").write_bytes(message)
    (tmp_path / "sig.bin").write_bytes(sig)
    (tmp_path / "pub.pem").write_bytes(pem)
    argv = [openssl, "pkeyutl", "-verify", "-pubin", "-inkey", "pub.pem", "-rawin"]
    argv += ["-in", "pae.bin", "-sigfile", "sig.bin"]
    return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, check=False)


def test_openssl_verifies_our_signature(tmp_path: Path, envelope: dict[str, Any], key: BuilderKey) -> None:
    message = pae(envelope["payloadType"], base64.b64decode(envelope["payload"]))
    sig = base64.b64decode(envelope["signatures"][0]["sig"])
    result = _openssl_verify(tmp_path, message, sig, key.public.pem())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Signature Verified Successfully" in result.stdout


def test_openssl_rejects_the_signature_over_altered_bytes(
    tmp_path: Path, envelope: dict[str, Any], key: BuilderKey
) -> None:
    message = pae(envelope["payloadType"], base64.b64decode(envelope["payload"]) + b" ")
    sig = base64.b64decode(envelope["signatures"][0]["sig"])
    assert _openssl_verify(tmp_path, message, sig, key.public.pem()).returncode != 0


def test_openssl_rejects_the_signature_without_pae(tmp_path: Path, envelope: dict[str, Any], key: BuilderKey) -> None:
    """The signature covers the PAE, not the bare payload."""
    sig = base64.b64decode(envelope["signatures"][0]["sig"])
    payload = base64.b64decode(envelope["payload"])
    assert _openssl_verify(tmp_path, payload, sig, key.public.pem()).returncode != 0


# -- failures --------------------------------------------------------------------------------------------------
def test_tampered_payload(envelope: dict[str, Any], stmt: dict[str, Any], key: BuilderKey) -> None:
    stmt["subject"][0]["digest"]["sha256"] = "f" * 64
    envelope["payload"] = b64(json.dumps(stmt, sort_keys=True, separators=(",", ":")).encode())
    err = verify_error(envelope, [key.public])
    assert err.code == E.VERIFY_SIGNATURE
    assert "altered" in err.message


def test_tampered_signature(envelope: dict[str, Any], key: BuilderKey) -> None:
    sig = bytearray(base64.b64decode(envelope["signatures"][0]["sig"]))
    sig[0] ^= 1
    envelope["signatures"][0]["sig"] = b64(bytes(sig))
    assert verify_error(envelope, [key.public]).code == E.VERIFY_SIGNATURE


def test_payload_type_is_covered_by_the_signature(stmt: dict[str, Any], key: BuilderKey) -> None:
    """A signature made for another payloadType does not verify as an in-toto statement."""
    payload = json.dumps(stmt).encode()
    sig = key.sign(pae("application/json", payload))
    env = {
        "payloadType": PAYLOAD_TYPE,
        "payload": b64(payload),
        "signatures": [{"keyid": key.public.keyid, "sig": b64(sig)}],
    }
    assert verify_error(env, [key.public]).code == E.VERIFY_SIGNATURE


def test_unknown_key(envelope: dict[str, Any], other_key: BuilderKey) -> None:
    err = verify_error(envelope, [other_key.public])
    assert err.code == E.VERIFY_UNTRUSTED
    assert envelope["signatures"][0]["keyid"][:16] in err.message


def test_no_trusted_keys_at_all(envelope: dict[str, Any]) -> None:
    assert verify_error(envelope, []).code == E.VERIFY_UNTRUSTED


@pytest.mark.parametrize("payload_type", ["application/json", "", None, "application/vnd.in-toto+json "])
def test_wrong_payload_type(envelope: dict[str, Any], key: BuilderKey, payload_type: str | None) -> None:
    envelope["payloadType"] = payload_type
    err = verify_error(envelope, [key.public])
    assert err.code == E.VERIFY_ENVELOPE
    assert "payloadType" in err.message


def test_missing_payload_type(envelope: dict[str, Any], key: BuilderKey) -> None:
    del envelope["payloadType"]
    assert verify_error(envelope, [key.public]).code == E.VERIFY_ENVELOPE


@pytest.mark.parametrize("payload", ["not base64!", "YWJ", "YW Jj", "é", 42, None])
def test_malformed_payload_base64(envelope: dict[str, Any], key: BuilderKey, payload: Any) -> None:
    envelope["payload"] = payload
    err = verify_error(envelope, [key.public])
    assert err.code == E.VERIFY_ENVELOPE
    assert "malformed" in err.message


@pytest.mark.parametrize("sig", ["%%%", "YWJ", 7, None])
def test_malformed_signature_base64(envelope: dict[str, Any], key: BuilderKey, sig: Any) -> None:
    envelope["signatures"][0]["sig"] = sig
    assert verify_error(envelope, [key.public]).code == E.VERIFY_ENVELOPE


@pytest.mark.parametrize(
    "change",
    [
        {"payload": ...},
        {"signatures": ...},
        {"signatures": "sig"},
        {"signatures": [None]},
        {"signatures": [{"keyid": "x"}]},
        {"signatures": [["keyid", "sig"]]},
    ],
)
def test_malformed_envelope_structure(envelope: dict[str, Any], key: BuilderKey, change: dict[str, Any]) -> None:
    for field, value in change.items():
        if value is ...:
            del envelope[field]
        else:
            envelope[field] = value
    assert verify_error(envelope, [key.public]).code == E.VERIFY_ENVELOPE


@pytest.mark.parametrize("envelope_value", [[], "envelope", None, 3])
def test_an_envelope_that_is_not_an_object(key: BuilderKey, envelope_value: Any) -> None:
    assert verify_error(envelope_value, [key.public]).code == E.VERIFY_ENVELOPE


@pytest.mark.parametrize("keyid", [5, None, ["a"], {"k": 1}])
def test_a_keyid_that_is_not_a_string(envelope: dict[str, Any], key: BuilderKey, keyid: Any) -> None:
    envelope["signatures"][0]["keyid"] = keyid
    assert verify_error(envelope, [key.public]).code == E.VERIFY_ENVELOPE


def test_no_signatures(envelope: dict[str, Any], key: BuilderKey) -> None:
    envelope["signatures"] = []
    err = verify_error(envelope, [key.public])
    assert err.code == E.VERIFY_SIGNATURE
    assert "no signature" in err.message


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[]",
        b'"a string"',
        b"null",
        b"\xff\xfe\x00{",
        b'{"_type": "https://in-toto.io/Statement/v0.1", "subject": []}',
        b'{"_type": "https://in-toto.io/Statement/v1", "subject": {}}',
        b'{"_type": "https://in-toto.io/Statement/v1"}',
    ],
)
def test_signed_payload_that_is_not_a_statement(key: BuilderKey, payload: bytes) -> None:
    """Even a correctly signed payload is refused (as a FarmError, never a crash) if it is not a Statement."""
    err = verify_error(signed_envelope(payload, key), [key.public])
    assert err.code == E.VERIFY_ENVELOPE
