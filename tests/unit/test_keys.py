"""Builder keys: Ed25519 PEM files, private key 0600, keyid = sha256 of the DER SubjectPublicKeyInfo."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from farm.errors import E, FarmError
from farm.trust.keys import (
    PRIVATE_NAME,
    PUBLIC_NAME,
    BuilderKey,
    PublicKey,
    generate,
    load_builder,
    load_public,
    trusted_keys,
)
from tests.conftest import require

pytestmark = pytest.mark.unit


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    return tmp_path / "keys"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def private_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def raises(code: str, func: object, *args: object) -> FarmError:
    assert callable(func)
    with pytest.raises(FarmError) as info:
        func(*args)
    assert info.value.code == code, info.value.render()
    assert info.value.hint
    return info.value


# -- generate --------------------------------------------------------------------------------------------------
def test_generate_writes_a_private_key_only_the_owner_can_read(keys_dir: Path) -> None:
    generate(keys_dir)
    private = keys_dir / PRIVATE_NAME
    assert mode(private) == 0o600
    assert mode(keys_dir) == 0o700
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert not (keys_dir / "builder.tmp").exists()


def test_generate_is_0600_whatever_the_umask(keys_dir: Path) -> None:
    old = os.umask(0)
    try:
        generate(keys_dir)
    finally:
        os.umask(old)
    assert mode(keys_dir / PRIVATE_NAME) == 0o600


def test_generate_is_0600_even_over_a_stale_temporary_file(keys_dir: Path) -> None:
    keys_dir.mkdir()
    stale = keys_dir / "builder.tmp"
    stale.write_bytes(b"left over by an interrupted run")
    stale.chmod(0o644)
    generate(keys_dir)
    assert mode(keys_dir / PRIVATE_NAME) == 0o600


def test_generate_writes_the_matching_public_key(keys_dir: Path) -> None:
    key = generate(keys_dir)
    pub = keys_dir / PUBLIC_NAME
    assert pub.read_bytes() == key.public.pem()
    assert pub.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert load_public(pub).keyid == key.public.keyid


def test_generate_then_load_gives_the_same_key(keys_dir: Path) -> None:
    key = generate(keys_dir)
    loaded = load_builder(keys_dir)
    assert loaded.public.der == key.public.der
    message = b"some bytes"
    assert key.public.verify(loaded.sign(message), message)


def test_generate_refuses_to_overwrite(keys_dir: Path) -> None:
    key = generate(keys_dir)
    before = (keys_dir / PRIVATE_NAME).read_bytes()
    err = raises(E.KEY_EXISTS, generate, keys_dir)
    assert str(keys_dir / PRIVATE_NAME) in err.message
    assert "--force" in err.hint
    assert (keys_dir / PRIVATE_NAME).read_bytes() == before
    assert load_builder(keys_dir).public.keyid == key.public.keyid


def test_generate_with_force_replaces_the_key(keys_dir: Path) -> None:
    first = generate(keys_dir)
    second = generate(keys_dir, force=True)
    assert second.public.keyid != first.public.keyid
    assert load_builder(keys_dir).public.keyid == second.public.keyid
    assert load_public(keys_dir / PUBLIC_NAME).keyid == second.public.keyid
    assert mode(keys_dir / PRIVATE_NAME) == 0o600


def test_generate_creates_parent_directories(tmp_path: Path) -> None:
    generate(tmp_path / "a" / "b" / "keys")
    assert (tmp_path / "a" / "b" / "keys" / PRIVATE_NAME).is_file()


# -- keyid -----------------------------------------------------------------------------------------------------
def test_keyid_is_sha256_of_der_spki(keys_dir: Path) -> None:
    key = generate(keys_dir)
    der = key.public.key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert key.public.der == der
    assert len(der) == 44  # the fixed Ed25519 SPKI: 12 bytes of header and the 32-byte key
    assert key.public.keyid == hashlib.sha256(der).hexdigest()


def test_keyid_matches_openssl(keys_dir: Path) -> None:
    openssl = require("openssl")
    key = generate(keys_dir)
    der = subprocess.run(
        [openssl, "pkey", "-pubin", "-in", str(keys_dir / PUBLIC_NAME), "-outform", "DER"],
        capture_output=True,
        check=True,
    ).stdout
    assert hashlib.sha256(der).hexdigest() == key.public.keyid
    # and openssl derives the same public key from the private key file
    der_from_private = subprocess.run(
        [openssl, "pkey", "-in", str(keys_dir / PRIVATE_NAME), "-pubout", "-outform", "DER"],
        capture_output=True,
        check=True,
    ).stdout
    assert der_from_private == der


def test_keyid_is_the_same_after_a_pem_round_trip(keys_dir: Path) -> None:
    key = generate(keys_dir)
    loaded = serialization.load_pem_public_key(key.public.pem())
    assert isinstance(loaded, Ed25519PublicKey)
    assert PublicKey.of(loaded).keyid == key.public.keyid


# -- signatures ------------------------------------------------------------------------------------------------
def test_verify_accepts_only_the_signed_bytes(keys_dir: Path, tmp_path: Path) -> None:
    key = generate(keys_dir)
    other = generate(tmp_path / "other")
    sig = key.sign(b"data")
    assert key.public.verify(sig, b"data")
    assert not key.public.verify(sig, b"datA")
    assert not key.public.verify(b"\0" * 64, b"data")
    assert not other.public.verify(sig, b"data")


# -- load_builder ----------------------------------------------------------------------------------------------
def test_load_builder_missing(keys_dir: Path) -> None:
    err = raises(E.KEY_MISSING, load_builder, keys_dir)
    assert str(keys_dir / PRIVATE_NAME) in err.message
    assert "keys generate" in err.hint


def test_load_builder_unreadable(keys_dir: Path) -> None:
    (keys_dir / PRIVATE_NAME).mkdir(parents=True)  # a directory where the key file should be
    err = raises(E.KEY_MISSING, load_builder, keys_dir)  # as load_public reports an unreadable file
    assert err.file == str(keys_dir / PRIVATE_NAME)
    assert "cannot read" in err.message


def test_load_builder_garbage(keys_dir: Path) -> None:
    keys_dir.mkdir()
    (keys_dir / PRIVATE_NAME).write_text("not a key\n")
    err = raises(E.KEY_INVALID, load_builder, keys_dir)
    assert err.file == str(keys_dir / PRIVATE_NAME)


def test_load_builder_rsa(keys_dir: Path) -> None:
    keys_dir.mkdir()
    (keys_dir / PRIVATE_NAME).write_bytes(private_pem(rsa_key()))
    err = raises(E.KEY_INVALID, load_builder, keys_dir)
    assert "Ed25519" in err.message


def test_load_builder_encrypted(keys_dir: Path) -> None:
    keys_dir.mkdir()
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    (keys_dir / PRIVATE_NAME).write_bytes(pem)
    raises(E.KEY_INVALID, load_builder, keys_dir)


def test_load_builder_accepts_a_key_written_by_others(keys_dir: Path) -> None:
    keys_dir.mkdir()
    key = Ed25519PrivateKey.generate()
    (keys_dir / PRIVATE_NAME).write_bytes(private_pem(key))
    assert isinstance(load_builder(keys_dir), BuilderKey)
    assert load_builder(keys_dir).public.pem() == public_pem(key)


# -- load_public -----------------------------------------------------------------------------------------------
def test_load_public_records_its_source(tmp_path: Path) -> None:
    path = tmp_path / "peer.pem"
    path.write_bytes(public_pem(Ed25519PrivateKey.generate()))
    assert load_public(path).source == str(path)


def test_load_public_missing(tmp_path: Path) -> None:
    err = raises(E.KEY_MISSING, load_public, tmp_path / "nope.pem")
    assert err.file == str(tmp_path / "nope.pem")


@pytest.mark.parametrize(
    "content",
    [
        b"hello\n",
        b"",
        b"-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n",
        bytes(range(256)),
    ],
)
def test_load_public_non_pem(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.pem"
    path.write_bytes(content)
    err = raises(E.KEY_INVALID, load_public, path)
    assert err.file == str(path)


def test_load_public_of_a_private_key(keys_dir: Path) -> None:
    generate(keys_dir)
    raises(E.KEY_INVALID, load_public, keys_dir / PRIVATE_NAME)


def test_load_public_rsa(tmp_path: Path) -> None:
    path = tmp_path / "rsa.pem"
    path.write_bytes(public_pem(rsa_key()))
    err = raises(E.KEY_INVALID, load_public, path)
    assert "Ed25519" in err.message
    assert err.file == str(path)


def test_load_public_ecdsa(tmp_path: Path) -> None:
    path = tmp_path / "ec.pem"
    path.write_bytes(public_pem(ec.generate_private_key(ec.SECP256R1())))
    raises(E.KEY_INVALID, load_public, path)


# -- trusted_keys ----------------------------------------------------------------------------------------------
def test_trusted_keys_collects_own_trusted_and_extra(keys_dir: Path, tmp_path: Path) -> None:
    own = generate(keys_dir)
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    peers = [Ed25519PrivateKey.generate() for _ in range(2)]
    (trusted / "b-peer.pem").write_bytes(public_pem(peers[1]))
    (trusted / "a-peer.pem").write_bytes(public_pem(peers[0]))
    (trusted / "notes.txt").write_text("ignored")
    extra_key = Ed25519PrivateKey.generate()
    extra = tmp_path / "extra.pem"
    extra.write_bytes(public_pem(extra_key))
    found = trusted_keys(keys_dir, trusted, [extra])
    assert [k.pem() for k in found] == [
        own.public.pem(),
        public_pem(peers[0]),
        public_pem(peers[1]),
        public_pem(extra_key),
    ]


def test_trusted_keys_with_nothing(tmp_path: Path) -> None:
    assert trusted_keys(tmp_path / "none", tmp_path / "none" / "trusted") == []


def test_trusted_keys_refuses_a_bad_pem(keys_dir: Path, tmp_path: Path) -> None:
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    (trusted / "bad.pem").write_text("nope")
    raises(E.KEY_INVALID, trusted_keys, keys_dir, trusted)
